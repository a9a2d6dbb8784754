"""Starting a training infeed on a thread of its own, beside the other
hooks' session start-up.

An infeed's start is session runs: the iterator's initialization, the
restore of a saved position (or reading and dropping the steps already
trained on), and the first loop's request. Run from the infeed's hook,
they held up the hooks after it, the session's first checkpoint among
them, though neither needs the other until that checkpoint saves the
input's position. `BackgroundStart` starts the infeed on a thread of its
own; every other use of it waits for that start first and raises what the
start raised, and `after_start` makes a checkpoint listener (the input
position's) wait for it too, at the saves that need it (not a resumed
start's first save of the position it restores).
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf

from tpu_harness._infeed.protocol import Infeed


class BackgroundStart:
  """An `Infeed` whose `start` runs on a thread of its own (a
  `protocol.Infeed` itself)."""

  def __init__(self, infeed: Infeed, first_request: int = 0):
    """Args:
      infeed: the infeed started.
      first_request: steps requested right after each start, on the same
        thread (0: none).
    """
    self._infeed = infeed
    self._first_request = first_request
    self._thread: Optional[threading.Thread] = None
    self._error: Optional[BaseException] = None

  @property
  def element_spec(self) -> Any:
    return self._infeed.element_spec

  @property
  def streams(self) -> bool:
    self.started()
    return self._infeed.streams

  def dequeue(self) -> Any:
    return self._infeed.dequeue()

  def start(self, session) -> None:
    """Starts the infeed (then requests `first_request` steps) on a new
    thread; returns at once."""
    self._join()
    self._error = None

    def run():
      try:
        self._infeed.start(session)
        if self._first_request:
          self._infeed.request(self._first_request)
      except BaseException as error:  # pylint: disable=broad-except
        self._error = error

    self._thread = threading.Thread(target=run, daemon=True,
                                    name="infeed_start")
    self._thread.start()

  def started(self) -> None:
    """Waits for the start to finish.

    Raises:
      Exception: what the start raised (once).
    """
    self._join()
    if self._error is not None:
      error, self._error = self._error, None
      raise error

  def request(self, steps: int) -> None:
    self.started()
    self._infeed.request(steps)

  def wait(self) -> int:
    self.started()
    return self._infeed.wait()

  def raise_if_failed(self) -> None:
    self.started()
    self._infeed.raise_if_failed()

  def stop(self) -> None:
    """Stops the infeed once its start is over. What the start raised and
    nothing waited for is logged, not raised: stopping comes after the
    error that ended the session."""
    self._join()
    if self._error is not None:
      logging.warning("The infeed's start had failed: %s", self._error)
      self._error = None
    self._infeed.stop()

  def _join(self) -> None:
    if self._thread is not None:
      self._thread.join()
      self._thread = None


class _AfterStart(tf.compat.v1.train.CheckpointSaverListener):
  """A listener whose `before_save` waits for an infeed's start first
  (where `needs_start` says so)."""

  def __init__(self, listener: tf.compat.v1.train.CheckpointSaverListener,
               infeed: BackgroundStart,
               needs_start: Callable[[int], bool]):
    self._listener = listener
    self._infeed = infeed
    self._needs_start = needs_start

  def begin(self):
    self._listener.begin()

  def before_save(self, session, global_step_value):
    if self._needs_start(global_step_value):
      self._infeed.started()
    return self._listener.before_save(session, global_step_value)

  def after_save(self, session, global_step_value):
    return self._listener.after_save(session, global_step_value)

  def end(self, session, global_step_value):
    return self._listener.end(session, global_step_value)


def after_start(listener: tf.compat.v1.train.CheckpointSaverListener,
                infeed: BackgroundStart,
                needs_start: Optional[Callable[[int], bool]] = None
                ) -> tf.compat.v1.train.CheckpointSaverListener:
  """`listener`, its `before_save` called once `infeed`'s start is over
  (what the start raised is raised there), at every save or at those of
  the global steps where `needs_start(step)` is true."""
  return _AfterStart(listener, infeed,
                     needs_start or (lambda global_step_value: True))

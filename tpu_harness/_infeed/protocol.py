"""What the loops and the runner see of an infeed, and its session hook.

`Infeed` is the protocol: one host's infeed (`host.HostInfeed`) and a
pod's hosts' driven as one (`pod.PodInfeed`) both follow it. The device
loop calls `dequeue()` once per step; the runner `request`s each loop's
steps and `wait`s for them (see `tpu_harness._run.host_loop`);
`InfeedHook` starts the infeed with each session and stops it at the
session's end.
"""

from __future__ import annotations

from typing import Any, Protocol

import tensorflow as tf


class Infeed(Protocol):
  """What the loops and the runner use of an infeed (one host's, or a
  pod's)."""

  @property
  def element_spec(self) -> Any:
    """The structure of one step's element."""

  @property
  def streams(self) -> bool:
    """Whether requests are answered at once (see
    `tpu_harness._infeed.requests`)."""

  def dequeue(self) -> Any:
    """Device side: the next step's element."""

  def start(self, session) -> None:
    """With each session: initializes the input and starts the host side."""

  def request(self, steps: int) -> None:
    """Asks for up to `steps` more steps of input."""

  def wait(self) -> int:
    """The steps the oldest request got (0: the input ended)."""

  def stop(self) -> None:
    """Stops the host side."""

  def raise_if_failed(self) -> None:
    """Raises what made a streamed input fail, if anything."""


class InfeedHook(tf.compat.v1.train.SessionRunHook):
  """Starts an infeed with each session and stops it at the end."""

  def __init__(self, infeed: Infeed):
    """Args:
      infeed: the infeed (a training session's starts on a thread of its
        own: `background_start.BackgroundStart`).
    """
    self._infeed = infeed

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._infeed.start(session)

  def end(self, session) -> None:
    del session  # Unused.
    self._infeed.stop()

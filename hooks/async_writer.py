"""Writing a checkpoint on a background thread from a snapshot of its values.

`AsyncCheckpointWriter` is built (in the hook's `begin`, while the graph can
still change) for the variables a default Saver saves. A save then costs the
training loop one `session.run` that copies the variables' values to host
memory (the snapshot); a background thread writes them with TF's own V2
checkpoint writer (`SaveV2`, in a private graph and session, so the files are
exactly what a Saver writes and restores), then the `.meta` file, then points
the `checkpoint` state file at the new checkpoint, and only then deletes
checkpoints beyond `max_to_keep`. A kill at any moment therefore leaves the
state file naming a complete checkpoint.

One write at a time: `start` joins a write still in flight; its outcome
stays for `wait()`/`collect()`. The writing thread is not a daemon: the
interpreter waits for it before the process exits.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from hooks import paths
from hooks import retention


class CommitRefused(Exception):
  """The `before_commit` guard raised `cause`: the write's files were
  written, but it was not committed (no `.meta`, rotation or state file)."""

  def __init__(self, cause: BaseException):
    super().__init__(f"The checkpoint write was not committed: {cause}")
    self.cause = cause


class AsyncCheckpointWriter:
  """Background checkpoint writes of the given variables."""

  def __init__(self, variables: Sequence[tf.Variable], save_path: str):
    """Builds the snapshot op in the default graph and a private write graph.

    Args:
      variables: what to save, keyed in the checkpoint by `variable.op.name`
        as a default Saver keys them.
      save_path: checkpoint prefix without the step, e.g. dir/model.ckpt.
    """
    self._names = [v.op.name for v in variables]
    self._floating = [v.dtype.base_dtype.is_floating for v in variables]
    self._snapshot = [v.read_value() if hasattr(v, "read_value") else
                      tf.identity(v) for v in variables]
    self._save_path = save_path
    self._dir = os.path.dirname(save_path)
    self._max_to_keep: Optional[int] = None
    self._recent: List[str] = []
    self._relative = False
    self._meta_graph: Optional[Callable[[], bytes]] = None
    self._before_commit: Callable[[], None] = lambda: None
    self._graph = tf.Graph()
    with self._graph.as_default():
      self._prefix = tf.compat.v1.placeholder(tf.string, [])
      self._inputs = [tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape)
                      for v in variables]
      self._write = tf.raw_ops.SaveV2(
          prefix=self._prefix, tensor_names=self._names,
          shape_and_slices=[""] * len(self._names), tensors=self._inputs)
    self._session: Optional[tf.compat.v1.Session] = None
    self._thread: Optional[threading.Thread] = None
    self._error: Optional[BaseException] = None
    self._step: Optional[int] = None
    self._done_step: Optional[int] = None

  def configure(self, *, max_to_keep: Optional[int], recent: Sequence[str],
                save_relative_paths: bool,
                meta_graph: Optional[Callable[[], bytes]] = None,
                before_commit: Optional[Callable[[], None]] = None) -> None:
    """What the Saver in use would do: rotation and the state file.

    Args:
      max_to_keep: checkpoints to keep; None or 0 keeps all.
      recent: existing checkpoint prefixes, oldest first, for rotation.
      save_relative_paths: write relative paths into the state file.
      meta_graph: returns the serialized MetaGraphDef to write as `.meta`
        (called on the background thread, per checkpoint), or None.
      before_commit: called on the background thread once the checkpoint's
        files are written, before `.meta`, rotation and the state file; if
        it raises, the write is not committed and `wait`/`collect` raise
        `CommitRefused` with its error.
    """
    self._max_to_keep = max_to_keep or None
    self._recent = list(recent)
    self._relative = save_relative_paths
    self._meta_graph = meta_graph
    self._before_commit = before_commit or (lambda: None)

  @property
  def step_in_flight(self) -> Optional[int]:
    """The step of the write started last (done or not)."""
    return self._step

  @property
  def in_flight(self) -> bool:
    return self._thread is not None and self._thread.is_alive()

  def snapshot(self, session) -> List[np.ndarray]:
    """The training stall: copies the variables' values to host memory."""
    return session.run(self._snapshot)

  def non_finite(self, values: List[np.ndarray]) -> List[str]:
    """Names of the floating-point variables whose snapshot holds NaN/Inf."""
    return [name for name, value, floating in
            zip(self._names, values, self._floating)
            if floating and not np.all(np.isfinite(value))]

  def start(self, step: int, values: List[np.ndarray]) -> None:
    """Writes `values` as the checkpoint of `step` in the background.

    Call `wait()` first to handle the previous write's outcome; a write still
    in flight is joined here so that writes never overlap.
    """
    if self.in_flight:
      self._thread.join()
    if self._session is None:
      self._session = tf.compat.v1.Session(graph=self._graph)
    self._step = step
    # Not a daemon: a process that ends (even with an error) finishes the
    # write first, so a started checkpoint is never left half-written.
    self._thread = threading.Thread(target=self._run, args=(step, values),
                                    daemon=False, name=f"ckpt-write-{step}")
    self._thread.start()

  def wait(self) -> Optional[int]:
    """Waits for the write in flight; returns the step it completed (once).

    Raises:
      Exception: what the background write raised.
    """
    if self._thread is not None:
      if self._thread.is_alive():
        started = time.monotonic()
        self._thread.join()
        logging.info("Waited %.2f s for the checkpoint write of step %d.",
                     time.monotonic() - started, self._step)
      self._thread = None
    return self.collect()

  def collect(self) -> Optional[int]:
    """The step whose write has completed since the last call, or None.

    Raises:
      Exception: what the background write raised (once).
    """
    if self._thread is not None and self._thread.is_alive():
      return None
    self._thread = None
    if self._error is not None:
      error, self._error = self._error, None
      raise error
    step, self._done_step = self._done_step, None
    return step

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._session is not None:
        self._session.close()
        self._session = None

  def _run(self, step: int, values: List[np.ndarray]) -> None:
    prefix = f"{self._save_path}-{step}"
    try:
      feed = dict(zip(self._inputs, values))
      feed[self._prefix] = prefix
      self._session.run(self._write, feed)
      try:
        self._before_commit()
      except BaseException as error:  # pylint: disable=broad-except
        self._error = CommitRefused(error)
        return
      if self._meta_graph is not None:
        with tf.io.gfile.GFile(prefix + ".meta", "wb") as f:
          f.write(self._meta_graph())
      recent = [p for p in self._recent if p != prefix] + [prefix]
      self._recent, expired = retention.RetainLatest(
          self._max_to_keep or 0).split(recent)
      # Only now, with every file of it complete, is it the latest.
      retention.apply(self._dir, self._recent, expired, self._path_for_state)
      self._done_step = step
    except BaseException as error:  # pylint: disable=broad-except
      self._error = error

  def _path_for_state(self, prefix: str) -> str:
    return (paths.state_file_entry(self._dir, prefix) if self._relative
            else prefix)

"""TPUEstimator's `host_call`, in a device loop: host ops run once per step.

    host_call = (fn, tensors)      # tensors: a list/tuple, or a dict

Each step, every replica's `tensors` (rank >= 1, batch-major) go through the
outfeed; on the host they are concatenated along axis 0 across replicas and
`fn(*tensors)` (or `fn(**tensors)`) is run with them. As in TPUEstimator,
`fn` is called once, when the graph is built, with tensors standing for one
step's values, and returns the ops to run each step (typically
`tf.compat.v1.summary.all_v2_summary_ops()` after writing
`tf.compat.v2.summary.scalar`s under its own `create_file_writer`); the
emulation then runs those ops once per step of each loop, feeding that
step's values. Summary writers `fn` creates are initialized when the session
is created and flushed when it ends.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from tpu_harness import _tf_internals

PREFIX = "host_call/"


def _flatten_tensors(name: str, tensors: Any) -> List[tf.Tensor]:
  values = (list(tensors.values()) if isinstance(tensors, Mapping)
            else list(tensors))
  for index, value in enumerate(values):
    if not isinstance(value, tf.Tensor):
      raise TypeError(f"`{name}` tensors must be tf.Tensors; item {index} is "
                      f"{value!r}.")
    if value.shape.rank == 0:
      raise ValueError(
          f"`{name}` tensors are concatenated across replicas along their "
          f"first (batch) axis, so they must have rank >= 1; item {index} "
          f"({value.name}) is a scalar. Pass tf.reshape(t, [1]).")
  return values


class HostCall(tf.compat.v1.train.SessionRunHook):
  """One `host_call` of a loop: what goes through the outfeed, and the host
  ops that consume it. As a session hook, it initializes the call's summary
  writers with the session, keeps the session for `run`, and flushes the
  writers at the end."""

  def __init__(self, fn, tensors: Any, *, every_n_steps: int = 1,
               name: str = "host_call"):
    """Records the call's structure from one replica's `tensors`.

    Args:
      fn: the host function.
      tensors: a list/tuple or dict of tensors with a batch axis.
      every_n_steps: run the host ops on every n-th step of a loop only.
      name: the spec field, for messages.
    """
    self._fn = fn
    self._name = name
    self._keys: Optional[List[str]] = (list(tensors) if isinstance(
        tensors, Mapping) else None)
    self._count = len(_flatten_tensors(name, tensors))
    self._every = every_n_steps
    self._placeholders: List[tf.Tensor] = []
    self._ops: Any = None
    self._init_ops: List[tf.Operation] = []
    self._flush_ops: List[tf.Operation] = []
    self._session = None

  @property
  def names(self) -> List[str]:
    """Outfeed names of the call's tensors, in order."""
    return [f"{PREFIX}{i}" for i in range(self._count)]

  def outfeed(self, per_replica: Sequence[Any]) -> Dict[str, tf.Tensor]:
    """{outfeed name: the replicas' tensors concatenated on axis 0}.

    Args:
      per_replica: each replica's `tensors` (the same structure).
    """
    flat = [_flatten_tensors(self._name, tensors) for tensors in per_replica]
    if any(len(f) != self._count for f in flat):
      raise ValueError(f"`{self._name}` must pass the same tensors from "
                       f"every replica.")
    return {name: (tf.concat([f[i] for f in flat], axis=0)
                   if len(flat) > 1 else flat[0][i])
            for i, name in enumerate(self.names)}

  def build(self, stacked: Mapping[str, tf.Tensor]) -> None:
    """Calls `fn` on the host with one step's values; records its ops.

    Args:
      stacked: the loop's outfeed, {name: [steps, ...]}; one step's shape
        and dtype are taken from it.
    """
    self._placeholders = [
        tf.compat.v1.placeholder(stacked[n].dtype, stacked[n].shape[1:],
                                 name=f"{self._name}_{i}")
        for i, n in enumerate(self.names)]
    args = self._placeholders
    existing = set(_tf_internals.summary_writer_init_ops())
    # No name scope: tf2 summary tags would carry it.
    try:
      if self._keys is not None:
        result = self._fn(**dict(zip(self._keys, args)))
      else:
        result = self._fn(*args)
    except StopIteration as error:
      # Left alone, a session would take it for the end of the input and
      # finish as if the run had succeeded.
      raise RuntimeError(f"The `{self._name}` function raised StopIteration "
                         f"while building its ops.") from error
    self._ops = [op for op in tf.nest.flatten(result) if op is not None]
    for op in self._ops:
      if not isinstance(op, (tf.Operation, tf.Tensor, tf.Variable)):
        raise TypeError(
            f"The `{self._name}` function must return TF ops or tensors to "
            f"run once per step (or None), e.g. tf.compat.v1.summary."
            f"all_v2_summary_ops(); it returned {result!r}, holding "
            f"{op!r} ({type(op).__name__}).")
    self._init_ops = [op for op in _tf_internals.summary_writer_init_ops()
                      if op not in existing]
    self._flush_ops = _tf_internals.summary_writer_flush_ops(self._init_ops)

  def run(self, values: Mapping[str, np.ndarray], count: int) -> None:
    """Runs the host ops once for each of a loop's `count` steps (every
    n-th with `every_n_steps`, counted within the loop), feeding that step's
    values.

    Args:
      values: the loop's outfeed, {name: [steps, ...]} as numpy arrays,
        or per step (`device_loop.trimmed`).
      count: the steps the loop ran.
    """
    if not self._ops:
      return
    for step in range(0, count, self._every):
      feed = {ph: values[name][step]
              for ph, name in zip(self._placeholders, self.names)}
      self._session.run(self._ops, feed)

  # Session hook.

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._session = session
    if self._init_ops:
      session.run(self._init_ops)

  def end(self, session) -> None:
    if self._flush_ops:
      session.run(self._flush_ops)

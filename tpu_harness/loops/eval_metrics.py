"""TPUEstimator's `eval_metrics` in a device loop: tensors out, metrics on
the host.

    eval_metrics = (metric_fn, tensors)    # tensors: a list/tuple, or a dict

Each step, every replica's `tensors` go through the outfeed (a scalar
becomes [1]) and are concatenated across replicas along the first axis. On
the host `metric_fn(*tensors)` (or `metric_fn(**tensors)`) is called once,
when the graph is built, with tensors standing for one step's values, with
their static shapes ([global batch, ...]), and its metrics are updated
once per step with that step's values, as TPUEstimator's were: metrics
that depend on the batch (a reshape by the batch size, a per-batch
maximum) have the values TPUEstimator gave. The mean loss is a metric of
its own, named `loss` (the mean of the steps' losses).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tpu_harness.loops.device_loop import LOSS

PREFIX = "metric/"


class EvalMetrics:
  """One `eval_metrics` pair: its outfeed names and its host-side metrics."""

  def __init__(self, metric_fn, tensors: Any):
    """Records the pair's structure from one replica's `tensors`."""
    self._fn = metric_fn
    self._keyed = isinstance(tensors, Mapping)
    self._keys: List[Any] = (sorted(tensors) if self._keyed
                             else list(range(len(tensors))))
    self._names = [f"{PREFIX}{key if self._keyed else f'arg{key}'}"
                   for key in self._keys]

  @property
  def names(self) -> List[str]:
    """The outfeed names of the pair's tensors."""
    return list(self._names)

  def outfeed(self, per_replica: Sequence[Any]) -> Dict[str, tf.Tensor]:
    """{outfeed name: the replicas' tensors concatenated on axis 0}; a
    scalar counts as [1].

    Args:
      per_replica: each replica's `tensors` (the same structure).
    """
    return {name: tf.concat(
        [tf.reshape(t[key], [1]) if t[key].shape.rank == 0 else t[key]
         for t in per_replica], axis=0)
            for name, key in zip(self._names, self._keys)}

  def build(self, merged: Mapping[str, tf.Tensor]
            ) -> Tuple[Dict[str, tf.Tensor], List[tf.Operation]]:
    """Calls `metric_fn` on the host; returns ({name: value}, updates).

    Args:
      merged: {outfeed name: one step's values, replicas concatenated}.
    """
    args = [merged[name] for name in self._names]
    result = (self._fn(**dict(zip(self._keys, args))) if self._keyed
              else self._fn(*args))
    if not isinstance(result, Mapping):
      raise TypeError(f"`eval_metrics` metric_fn must return {{name: (value, "
                      f"update_op)}}, e.g. {{'accuracy': tf.compat.v1."
                      f"metrics.accuracy(labels, predictions)}}; it "
                      f"returned {result!r}.")
    values, updates = {}, []
    for name, pair in result.items():
      if not (isinstance(pair, tuple) and len(pair) == 2):
        raise ValueError(f"`eval_metrics` metric_fn must return {{name: "
                         f"(value, update_op)}}; {name!r} is {pair!r}.")
      if name == LOSS:
        raise ValueError("`eval_metrics` may not define 'loss'; the runner "
                         "computes the mean loss itself.")
      values[name] = pair[0]
      updates.append(pair[1])
    return values, updates


class HostMetrics(tf.compat.v1.train.SessionRunHook):
  """The mean loss and `eval_metrics`' metrics on the host, updated once
  per step with that step's outfeed (a session hook: the updates run on
  the session itself, not through the other hooks).

  Attributes:
    values: {name: value tensor} of the streaming metrics.
  """

  def __init__(self, stacked: Mapping[str, tf.Tensor],
               eval_metrics: Optional[EvalMetrics],
               step_metrics: Optional[Mapping[str, tf.Tensor]] = None):
    """Builds the metrics on one step's values (placeholders).

    Args:
      stacked: the loop's outfeed, {name: [steps, ...]}, with the per-step
        loss under LOSS; one step's shape and dtype are taken from it.
      eval_metrics: the spec's, or None.
      step_metrics: {name: value} of metrics the steps update themselves
        (a base Estimator's `eval_metric_ops`), read with the others.
    """
    self._names = [LOSS] + (list(eval_metrics.names)
                            if eval_metrics is not None else [])
    self._placeholders = {
        name: tf.compat.v1.placeholder(
            stacked[name].dtype, stacked[name].shape[1:],
            name=f"eval_step_{index}")
        for index, name in enumerate(self._names)}
    loss_value, loss_update = tf.compat.v1.metrics.mean(
        self._placeholders[LOSS])
    self.values: Dict[str, tf.Tensor] = {LOSS: loss_value}
    updates = [loss_update]
    if eval_metrics is not None:
      values, more = eval_metrics.build(self._placeholders)
      self.values.update(values)
      updates += more
    for name, value in (step_metrics or {}).items():
      if name in self.values:
        raise ValueError(f"Metric {name!r} is defined twice (in "
                         f"eval_metric_ops and eval_metrics, or as the "
                         f"Estimator's own 'loss').")
      self.values[name] = value
    self._update = tf.group(updates)
    self._session = None

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._session = session

  def update(self, outfeed: Mapping[str, np.ndarray], count: int) -> None:
    """Updates the metrics with each of a loop's `count` steps.

    Args:
      outfeed: the loop's outfeed, {name: [steps, ...]} as numpy arrays,
        or per step (`device_loop.trimmed`: each step's value trimmed of
        its padding).
      count: the steps the loop ran.
    """
    for step in range(count):
      self._session.run(self._update, {placeholder: outfeed[name][step]
                                 for name, placeholder
                                 in self._placeholders.items()})

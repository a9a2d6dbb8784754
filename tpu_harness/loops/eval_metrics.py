"""TPUEstimator's `eval_metrics` in a device loop: tensors out, metrics on
the host.

    eval_metrics = (metric_fn, tensors)    # tensors: a list/tuple, or a dict

Each step, every replica's `tensors` go through the outfeed (a scalar
becomes [1]); on the host the steps and replicas are concatenated along the
first axis and `metric_fn(*tensors)` (or `metric_fn(**tensors)`) builds the
streaming metrics once, over those tensors, as TPUEstimator ran it on the
TPU host. The mean loss is a metric of its own, named `loss`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
      merged: {outfeed name: every step's values on one batch axis}.
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


def on_host(stacked: Mapping[str, tf.Tensor],
            eval_metrics: Optional[EvalMetrics]
            ) -> Tuple[Dict[str, tf.Tensor], tf.Operation]:
  """The mean loss and `eval_metrics`' metrics over a loop's outfeed.

  Args:
    stacked: the loop's outfeed, {name: [steps, ...]}, with the per-step
      loss under LOSS.
    eval_metrics: the spec's, or None.

  Returns:
    ({name: value tensor}, the op that updates them all with the loop).
  """
  merged = {name: tf.reshape(value, tf.concat(
      [[-1], tf.shape(value)[2:]], 0)) for name, value in stacked.items()}
  loss_value, loss_update = tf.compat.v1.metrics.mean(merged[LOSS])
  metrics, updates = {LOSS: loss_value}, [loss_update]
  if eval_metrics is not None:
    values, more = eval_metrics.build(merged)
    metrics.update(values)
    updates += more
  return metrics, tf.group(updates)

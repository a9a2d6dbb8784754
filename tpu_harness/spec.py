"""The model contract: what `model_fn` receives and returns.

    model_fn(features, labels, mode, params) -> ModelSpec
    input_fn(params) -> tf.data.Dataset

`params` is the runner's params plus `batch_size`, the per-replica batch size.
`model_fn` is called once per replica per step, inside the device loop, so it
must create variables with `tf.compat.v1.get_variable` (or
`tf.compat.v1.layers`), which the loop shares across replicas and steps, and
with `num_shards > 1` wrap its optimizer in `tpu_harness.CrossShardOptimizer`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import tensorflow as tf


class ModeKeys:
  """The three modes `model_fn` is called in."""
  TRAIN = "train"
  EVAL = "eval"
  PREDICT = "infer"


# (fn, tensors): fn(**tensors) or fn(*tensors) when tensors is a list.
TensorsCall = Tuple[Callable[..., Any],
                    Union[Mapping[str, tf.Tensor], Sequence[tf.Tensor]]]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What `model_fn` returns.

  Attributes:
    mode: the mode it was called in.
    loss: scalar loss (TRAIN and EVAL).
    train_op: the op of one training step; it must advance the global step
      by one (pass `global_step=` to `minimize`) (TRAIN).
    eval_metrics: `(metric_fn, tensors)`. The tensors of every step and
      replica are concatenated along their first axis and handed to
      `metric_fn`, which returns `{name: (value, update_op)}` built from
      `tf.compat.v1.metrics` (EVAL).
    predictions: `{name: tensor}`, each with the batch as first axis
      (PREDICT).
    host_call: `(host_fn, {name: tensor})`. After each loop, for every step,
      `host_fn(**values)` is called on the host with that step's values as
      numpy arrays (replicas concatenated along the first axis; scalars become
      shape [num_shards]) and returns `{tag: float}` scalars, written to
      TensorBoard at that step every `save_summary_steps` steps (TRAIN).
  """
  mode: str
  loss: Optional[tf.Tensor] = None
  train_op: Optional[Union[tf.Operation, tf.Tensor]] = None
  eval_metrics: Optional[TensorsCall] = None
  predictions: Optional[Mapping[str, tf.Tensor]] = None
  host_call: Optional[Tuple[Callable[..., Mapping[str, float]],
                            Mapping[str, tf.Tensor]]] = None


def check_spec(spec: Any, mode: str) -> ModelSpec:
  """Returns `spec` if it fits `mode`; raises a clear error otherwise."""
  if not isinstance(spec, ModelSpec):
    raise TypeError(f"`model_fn` must return a tpu_harness.ModelSpec, got "
                    f"{type(spec).__name__} ({spec!r}).")
  if spec.mode != mode:
    raise ValueError(f"`model_fn` returned a ModelSpec with mode "
                     f"{spec.mode!r} when called with mode {mode!r}.")
  if mode in (ModeKeys.TRAIN, ModeKeys.EVAL):
    if not isinstance(spec.loss, tf.Tensor) or spec.loss.shape.rank != 0:
      raise ValueError(f"`model_fn` must return a scalar `loss` tensor in "
                       f"mode {mode!r}; got {spec.loss!r}.")
  if mode == ModeKeys.TRAIN and not isinstance(spec.train_op,
                                               (tf.Operation, tf.Tensor)):
    raise ValueError(f"`model_fn` must return a `train_op` in mode "
                     f"{mode!r}; got {spec.train_op!r}.")
  if mode == ModeKeys.EVAL and spec.eval_metrics is not None:
    _check_call("eval_metrics", spec.eval_metrics)
  if mode == ModeKeys.TRAIN and spec.host_call is not None:
    _check_call("host_call", spec.host_call)
    if not isinstance(spec.host_call[1], Mapping):
      raise ValueError(f"`host_call` tensors must be a dict of name -> "
                       f"tensor; got {spec.host_call[1]!r}.")
    if "loss" in spec.host_call[1]:
      raise ValueError("`host_call` tensors may not be named 'loss'; the "
                       "runner records the loss itself.")
  if mode == ModeKeys.PREDICT:
    if (not isinstance(spec.predictions, Mapping) or not spec.predictions
        or not all(isinstance(t, tf.Tensor) and t.shape.rank
                   for t in spec.predictions.values())):
      raise ValueError(f"`model_fn` must return `predictions` as a non-empty "
                       f"dict of tensors with a batch axis in mode {mode!r}; "
                       f"got {spec.predictions!r}.")
  return spec


def _check_call(name: str, value: Any) -> None:
  if (not isinstance(value, tuple) or len(value) != 2
      or not callable(value[0])
      or not isinstance(value[1], (Mapping, list, tuple))):
    raise ValueError(f"`{name}` must be a (fn, tensors) pair with tensors a "
                     f"dict or list; got {value!r}.")

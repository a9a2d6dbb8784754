"""The model contract: what `model_fn` receives and returns.

    model_fn(features, labels, mode, params) -> ModelSpec
    input_fn(params) -> tf.data.Dataset

`ModelSpec` has TPUEstimatorSpec's fields, in its order, with its meaning
(`tpu_harness.estimator.tpu.TPUEstimatorSpec` is this class, with
TPUEstimatorSpec's `as_estimator_spec()`).
`params` is the runner's params plus `batch_size`, the per-replica batch size.
`model_fn` is called once per replica per step, inside the device loop, so it
must create variables with `tf.compat.v1.get_variable` (or
`tf.compat.v1.layers`), which the loop shares across replicas and steps, and
with `num_shards > 1` wrap its optimizer in `tpu_harness.CrossShardOptimizer`
(or `tf.compat.v1.tpu.CrossShardOptimizer`, which the emulation maps to it).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import tensorflow as tf


class ModeKeys:
  """The three modes `model_fn` is called in (TF's strings)."""
  TRAIN = "train"
  EVAL = "eval"
  PREDICT = "infer"


# (fn, tensors): fn(**tensors), or fn(*tensors) when tensors is a list.
TensorsCall = Tuple[Callable[..., Any],
                    Union[Mapping[str, tf.Tensor], Sequence[tf.Tensor]]]

Hooks = Tuple[tf.compat.v1.train.SessionRunHook, ...]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What `model_fn` returns: TPUEstimatorSpec's fields and meaning.

  Attributes:
    mode: the mode it was called in.
    predictions: a tensor, or a dict of tensors, each with the batch as first
      axis (PREDICT).
    loss: scalar loss (TRAIN and EVAL).
    train_op: the op of one training step; it must advance the global step
      by one (pass `global_step=` to `minimize`) (TRAIN).
    eval_metrics: `(metric_fn, tensors)`, tensors a list or dict. The
      tensors of every step and replica are concatenated along their first
      axis and handed to `metric_fn` (positionally for a list, by name for a
      dict), which returns `{name: (value, update_op)}` built from
      `tf.compat.v1.metrics` (EVAL).
    export_outputs: `{name: tpu_harness.estimator.export.*Output}` for
      `export_saved_model` (PREDICT).
    scaffold_fn: returns a `tf.compat.v1.train.Scaffold`; called once on the
      host after the loop is built. Its `saver` saves (TRAIN) and restores
      (EVAL, PREDICT, e.g. moving-average variables); its `init_fn`
      initializes a run without a checkpoint.
    host_call: `(fn, tensors)`, tensors a list or dict of tensors of rank >=
      1. Every step their values, concatenated across replicas on axis 0,
      are fed to the ops `fn` built on the host (see
      `tpu_harness.loops.host_call`) (TRAIN and EVAL).
    training_hooks: more session hooks for `train`; each sees one
      `Session.run` per loop.
    evaluation_hooks: more session hooks for `evaluate`.
    prediction_hooks: more session hooks for `predict`.
  """
  mode: str
  predictions: Optional[Union[tf.Tensor, Mapping[str, tf.Tensor]]] = None
  loss: Optional[tf.Tensor] = None
  train_op: Optional[Union[tf.Operation, tf.Tensor]] = None
  eval_metrics: Optional[TensorsCall] = None
  export_outputs: Optional[Mapping[str, Any]] = None
  scaffold_fn: Optional[Callable[[], tf.compat.v1.train.Scaffold]] = None
  host_call: Optional[TensorsCall] = None
  training_hooks: Hooks = ()
  evaluation_hooks: Hooks = ()
  prediction_hooks: Hooks = ()

  def __post_init__(self):
    for name in ("training_hooks", "evaluation_hooks", "prediction_hooks"):
      hooks = tuple(getattr(self, name) or ())
      for index, hook in enumerate(hooks):
        if not isinstance(hook, tf.compat.v1.train.SessionRunHook):
          raise TypeError(f"`{name}[{index}]` ({hook!r}) must be a "
                          f"tf.compat.v1.train.SessionRunHook.")
      object.__setattr__(self, name, hooks)

  @property
  def hooks_for_mode(self) -> Hooks:
    """The hooks for the spec's own mode."""
    return {ModeKeys.TRAIN: self.training_hooks,
            ModeKeys.EVAL: self.evaluation_hooks,
            ModeKeys.PREDICT: self.prediction_hooks}[self.mode]


def with_step_metrics(spec: ModelSpec,
                      metric_ops: Mapping[str, Tuple[Any, Any]]) -> ModelSpec:
  """`spec` (an EVAL spec) with TF Estimator's `eval_metric_ops`:
  `{name: (value, update_op)}` built by `model_fn` itself, in the step.
  Only a step that is not inside a device loop can run them (a base
  Estimator's, `iterations_per_loop=1` and one replica): each step runs
  the update ops, and the values are read after the last step, as TF's
  Estimator computed them. Returns `spec`."""
  object.__setattr__(spec, "_step_metric_ops", dict(metric_ops))
  return spec


def step_metrics(spec: ModelSpec) -> Optional[Mapping[str, Tuple[Any, Any]]]:
  """The `eval_metric_ops` given by `with_step_metrics`, or None."""
  return spec.__dict__.get("_step_metric_ops")


def check_spec(spec: Any, mode: str) -> ModelSpec:
  """Returns `spec` if it fits `mode`; raises a clear error otherwise."""
  if not isinstance(spec, ModelSpec):
    raise TypeError(f"`model_fn` must return a tpu_harness.ModelSpec (or "
                    f"TPUEstimatorSpec), got {type(spec).__name__} "
                    f"({spec!r}).")
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
    check_call("eval_metrics", spec.eval_metrics)
  if mode in (ModeKeys.TRAIN, ModeKeys.EVAL) and spec.host_call is not None:
    check_call("host_call", spec.host_call)
  if spec.scaffold_fn is not None and not callable(spec.scaffold_fn):
    raise TypeError(f"`scaffold_fn` ({spec.scaffold_fn!r}) must be a "
                    f"function returning a tf.compat.v1.train.Scaffold.")
  if spec.export_outputs is not None and not isinstance(spec.export_outputs,
                                                        Mapping):
    raise TypeError(f"`export_outputs` ({spec.export_outputs!r}) must be a "
                    f"dict of name -> export output.")
  if mode == ModeKeys.PREDICT:
    predictions = spec.predictions
    values = (list(predictions.values()) if isinstance(predictions, Mapping)
              else [predictions])
    if not values or not all(isinstance(t, tf.Tensor) and t.shape.rank
                             for t in values):
      raise ValueError(f"`model_fn` must return `predictions` as a tensor or "
                       f"a non-empty dict of tensors, each with a batch axis, "
                       f"in mode {mode!r}; got {predictions!r}.")
  return spec


def check_call(name: str, value: Any) -> None:
  """Checks a `(fn, tensors)` pair as TPUEstimatorSpec did."""
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not callable(value[0])
      or not isinstance(value[1], (Mapping, list, tuple))):
    raise ValueError(f"`{name}` must be a (fn, tensors) pair with tensors a "
                     f"dict or list; got {value!r}.")
  fn, tensors = value
  if isinstance(tensors, (list, tuple)):
    try:
      parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
      return
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
      return
    positional = [p for p in parameters
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) != len(tensors):
      raise ValueError(
          f"`{name}` passes {len(tensors)} tensors to {fn.__name__}, which "
          f"takes {len(positional)} arguments "
          f"({', '.join(p.name for p in positional)}).")


def create_global_step() -> tf.Variable:
  """Creates the default graph's global step as a resource variable, as
  TPUEstimator did, whatever TF behaviour the program chose
  (`tf.compat.v1.disable_v2_behavior()` makes reference variables the
  default; a reference variable read inside a v1 while loop gives a stale
  value, while a resource variable's reads are ordered within the step).

  Returns:
    The global step (int64 scalar, initialized to 0).
  """
  return tf.compat.v1.get_variable(
      tf.compat.v1.GraphKeys.GLOBAL_STEP, shape=[], dtype=tf.int64,
      initializer=tf.compat.v1.zeros_initializer(), trainable=False,
      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
      collections=[tf.compat.v1.GraphKeys.GLOBAL_VARIABLES,
                   tf.compat.v1.GraphKeys.GLOBAL_STEP],
      use_resource=True)

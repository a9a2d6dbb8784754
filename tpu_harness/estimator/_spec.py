"""`tf_estimator.EstimatorSpec`, where TPUEstimator accepted it, and the
`TPUContext` TPUEstimator put in `params['context']`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import tensorflow as tf

from tpu_harness import spec as spec_lib
from tpu_harness.spec import ModeKeys


@dataclasses.dataclass(frozen=True)
class EstimatorSpec:
  """TF's EstimatorSpec fields, in its order.

  TPUEstimator took one from `model_fn` in training (loss, train_op,
  training_hooks) and prediction (predictions, export_outputs, a Scaffold),
  and for evaluation only its `loss`: metrics computed on TPU come from a
  TPUEstimatorSpec's `eval_metrics`. `training_chief_hooks` it refused.
  """
  mode: str
  predictions: Any = None
  loss: Optional[tf.Tensor] = None
  train_op: Any = None
  eval_metric_ops: Optional[Mapping[str, Any]] = None
  export_outputs: Optional[Mapping[str, Any]] = None
  training_chief_hooks: Any = None
  training_hooks: Any = None
  scaffold: Optional[tf.compat.v1.train.Scaffold] = None
  evaluation_hooks: Any = None
  prediction_hooks: Any = None

  def __post_init__(self):
    if self.mode not in (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT):
      raise ValueError(f"`mode` ({self.mode!r}) must be one of ModeKeys.")
    if self.scaffold is not None and not isinstance(
        self.scaffold, tf.compat.v1.train.Scaffold):
      raise TypeError(f"`scaffold` ({self.scaffold!r}) must be a "
                      f"tf.compat.v1.train.Scaffold.")

  def as_model_spec(self) -> spec_lib.ModelSpec:
    """The equivalent TPUEstimatorSpec.

    Raises:
      ValueError: `training_chief_hooks`, or `eval_metric_ops` in EVAL.
    """
    if self.training_chief_hooks:
      raise ValueError("`training_chief_hooks` of an EstimatorSpec are not "
                       "supported by TPUEstimator; pass them as "
                       "training_hooks.")
    if self.mode == ModeKeys.EVAL and self.eval_metric_ops:
      raise ValueError(
          "An EstimatorSpec's `eval_metric_ops` cannot be computed in the "
          "device loop; return TPUEstimatorSpec(eval_metrics=(metric_fn, "
          "tensors)) with metric_fn building the tf.compat.v1.metrics.")
    scaffold = self.scaffold
    return spec_lib.ModelSpec(
        mode=self.mode, predictions=self.predictions, loss=self.loss,
        train_op=self.train_op, export_outputs=self.export_outputs,
        scaffold_fn=(lambda: scaffold) if scaffold is not None else None,
        training_hooks=tuple(self.training_hooks or ()),
        evaluation_hooks=tuple(self.evaluation_hooks or ()),
        prediction_hooks=tuple(self.prediction_hooks or ()))


class TPUContext:
  """What TPUEstimator passed as `params['context']` on TPU: the replica
  layout. One host here (the emulation, or one TPU worker)."""

  def __init__(self, *, mode: str, num_replicas: int):
    self._mode = mode
    self._num_replicas = num_replicas

  @property
  def mode(self) -> str:
    return self._mode

  @property
  def num_replicas(self) -> int:
    return self._num_replicas

  @property
  def num_hosts(self) -> int:
    return 1

  @property
  def current_host(self) -> int:
    return 0

  @property
  def num_of_replicas_per_host(self) -> int:
    return self._num_replicas

  @property
  def num_of_cores_per_host(self) -> int:
    return self._num_replicas

  @property
  def device_assignment(self) -> None:
    return None

  @property
  def input_context(self) -> tf.distribute.InputContext:
    """The input pipeline's place: one pipeline on this host."""
    return tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0,
        num_replicas_in_sync=self._num_replicas)

  def current_input_fn_deployment(self):
    """(host device, invocation index, invocations): one, on this host."""
    return "/device:CPU:0", 0, 1

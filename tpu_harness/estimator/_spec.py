"""`tf_estimator.EstimatorSpec`, where TPUEstimator accepted it,
`TPUEstimatorSpec` with its `as_estimator_spec()`, and the `TPUContext`
TPUEstimator put in `params['context']`."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Any, Iterator, Mapping, Optional

import tensorflow as tf

from tpu_harness import _tf_internals
from tpu_harness import spec as spec_lib
from tpu_harness.spec import ModeKeys

_LOCAL = threading.local()


@contextlib.contextmanager
def called_by_harness() -> Iterator[None]:
  """While TPUEstimator calls `model_fn`: `as_estimator_spec()` leaves
  `metric_fn`, `host_call` and `scaffold_fn` to the runner (see
  `TPUEstimatorSpec.as_estimator_spec`)."""
  depth = getattr(_LOCAL, "depth", 0)
  _LOCAL.depth = depth + 1
  try:
    yield
  finally:
    _LOCAL.depth = depth


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

  def as_model_spec(self, step_metrics: bool = False) -> spec_lib.ModelSpec:
    """The equivalent TPUEstimatorSpec.

    Args:
      step_metrics: for a base Estimator (one replica, one step per
        `Session.run`): `eval_metric_ops` are updated by each step (see
        `tpu_harness.spec.with_step_metrics`) and `training_chief_hooks`
        (a local run is its own chief) join the training hooks.

    Raises:
      ValueError: without `step_metrics`, `training_chief_hooks`, or
        `eval_metric_ops` in EVAL; `eval_metric_ops` naming `loss`.
      TypeError: an `eval_metric_ops` entry that is not a (value,
        update_op) pair.
    """
    origin = self.__dict__.get("_tpu_estimator_spec")
    if origin is not None:
      return origin  # Made by TPUEstimatorSpec.as_estimator_spec().
    if self.training_chief_hooks and not step_metrics:
      raise ValueError("`training_chief_hooks` of an EstimatorSpec are not "
                       "supported by TPUEstimator; pass them as "
                       "training_hooks.")
    metric_ops = (self.eval_metric_ops
                  if self.mode == ModeKeys.EVAL and self.eval_metric_ops
                  else None)
    if metric_ops and not step_metrics:
      raise ValueError(
          "An EstimatorSpec's `eval_metric_ops` cannot be computed in the "
          "device loop; return TPUEstimatorSpec(eval_metrics=(metric_fn, "
          "tensors)) with metric_fn building the tf.compat.v1.metrics "
          "(tpu_harness.estimator.Estimator, one step per Session.run, "
          "computes eval_metric_ops).")
    scaffold = self.scaffold
    spec = spec_lib.ModelSpec(
        mode=self.mode, predictions=self.predictions, loss=self.loss,
        train_op=self.train_op, export_outputs=self.export_outputs,
        scaffold_fn=(lambda: scaffold) if scaffold is not None else None,
        training_hooks=tuple(self.training_hooks or ())
        + tuple(self.training_chief_hooks or ()),
        evaluation_hooks=tuple(self.evaluation_hooks or ()),
        prediction_hooks=tuple(self.prediction_hooks or ()))
    if metric_ops:
      spec_lib.with_step_metrics(spec, _checked_metric_ops(metric_ops))
    return spec


def _checked_metric_ops(metric_ops: Any) -> dict:
  """`eval_metric_ops` as TF's Estimator took them: {name: (value tensor,
  update op)}; `loss` is the Estimator's own."""
  if not isinstance(metric_ops, Mapping):
    raise TypeError(f"`eval_metric_ops` ({metric_ops!r}) must be a dict of "
                    f"name -> (value, update_op).")
  for name, pair in metric_ops.items():
    if name == "loss":
      raise ValueError("Metric with name 'loss' is not allowed in "
                       "`eval_metric_ops`: the Estimator already defines "
                       "'loss', the mean loss.")
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and isinstance(pair[0], tf.Tensor)
            and isinstance(pair[1], (tf.Tensor, tf.Operation))):
      raise TypeError(f"`eval_metric_ops[{name!r}]` ({pair!r}) must be a "
                      f"(value tensor, update_op) pair, as tf.compat.v1."
                      f"metrics return; Keras Metric objects are not "
                      f"supported.")
  return dict(metric_ops)


@dataclasses.dataclass(frozen=True)
class TPUEstimatorSpec(spec_lib.ModelSpec):
  """`tf_estimator.tpu.TPUEstimatorSpec`: `tpu_harness.ModelSpec` (the same
  fields, order and meaning) with TPUEstimatorSpec's `as_estimator_spec()`.
  """

  def as_estimator_spec(self) -> EstimatorSpec:
    """The equivalent `EstimatorSpec`, as TPUEstimator made it off TPU.

    As TPUEstimator's: `eval_metric_ops` is `metric_fn` called on the
    `eval_metrics` tensors (positionally for a list, by name for a dict);
    `host_call`'s function is called the same way and a hook that runs its
    ops on every `Session.run` (initializing and flushing the tf2 summary
    writers it creates) is added to the training, evaluation and
    prediction hooks; `scaffold` is `scaffold_fn()`.

    Returned to `tpu_harness.estimator.tpu.TPUEstimator` from its
    `model_fn` (a program's `use_tpu=False` branch), the spec runs as this
    TPUEstimatorSpec would: while TPUEstimator calls `model_fn` (inside the
    device loop), `metric_fn`, `host_call` and `scaffold_fn` are not called
    here but by the runner, as for a TPUEstimatorSpec, so the returned
    spec's `eval_metric_ops` and `scaffold` are None and its hooks are the
    spec's own.

    Returns:
      A `tpu_harness.estimator.EstimatorSpec`.
    """
    if getattr(_LOCAL, "depth", 0):
      spec = EstimatorSpec(
          mode=self.mode, predictions=self.predictions, loss=self.loss,
          train_op=self.train_op, export_outputs=self.export_outputs,
          training_hooks=self.training_hooks,
          evaluation_hooks=self.evaluation_hooks,
          prediction_hooks=self.prediction_hooks)
      object.__setattr__(spec, "_tpu_estimator_spec", self)
      return spec
    eval_metric_ops = None
    if self.eval_metrics is not None:
      spec_lib.check_call("eval_metrics", self.eval_metrics)
      eval_metric_ops = _call(*self.eval_metrics)
    hooks = ()
    if self.host_call is not None:
      spec_lib.check_call("host_call", self.host_call)
      hooks = (_HostCallHook(_call(*self.host_call)),)
    scaffold = self.scaffold_fn() if self.scaffold_fn is not None else None
    return EstimatorSpec(
        mode=self.mode, predictions=self.predictions, loss=self.loss,
        train_op=self.train_op, eval_metric_ops=eval_metric_ops,
        export_outputs=self.export_outputs, scaffold=scaffold,
        training_hooks=self.training_hooks + hooks,
        evaluation_hooks=self.evaluation_hooks + hooks,
        prediction_hooks=self.prediction_hooks + hooks)


def _call(fn, tensors):
  """`fn(*tensors)` for a list or tuple, `fn(**tensors)` for a dict."""
  if isinstance(tensors, Mapping):
    return fn(**tensors)
  return fn(*tensors)


class _HostCallHook(tf.compat.v1.train.SessionRunHook):
  """Runs a `host_call`'s ops with every `Session.run`, off TPU (as
  TPUEstimator's hook for `use_tpu=False` did); initializes the tf2 summary
  writers of the graph once the session exists and flushes them at the
  end."""

  def __init__(self, fetches: Any):
    self._fetches = fetches
    self._init_ops = []
    self._flush_ops = []

  def begin(self):
    self._init_ops = _tf_internals.summary_writer_init_ops()
    self._flush_ops = _tf_internals.summary_writer_flush_ops(self._init_ops)

  def after_create_session(self, session, coord):
    del coord  # Unused.
    session.run(self._init_ops)

  def before_run(self, run_context):
    del run_context  # Unused.
    return tf.compat.v1.train.SessionRunArgs(self._fetches)

  def end(self, session):
    session.run(self._flush_ops)


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

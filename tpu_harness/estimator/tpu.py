"""`tf_estimator.tpu`: TPUEstimator and its specs and configs, on the runner.

    from tpu_harness import estimator as tf_estimator
    estimator = tf_estimator.tpu.TPUEstimator(
        model_fn, config=tf_estimator.tpu.RunConfig(...), use_tpu=...,
        train_batch_size=..., ...)

A thin mapping onto `tpu_harness.Runner`, with TPUEstimator's argument
names, defaults and meaning:

- `use_tpu=False`: one replica on the whole batch, as TPUEstimator on CPU;
  `params['use_tpu']` is False.
- `use_tpu=True` with a TPU (`RunConfig(cluster=...)` or `master=`): the
  loops are built with TPU ops, after a check on CPU that each step
  compiles for a TPU (`check_tpu_compatibility`). Without one,
  `TPUConfig(num_shards=N)` asks for N cores emulated on CPU (the loop,
  infeed, outfeed and replicas as a TPU runs them); without `num_shards`,
  `DEFAULT_EMULATED_CORES` (8, the cores of a v3-8 or v4-8 host, where
  TPUEstimator programs ran), logged once; on a TPU, `num_shards` is
  required.
- `model_fn` and `input_fn` are called with the arguments they name
  (features, labels, mode, params, config / params, mode, config), as TF's
  Estimator did. `params['batch_size']` is the per-replica batch for
  `model_fn`; for `input_fn` the per-host (global) batch in evaluation,
  prediction and PER_HOST_V1 training, per-replica otherwise.
  `params['context']` is set where TPUEstimator set it (running on TPU
  cores, real or emulated).
"""

from __future__ import annotations

import copy
import enum
import inspect
import numbers
import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from absl import logging
import tensorflow as tf

from tpu_harness import config as config_lib
from tpu_harness import runner as runner_lib
from tpu_harness import spec as spec_lib
from tpu_harness.estimator import _export
from tpu_harness.estimator._config import InputPipelineConfig
from tpu_harness.estimator._config import refuse
from tpu_harness.estimator._config import RunConfig
from tpu_harness.estimator._config import TPUConfig
from tpu_harness.estimator import _spec
from tpu_harness.estimator._spec import EstimatorSpec
from tpu_harness.estimator._spec import TPUContext
from tpu_harness.estimator._spec import TPUEstimatorSpec
from tpu_harness.loops import cpu_loop
from tpu_harness.loops import tpu_loop
from tpu_harness.spec import ModeKeys

__all__ = ["ExportSavedModelApiVersion", "InputPipelineConfig", "RunConfig",
           "TPUConfig", "TPUEstimator", "TPUEstimatorSpec"]

_RESERVED_PARAMS = ("batch_size", "context")
# The cores emulated for use_tpu=True without a TPU and without
# TPUConfig(num_shards=...): what TPUEstimator got on a v3-8 or v4-8 host.
DEFAULT_EMULATED_CORES = 8
# Train "until the input ends": a step no run reaches.
_FOREVER = 2**62


class ExportSavedModelApiVersion(enum.Enum):
  V1 = 1
  V2 = 2


def _arg_names(fn: Callable) -> list:
  try:
    return list(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return []


class TPUEstimator:
  """TPUEstimator on `tpu_harness.Runner` (see the module docstring)."""

  def __init__(self,
               model_fn: Optional[Callable] = None,
               model_dir: Optional[str] = None,
               config: Optional[RunConfig] = None,
               params: Optional[Dict[str, Any]] = None,
               use_tpu: bool = True,
               train_batch_size: Optional[int] = None,
               eval_batch_size: Optional[int] = None,
               predict_batch_size: Optional[int] = None,
               batch_axis: Any = None,
               eval_on_tpu: bool = True,
               export_to_tpu: bool = True,
               export_to_cpu: bool = True,
               warm_start_from: Optional[str] = None,
               embedding_config_spec: Any = None,
               export_saved_model_api_version: Any =
               ExportSavedModelApiVersion.V1):
    """Constructs the estimator, with TPUEstimator's arguments.

    Raises:
      ValueError: `config` is not a tpu_harness.estimator.tpu.RunConfig;
        `params` has a reserved key; `model_fn` does not take `params`;
        `model_dir` differs from `config.model_dir`; `use_tpu` without a
        `train_batch_size`, or on a TPU without `TPUConfig(num_shards=N)`;
        emulating the default 8 cores (no `num_shards`) with a batch size
        not divisible by 8.
      NotImplementedError: `batch_axis` other than None or all 0,
        `embedding_config_spec`, a non-string `warm_start_from`.
    """
    if not isinstance(config, RunConfig):
      raise ValueError(f"`config` ({config!r}) must be a "
                       f"tpu_harness.estimator.tpu.RunConfig.")
    params = dict(params or {})
    reserved = [k for k in _RESERVED_PARAMS if k in params]
    if reserved:
      raise ValueError(f"`params` has {reserved}, which TPUEstimator "
                       f"reserves (it sets them); rename them.")
    if not callable(model_fn):
      raise ValueError(f"`model_fn` ({model_fn!r}) must be callable.")
    args = _arg_names(model_fn)
    if "params" not in args:
      raise ValueError(f"`model_fn` ({model_fn!r}) must take a `params` "
                       f"argument: TPUEstimator passes the batch size as "
                       f"params['batch_size'].")
    _check_batch_axis(batch_axis)
    refuse("embedding_config_spec", embedding_config_spec, None,
           "TPU embeddings are not emulated.")
    if warm_start_from is not None and not isinstance(warm_start_from, str):
      raise NotImplementedError(
          f"`warm_start_from` ({warm_start_from!r}) must be a checkpoint "
          f"path (str); WarmStartSettings are not supported.")
    if export_saved_model_api_version not in (
        ExportSavedModelApiVersion.V1, ExportSavedModelApiVersion.V2, 1, 2):
      raise ValueError(f"`export_saved_model_api_version` "
                       f"({export_saved_model_api_version!r}) must be 1 or "
                       f"2.")
    if use_tpu and train_batch_size is None:
      raise ValueError("`train_batch_size` cannot be None when use_tpu=True.")
    if model_dir is not None and config.model_dir not in (None, model_dir):
      raise ValueError(f"`model_dir` ({model_dir!r}) and config.model_dir "
                       f"({config.model_dir!r}) differ; set one.")
    model_dir = model_dir or config.model_dir
    if model_dir is None:
      model_dir = tempfile.mkdtemp(prefix="tpu_harness_model_")
      logging.warning("Using temporary folder as model directory: %s",
                      model_dir)
    self._config = config.replace(model_dir=model_dir)
    self._model_fn = model_fn
    self._model_fn_args = args
    self._params = params
    self._use_tpu = bool(use_tpu)
    self._eval_on_tpu = bool(eval_on_tpu)
    self._export_to_tpu = bool(export_to_tpu)
    self._export_to_cpu = bool(export_to_cpu)
    self._export_saved_model_api_version = export_saved_model_api_version
    self._warm_start_from = warm_start_from
    self._batch_sizes = {ModeKeys.TRAIN: train_batch_size,
                         ModeKeys.EVAL: eval_batch_size,
                         ModeKeys.PREDICT: predict_batch_size}
    tpu_config = self._config.tpu_config
    self._on_tpu_hardware = bool(self._config.master)
    self._num_shards = tpu_config.num_shards
    if self._use_tpu:
      if self._num_shards is None and self._on_tpu_hardware:
        raise ValueError(
            "use_tpu=True on a TPU needs the number of its cores: pass "
            "TPUConfig(num_shards=<cores>) with RunConfig(cluster=...) or "
            "master=.")
      if self._num_shards is None:
        self._num_shards = DEFAULT_EMULATED_CORES
        self._check_default_cores()
        logging.warning(
            "No TPU named (no cluster or master) and no "
            "TPUConfig(num_shards=...): emulating %d TPU cores on CPU, the "
            "cores of a v3-8 or v4-8 host. Pass TPUConfig(num_shards=N) to "
            "emulate N.", self._num_shards)
      elif not self._on_tpu_hardware:
        logging.info("No TPU named (no cluster or master): emulating %d TPU "
                     "cores on CPU.", self._num_shards)
    self._runners: Dict[str, runner_lib.Runner] = {}

  def _check_default_cores(self) -> None:
    """Raises unless each batch size run on the default emulated cores
    divides among them."""
    for mode, name in ((ModeKeys.TRAIN, "train_batch_size"),
                       (ModeKeys.EVAL, "eval_batch_size"),
                       (ModeKeys.PREDICT, "predict_batch_size")):
      size = self._batch_sizes[mode]
      if (size is not None and self._on_tpu(mode)
          and size % self._num_shards):
        raise ValueError(
            f"`{name}` ({size}) must be divisible by the number of TPU "
            f"cores, num_shards={self._num_shards}: the default cores "
            f"emulated with use_tpu=True when TPUConfig(num_shards=...) is "
            f"not given. Pass TPUConfig(num_shards=N) with N dividing "
            f"each batch size, or a batch size divisible by "
            f"{self._num_shards}.")

  # Properties, as Estimator's.

  @property
  def model_dir(self) -> str:
    return self._config.model_dir

  @property
  def config(self) -> RunConfig:
    return self._config

  @property
  def params(self) -> Dict[str, Any]:
    return copy.deepcopy(self._params)

  # The mapping onto the runner.

  def _on_tpu(self, mode: str) -> bool:
    return self._use_tpu and (mode != ModeKeys.EVAL or self._eval_on_tpu)

  def _cores(self, mode: str) -> int:
    return self._num_shards if self._on_tpu(mode) else 1

  def _runner(self, mode: str) -> runner_lib.Runner:
    if mode in self._runners:
      return self._runners[mode]
    config, tpu_config = self._config, self._config.tpu_config
    cores = self._cores(mode)
    run_config = config_lib.RunConfig(
        model_dir=config.model_dir,
        iterations_per_loop=tpu_config.iterations_per_loop,
        save_checkpoints_steps=config.save_checkpoints_steps,
        save_checkpoints_secs=config.save_checkpoints_secs,
        keep_checkpoint_max=config.keep_checkpoint_max,
        log_step_count_steps=config.log_step_count_steps,
        save_summary_steps=config.save_summary_steps,
        tf_random_seed=config.tf_random_seed,
        warm_start_from=self._warm_start_from,
        master=config.master,
        session_config=config.session_config,
        save_graph_def=config.checkpoint_save_graph_def,
        tpu=config_lib.TPUConfig(num_shards=cores))
    loop_class = (tpu_loop.TpuLoop
                  if self._on_tpu(mode) and self._on_tpu_hardware
                  else cpu_loop.CpuEmulationLoop)
    device_loop = loop_class(
        num_shards=cores, iterations_per_loop=tpu_config.iterations_per_loop,
        max_infeed_bytes=run_config.max_infeed_bytes,
        per_host_input=(tpu_config.per_host_input
                        if mode == ModeKeys.TRAIN else True),
        host_call_every_n_steps=(
            tpu_config.experimental_host_call_every_n_steps))
    batch = self._batch_sizes[mode]
    runner = runner_lib.Runner(
        self._wrapped_model_fn, run_config, params=self._params,
        train_batch_size=batch if mode == ModeKeys.TRAIN else None,
        eval_batch_size=batch if mode == ModeKeys.EVAL else None,
        predict_batch_size=batch if mode == ModeKeys.PREDICT else None,
        device_loop=device_loop)
    self._runners[mode] = runner
    return runner

  def _context(self, mode: str) -> TPUContext:
    return TPUContext(mode=mode, num_replicas=self._cores(mode))

  def _wrapped_model_fn(self, features, labels, mode, params):
    """The runner's model_fn: the user's, called as TPUEstimator did."""
    params = copy.deepcopy(params)
    params["use_tpu"] = self._on_tpu(mode)
    if self._on_tpu(mode):
      params["context"] = self._context(mode)
    return self._call_model_fn(features, labels, mode, params)

  def _call_model_fn(self, features, labels, mode, params):
    kwargs = {}
    if "labels" in self._model_fn_args:
      kwargs["labels"] = labels
    elif labels is not None:
      raise ValueError("`model_fn` does not take `labels`, but `input_fn` "
                       "returns labels.")
    if "mode" in self._model_fn_args:
      kwargs["mode"] = mode
    if "config" in self._model_fn_args:
      kwargs["config"] = self._config
    kwargs["params"] = params
    with _spec.called_by_harness():
      spec = self._model_fn(features=features, **kwargs)
    return _as_model_spec(spec, mode)

  def _wrapped_input_fn(self, input_fn: Callable, mode: str) -> Callable:
    """The runner's input_fn: the user's, called with what it names."""
    args = _arg_names(input_fn)
    if "params" not in args:
      raise ValueError(f"`input_fn` ({input_fn!r}) must take a `params` "
                       f"argument: TPUEstimator passes the batch size as "
                       f"params['batch_size'].")

    def wrapped(params):
      params = copy.deepcopy(params)
      if self._on_tpu(mode):
        params["context"] = self._context(mode)
      kwargs = {"params": params}
      if "mode" in args:
        kwargs["mode"] = mode
      if "config" in args:
        kwargs["config"] = self._config
      return input_fn(**kwargs)

    return wrapped

  # Estimator's API.

  def train(self, input_fn: Callable, hooks: Optional[Iterable] = None,
            steps: Optional[int] = None, max_steps: Optional[int] = None,
            saving_listeners: Optional[Iterable] = None) -> "TPUEstimator":
    """Trains for `steps` more, or to `max_steps`, or until the input ends
    (neither given); returns self.

    Raises:
      ValueError: both `steps` and `max_steps`, or a non-positive one; and
        what `tpu_harness.Runner.train` raises.
    """
    if steps is not None and max_steps is not None:
      raise ValueError("Can not provide both `steps` and `max_steps`.")
    if steps is None and max_steps is None:
      max_steps = _FOREVER
    self._runner(ModeKeys.TRAIN).train(
        self._wrapped_input_fn(input_fn, ModeKeys.TRAIN), max_steps=max_steps,
        steps=steps, hooks=list(hooks or []),
        saving_listeners=saving_listeners)
    return self

  def evaluate(self, input_fn: Callable, steps: Optional[int] = None,
               hooks: Optional[Iterable] = None,
               checkpoint_path: Optional[str] = None,
               name: Optional[str] = None) -> Dict[str, Any]:
    """Evaluates; returns the metrics with `loss` and `global_step`."""
    return self._runner(ModeKeys.EVAL).evaluate(
        self._wrapped_input_fn(input_fn, ModeKeys.EVAL), steps=steps,
        checkpoint_path=checkpoint_path, name=name, hooks=list(hooks or []))

  def predict(self, input_fn: Callable, predict_keys: Any = None,
              hooks: Optional[Iterable] = None,
              checkpoint_path: Optional[str] = None,
              yield_single_examples: bool = True) -> Iterator[Any]:
    """Yields predictions: per example (a dict, or the value for a
    single-tensor prediction), or per batch; only `predict_keys` if given.

    Raises:
      ValueError: `predict_keys` names no prediction, or is given for a
        single-tensor prediction.
    """
    keys = [predict_keys] if isinstance(predict_keys, str) else predict_keys
    for item in self._runner(ModeKeys.PREDICT).predict(
        self._wrapped_input_fn(input_fn, ModeKeys.PREDICT),
        checkpoint_path=checkpoint_path, hooks=list(hooks or []),
        yield_single_examples=yield_single_examples):
      if keys is None:
        yield item
        continue
      if not isinstance(item, dict):
        raise ValueError("`predict_keys` is not valid when predictions are "
                         "a single tensor.")
      missing = [k for k in keys if k not in item]
      if missing:
        raise ValueError(f"`predict_keys` {missing} are not among the "
                         f"predictions {sorted(item)}.")
      yield {k: item[k] for k in keys}

  def check_tpu_compatibility(self, input_fn: Callable,
                              mode: str = ModeKeys.TRAIN) -> list:
    """Whether `mode`'s step can run on a TPU, found out on CPU in seconds
    (not in TF's TPUEstimator; see `tpu_harness.Runner.
    check_tpu_compatibility`). With `use_tpu` on a TPU the same check runs
    before each loop is built.

    Args:
      input_fn: the mode's input, as `train`, `evaluate` or `predict` take.
      mode: a `ModeKeys` value.

    Returns:
      The `tpu_harness.CompatibilityProblem`s found; empty if the step
      compiled for XLA and ran.
    """
    name = {ModeKeys.TRAIN: "train", ModeKeys.EVAL: "eval",
            ModeKeys.PREDICT: "predict"}.get(mode)
    if name is None:
      raise ValueError(f"`mode` ({mode!r}) must be a ModeKeys value: "
                       f"'train', 'eval' or 'infer'.")
    return self._runner(mode).check_tpu_compatibility(
        **{f"{name}_input_fn": self._wrapped_input_fn(input_fn, mode)})

  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint of the run in `model_dir`, or None."""
    return self._runner(ModeKeys.TRAIN if self._batch_sizes[ModeKeys.TRAIN]
                        else ModeKeys.PREDICT).latest_checkpoint()

  def _require_checkpoint(self) -> str:
    latest = self.latest_checkpoint()
    if latest is None:
      raise ValueError(f"Could not find a trained model in model_dir "
                       f"({self.model_dir!r}): train first.")
    return latest

  def get_variable_names(self) -> list:
    """Names of the variables in the newest checkpoint."""
    return [name for name, _ in tf.train.list_variables(
        self._require_checkpoint())]

  def get_variable_value(self, name: str) -> Any:
    """The value of variable `name` in the newest checkpoint."""
    return tf.train.load_variable(self._require_checkpoint(), name)

  def export_saved_model(self, export_dir_base: str,
                         serving_input_receiver_fn: Callable,
                         assets_extra: Optional[Dict[str, str]] = None,
                         as_text: bool = False,
                         checkpoint_path: Optional[str] = None,
                         experimental_mode: str = ModeKeys.PREDICT) -> bytes:
    """Exports `model_fn`'s PREDICT graph with the checkpoint's variables as
    a SavedModel in `export_dir_base/<timestamp>`; returns its path (bytes).

    As TPUEstimator: a `['serve']` metagraph (`export_to_cpu`, with
    params['use_tpu'] False) and, with `export_to_tpu` (the default), a
    `['serve', 'tpu']` metagraph of `model_fn` rewritten for a TPU
    (`export_saved_model_api_version` 1: inside `tpu.rewrite`, with
    params['use_tpu'] False as TPUEstimator passed it; version 2: as it is,
    in a TPU inference context, with params['use_tpu'] True, to rewrite
    itself). The scaffold's saver, when `scaffold_fn` gives one, restores
    the checkpoint and is the one the SavedModel is written with and
    restores through.

    Raises:
      NotImplementedError: another `experimental_mode` than PREDICT.
      TypeError: `serving_input_receiver_fn` is not callable.
      ValueError: no checkpoint, or `export_to_cpu=False` and
        `export_to_tpu=False`.
    """
    if not callable(serving_input_receiver_fn):
      raise TypeError(
          f"`serving_input_receiver_fn` ({serving_input_receiver_fn!r}) must "
          f"be a function returning a tf_estimator.export.ServingInputReceiver "
          f"(or TensorServingInputReceiver) of the serving graph's inputs.")
    if not self._export_to_cpu and not self._export_to_tpu:
      raise ValueError("One of export_to_cpu and export_to_tpu must be "
                       "true: there is nothing to export.")
    if experimental_mode != ModeKeys.PREDICT:
      raise NotImplementedError(
          f"`experimental_mode` ({experimental_mode!r}): only PREDICT "
          f"graphs are exported.")
    checkpoint = checkpoint_path or self._require_checkpoint()
    api_version_1 = self._export_saved_model_api_version in (
        ExportSavedModelApiVersion.V1, 1)

    def model_fn_for(use_tpu):
      def model_fn(features):
        params = self.params
        params["use_tpu"] = use_tpu
        return self._call_model_fn(features, None, ModeKeys.PREDICT, params)
      return model_fn

    return _export.export_saved_model(
        export_dir_base=export_dir_base,
        serving_input_receiver_fn=serving_input_receiver_fn,
        model_fn=model_fn_for(False), checkpoint=checkpoint,
        assets_extra=assets_extra, as_text=as_text,
        export_to_cpu=self._export_to_cpu,
        tpu_model_fn=(model_fn_for(not api_version_1)
                      if self._export_to_tpu else None),
        rewrite_for_tpu=api_version_1)


def _check_batch_axis(batch_axis: Any) -> None:
  """Accepts TPUEstimator's `batch_axis` where it meant what the harness
  does: None, or one 0 per tensor of `input_fn` (features and labels
  split on their first, batch, dimension).

  Raises:
    NotImplementedError: another axis.
  """
  if batch_axis is None:
    return
  axes = (list(batch_axis) if isinstance(batch_axis, (list, tuple))
          else [batch_axis])
  if not axes or not all(isinstance(axis, numbers.Integral)
                         and not isinstance(axis, bool) and axis == 0
                         for axis in axes):
    raise NotImplementedError(
        f"`batch_axis` ({batch_axis!r}) is not supported by tpu_harness: "
        f"batches are split along their first axis, so it must be None or "
        f"a 0 for each tensor of input_fn, e.g. (0, 0).")


def _as_model_spec(spec: Any, mode: str) -> spec_lib.ModelSpec:
  """A TPUEstimatorSpec as is; an EstimatorSpec where TPUEstimator took
  one."""
  if isinstance(spec, spec_lib.ModelSpec):
    return spec
  if not isinstance(spec, EstimatorSpec):
    raise TypeError(f"`model_fn` must return a TPUEstimatorSpec or an "
                    f"EstimatorSpec, got {type(spec).__name__} ({spec!r}).")
  return spec.as_model_spec()


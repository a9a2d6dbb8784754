"""`tf_estimator.tpu`: TPUEstimator and its specs and configs, on the runner.

    from tpu_harness import estimator as tf_estimator
    estimator = tf_estimator.tpu.TPUEstimator(
        model_fn, config=tf_estimator.tpu.RunConfig(...), use_tpu=...,
        train_batch_size=..., ...)

A thin mapping onto `tpu_harness.Runner`, with TPUEstimator's argument
names, defaults and meaning:

- `use_tpu=False`: one replica on the whole batch, as TPUEstimator on CPU;
  `params['use_tpu']` is False. Evaluation off TPU cores (also with
  `eval_on_tpu=False`) takes batches of no fixed size (a partial last one)
  as TF's Estimator, which TPUEstimator ran there, took them.
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
  `model_fn`; for `input_fn`, as TPUEstimator's `TPUContext` gave it, the
  per-replica batch in every mode under PER_HOST_V2 (each replica reads
  its own) and in PER_SHARD_V1 training, the per-host (global) batch
  otherwise.
  `params['context']` is set where TPUEstimator set it (running on TPU
  cores, real or emulated).
"""

from __future__ import annotations

import copy
import enum
import numbers
from typing import Any, Callable, Dict, Optional

from absl import logging

from tpu_harness import config as config_lib
from tpu_harness import spec as spec_lib
from tpu_harness.estimator import _estimator
from tpu_harness.estimator._config import InputPipelineConfig
from tpu_harness.estimator._config import refuse
from tpu_harness.estimator._config import TPURunConfig as RunConfig
from tpu_harness.estimator._config import TPUConfig
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


class ExportSavedModelApiVersion(enum.Enum):
  V1 = 1
  V2 = 2


class TPUEstimator(_estimator.Estimator):
  """TPUEstimator on `tpu_harness.Runner` (see the module docstring): the
  base Estimator with TPU's replicas, loops and batch sizes."""

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
    if "params" not in _estimator.arg_names(model_fn):
      raise ValueError(f"`model_fn` ({model_fn!r}) must take a `params` "
                       f"argument: TPUEstimator passes the batch size as "
                       f"params['batch_size'].")
    _check_batch_axis(batch_axis)
    refuse("embedding_config_spec", embedding_config_spec, None,
           "TPU embeddings are not emulated.")
    if export_saved_model_api_version not in (
        ExportSavedModelApiVersion.V1, ExportSavedModelApiVersion.V2, 1, 2):
      raise ValueError(f"`export_saved_model_api_version` "
                       f"({export_saved_model_api_version!r}) must be 1 or "
                       f"2.")
    if use_tpu and train_batch_size is None:
      raise ValueError("`train_batch_size` cannot be None when use_tpu=True.")
    self._setup(model_fn, model_dir, config, params, warm_start_from)
    self._use_tpu = bool(use_tpu)
    self._eval_on_tpu = bool(eval_on_tpu)
    self._export_to_tpu = bool(export_to_tpu)
    self._export_to_cpu = bool(export_to_cpu)
    self._export_saved_model_api_version = export_saved_model_api_version
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

  # How each mode runs: the base Estimator's choices, made TPU's.

  def _on_tpu(self, mode: str) -> bool:
    return self._use_tpu and (mode != ModeKeys.EVAL or self._eval_on_tpu)

  def _cores(self, mode: str) -> int:
    return self._num_shards if self._on_tpu(mode) else 1

  def _iterations_per_loop(self, mode: str) -> int:
    del mode  # The same for each.
    return self._config.tpu_config.iterations_per_loop

  def _device_loop(self, mode: str, run_config: config_lib.RunConfig):
    tpu_config = self._config.tpu_config
    kwargs = dict(
        num_shards=self._cores(mode),
        iterations_per_loop=tpu_config.iterations_per_loop,
        max_infeed_bytes=run_config.max_infeed_bytes,
        per_host_input=tpu_config.per_host_input_in(mode),
        host_call_every_n_steps=(
            tpu_config.experimental_host_call_every_n_steps))
    if not self._on_tpu(mode):
      # Off TPU cores TPUEstimator ran TF's Estimator, whose training and
      # evaluation took batches of any size (a partial last one).
      return cpu_loop.CpuEmulationLoop(
          dynamic_batch=mode != ModeKeys.PREDICT, **kwargs)
    return (tpu_loop.TpuLoop if self._on_tpu_hardware
            else cpu_loop.CpuEmulationLoop)(**kwargs)

  def _runner_params(self) -> Dict[str, Any]:
    return self._params

  def _batch_size(self, mode: str, input_fn: Callable) -> Optional[int]:
    del input_fn  # TPUEstimator's are given.
    return self._batch_sizes[mode]

  def _context(self, mode: str) -> TPUContext:
    return TPUContext(mode=mode, num_replicas=self._cores(mode))

  def _model_fn_params(self, mode, params):
    """The runner's params (with `batch_size`), `use_tpu` and `context`,
    as TPUEstimator passed them."""
    params = copy.deepcopy(params)
    params["use_tpu"] = self._on_tpu(mode)
    if self._on_tpu(mode):
      params["context"] = self._context(mode)
    return params

  def _input_fn_params(self, mode, params):
    params = copy.deepcopy(params)
    if self._on_tpu(mode):
      params["context"] = self._context(mode)
    return params

  def _check_input_fn(self, input_fn, args):
    if "params" not in args:
      raise ValueError(f"`input_fn` ({input_fn!r}) must take a `params` "
                       f"argument: TPUEstimator passes the batch size as "
                       f"params['batch_size'].")

  def _as_model_spec(self, spec, mode):
    return _as_model_spec(spec, mode)

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
    return self._runner(mode, self._batch_sizes[mode]).check_tpu_compatibility(
        **{f"{name}_input_fn": self._wrapped_input_fn(input_fn, mode)})

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
    return super().export_saved_model(
        export_dir_base, serving_input_receiver_fn, assets_extra=assets_extra,
        as_text=as_text, checkpoint_path=checkpoint_path,
        experimental_mode=experimental_mode)

  def _export_model_fns(self) -> Dict[str, Any]:
    if not self._export_to_cpu and not self._export_to_tpu:
      raise ValueError("One of export_to_cpu and export_to_tpu must be "
                       "true: there is nothing to export.")
    api_version_1 = self._export_saved_model_api_version in (
        ExportSavedModelApiVersion.V1, 1)

    def model_fn_for(use_tpu):
      def model_fn(features):
        params = self.params
        params["use_tpu"] = use_tpu
        return self._call_model_fn(features, None, ModeKeys.PREDICT, params)
      return model_fn

    return dict(model_fn=model_fn_for(False),
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


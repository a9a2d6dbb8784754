"""`tf_estimator.Estimator`: a `model_fn` program's Estimator on the runner,
and the code TPUEstimator shares with it.

    from tpu_harness import estimator as tf_estimator
    estimator = tf_estimator.Estimator(model_fn, model_dir,
                                       config=tf_estimator.RunConfig(...),
                                       params=...)

As TF's Estimator: one replica, one step per `Session.run` (the device loop
with `iterations_per_loop=1`, which builds no loop: the step is the graph's
top level, as TF's Estimator built it), so hooks see every step and
`EstimatorSpec.eval_metric_ops` are updated by each evaluation step and
read after the last, as TF's Estimator computed them. `model_fn` and
`input_fn` get the arguments they name (features, labels, mode, params,
config / params, mode, config), `params` as given (no `batch_size`).

What the runner adds, and asks: one trainer per model_dir, resuming from the
newest checkpoint that reads back, SIGTERM/SIGINT save and stop; training
batches of fixed shape (`batch(..., drop_remainder=True)`), found from
`input_fn`'s output before each run; evaluation and prediction batches of
any size up to the first one's (`model_fn` gets each evaluation batch's
rows, of a first dimension of unknown size where the input's is, as TF's
Estimator gave them; the other dimensions must be fixed).
"""

from __future__ import annotations

import copy
import inspect
import tempfile
from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from absl import logging
import tensorflow as tf

from tpu_harness import config as config_lib
from tpu_harness import runner as runner_lib
from tpu_harness import spec as spec_lib
from tpu_harness._model_dir import restore_order
from tpu_harness.estimator import _export
from tpu_harness.estimator import _spec
from tpu_harness.estimator._config import RunConfig
from tpu_harness.estimator._spec import EstimatorSpec
from tpu_harness.loops import cpu_loop
from tpu_harness.loops import step_input
from tpu_harness.spec import ModeKeys

# Train "until the input ends": a step no run reaches.
_FOREVER = 2**62


def arg_names(fn: Callable) -> list:
  try:
    return list(inspect.signature(fn).parameters)
  except (TypeError, ValueError):
    return []


class Estimator:
  """TF's Estimator on `tpu_harness.Runner` (see the module docstring).

  TPUEstimator (`tpu_harness.estimator.tpu`) is this class with TPU's
  replicas, loops and batch sizes.
  """

  def __init__(self,
               model_fn: Callable,
               model_dir: Optional[str] = None,
               config: Optional[RunConfig] = None,
               params: Optional[Dict[str, Any]] = None,
               warm_start_from: Optional[str] = None):
    """Constructs the estimator, with TF's Estimator's arguments.

    Raises:
      ValueError: `model_fn` is not callable, or is given `params` it does
        not take; `config` is not a RunConfig; `model_dir` differs from
        `config.model_dir`.
      NotImplementedError: a `warm_start_from` that is not a checkpoint
        path (WarmStartSettings).
    """
    if config is None:
      config = RunConfig()
    if not isinstance(config, RunConfig):
      raise ValueError(f"`config` ({config!r}) must be a "
                       f"tpu_harness.estimator.RunConfig.")
    if not callable(model_fn):
      raise ValueError(f"`model_fn` ({model_fn!r}) must be callable.")
    if params and "params" not in arg_names(model_fn):
      raise ValueError(f"`model_fn` ({model_fn!r}) does not take a `params` "
                       f"argument, but `params` ({params!r}) were given.")
    self._setup(model_fn, model_dir, config, params, warm_start_from)

  def _setup(self, model_fn: Callable, model_dir: Optional[str],
             config: RunConfig, params: Optional[Dict[str, Any]],
             warm_start_from: Optional[str]) -> None:
    """What Estimator and TPUEstimator both set up."""
    if warm_start_from is not None and not isinstance(warm_start_from, str):
      raise NotImplementedError(
          f"`warm_start_from` ({warm_start_from!r}) must be a checkpoint "
          f"path (str); WarmStartSettings are not supported.")
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
    self._model_fn_args = arg_names(model_fn)
    self._params = dict(params or {})
    self._warm_start_from = warm_start_from
    self._runners: Dict[Any, runner_lib.Runner] = {}

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

  @property
  def model_fn(self) -> Callable:
    return self._model_fn

  # What TPUEstimator overrides: how each mode runs.

  def _cores(self, mode: str) -> int:
    del mode  # One replica in every mode.
    return 1

  def _iterations_per_loop(self, mode: str) -> int:
    del mode  # One step per Session.run, as TF's Estimator ran.
    return 1

  def _device_loop(self, mode: str, run_config: config_lib.RunConfig):
    """The loop builder of `mode`'s runner."""
    return cpu_loop.CpuEmulationLoop(
        num_shards=1, iterations_per_loop=1,
        max_infeed_bytes=run_config.max_infeed_bytes, per_host_input=True,
        dynamic_batch=mode != ModeKeys.PREDICT)

  def _runner_params(self) -> Dict[str, Any]:
    """The runner's params (which it checks and adds `batch_size` to);
    the user's are passed to model_fn and input_fn as given."""
    return {}

  def _batch_size(self, mode: str, input_fn: Callable) -> int:
    """`mode`'s global batch size: here, found from `input_fn`'s output."""
    return _input_batch_size(self._wrapped_input_fn(input_fn, mode), mode)

  def _model_fn_params(self, mode: str, params: Dict[str, Any]
                       ) -> Dict[str, Any]:
    """`model_fn`'s params, from the runner's `params`."""
    del mode, params  # The user's, as given.
    return self.params

  def _input_fn_params(self, mode: str, params: Dict[str, Any]
                       ) -> Dict[str, Any]:
    """`input_fn`'s params, from the runner's `params`."""
    del mode, params  # The user's, as given.
    return self.params

  def _check_input_fn(self, input_fn: Callable, args: list) -> None:
    """Raises if `input_fn` cannot be called as this estimator calls it."""
    del input_fn, args  # Any arguments: it gets those it names.

  def _as_model_spec(self, spec: Any, mode: str) -> spec_lib.ModelSpec:
    """`model_fn`'s return value as the runner's ModelSpec: an
    EstimatorSpec, with its `eval_metric_ops` updated by each step."""
    if not isinstance(spec, EstimatorSpec):
      raise TypeError(f"`model_fn` must return an EstimatorSpec, got "
                      f"{type(spec).__name__} ({spec!r}).")
    return spec.as_model_spec(step_metrics=True)

  def _export_model_fns(self) -> Dict[str, Any]:
    """`_export.export_saved_model`'s model functions and flags."""
    def model_fn(features):
      return self._call_model_fn(features, None, ModeKeys.PREDICT,
                                 self.params)
    return dict(model_fn=model_fn, export_to_cpu=True, tpu_model_fn=None)

  # The mapping onto the runner.

  def _runner(self, mode: str, batch_size: Optional[int]
              ) -> runner_lib.Runner:
    key = (mode, batch_size)
    if key in self._runners:
      return self._runners[key]
    config = self._config
    run_config = config_lib.RunConfig(
        model_dir=config.model_dir,
        iterations_per_loop=self._iterations_per_loop(mode),
        save_checkpoints_steps=config.save_checkpoints_steps,
        save_checkpoints_secs=config.save_checkpoints_secs,
        keep_checkpoint_max=config.keep_checkpoint_max,
        keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
        log_step_count_steps=config.log_step_count_steps,
        save_summary_steps=config.save_summary_steps,
        tf_random_seed=config.tf_random_seed,
        warm_start_from=self._warm_start_from,
        master=config.master,
        session_config=config.session_config,
        save_graph_def=config.checkpoint_save_graph_def,
        tpu=config_lib.TPUConfig(num_shards=self._cores(mode)))
    runner = runner_lib.Runner(
        self._wrapped_model_fn, run_config, params=self._runner_params(),
        train_batch_size=batch_size if mode == ModeKeys.TRAIN else None,
        eval_batch_size=batch_size if mode == ModeKeys.EVAL else None,
        predict_batch_size=batch_size if mode == ModeKeys.PREDICT else None,
        device_loop=self._device_loop(mode, run_config))
    self._runners[key] = runner
    return runner

  def _wrapped_model_fn(self, features, labels, mode, params):
    """The runner's model_fn: the user's, called as the estimator did."""
    return self._call_model_fn(features, labels, mode,
                               self._model_fn_params(mode, params))

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
    if "params" in self._model_fn_args:
      kwargs["params"] = params
    with _spec.called_by_harness():
      spec = self._model_fn(features=features, **kwargs)
    return self._as_model_spec(spec, mode)

  def _wrapped_input_fn(self, input_fn: Callable, mode: str) -> Callable:
    """The runner's input_fn: the user's, called with what it names."""
    if not callable(input_fn):
      raise TypeError(f"`input_fn` ({input_fn!r}) must be callable.")
    args = arg_names(input_fn)
    self._check_input_fn(input_fn, args)

    def wrapped(params):
      kwargs = {}
      if "params" in args:
        kwargs["params"] = self._input_fn_params(mode, params)
      if "mode" in args:
        kwargs["mode"] = mode
      if "config" in args:
        kwargs["config"] = self._config
      return input_fn(**kwargs)

    return wrapped

  # Estimator's API.

  def train(self, input_fn: Callable, hooks: Optional[Iterable] = None,
            steps: Optional[int] = None, max_steps: Optional[int] = None,
            saving_listeners: Optional[Iterable] = None) -> "Estimator":
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
    mode = ModeKeys.TRAIN
    self._runner(mode, self._batch_size(mode, input_fn)).train(
        self._wrapped_input_fn(input_fn, mode), max_steps=max_steps,
        steps=steps, hooks=list(hooks or []),
        saving_listeners=saving_listeners)
    return self

  def evaluate(self, input_fn: Callable, steps: Optional[int] = None,
               hooks: Optional[Iterable] = None,
               checkpoint_path: Optional[str] = None,
               name: Optional[str] = None) -> Dict[str, Any]:
    """Evaluates; returns the metrics with `loss` and `global_step`.

    Batches may be of any size up to the first one's (a partial last
    batch), as TF's Estimator took them; see the module docstring.
    """
    mode = ModeKeys.EVAL
    return self._runner(mode, self._batch_size(mode, input_fn)).evaluate(
        self._wrapped_input_fn(input_fn, mode), steps=steps,
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
    mode = ModeKeys.PREDICT
    runner = self._runner(mode, self._batch_size(mode, input_fn))
    for item in runner.predict(
        self._wrapped_input_fn(input_fn, mode),
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

  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint of the run in `model_dir` that reads back, or
    None."""
    return restore_order.latest_restorable(self.model_dir)

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

    As TF's Estimator: a `['serve']` metagraph; the scaffold's saver, when
    the PREDICT spec has one, restores the checkpoint and is the one the
    SavedModel is written with (TPUEstimator adds a `['serve', 'tpu']`
    metagraph, see its docstring).

    Raises:
      NotImplementedError: another `experimental_mode` than PREDICT.
      TypeError: `serving_input_receiver_fn` is not callable.
      ValueError: no checkpoint; nothing to export.
    """
    if not callable(serving_input_receiver_fn):
      raise TypeError(
          f"`serving_input_receiver_fn` ({serving_input_receiver_fn!r}) must "
          f"be a function returning a tf_estimator.export.ServingInputReceiver "
          f"(or TensorServingInputReceiver) of the serving graph's inputs.")
    fns = self._export_model_fns()
    if experimental_mode != ModeKeys.PREDICT:
      raise NotImplementedError(
          f"`experimental_mode` ({experimental_mode!r}): only PREDICT "
          f"graphs are exported.")
    checkpoint = checkpoint_path or self._require_checkpoint()
    return _export.export_saved_model(
        export_dir_base=export_dir_base,
        serving_input_receiver_fn=serving_input_receiver_fn,
        checkpoint=checkpoint, assets_extra=assets_extra, as_text=as_text,
        **fns)


def _input_batch_size(input_fn: Callable, mode: str) -> int:
  """The batch size of `input_fn`'s output (called with no runner params),
  read in a scratch graph: the static first dimension of its first tensor;
  without one, the rows of its first batch (the most rows a batch may
  have: TF's Estimator took a partial last batch in every mode).
  """
  with tf.Graph().as_default():
    dataset = step_input.make_input(lambda params: input_fn(params), {},
                                    mode, check_shapes=False)
    # Features come first: their first tensor.
    leaves = tf.nest.flatten(dataset.element_spec)
    rows = leaves[0].shape[0] if leaves[0].shape.rank else None
    if rows is not None:
      return int(rows)
    element = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    first = tf.nest.flatten(element)[0]
    with tf.compat.v1.Session() as session:
      rows = int(session.run(tf.shape(first)[0]))
    logging.info("%s in batches of up to %d rows, the first batch of "
                 "`input_fn`.", {ModeKeys.TRAIN: "Training",
                                 ModeKeys.EVAL: "Evaluating"}.get(
                                     mode, "Predicting"), rows)
    return rows


def _load_global_step_from_checkpoint_dir(checkpoint_dir: str) -> int:
  """The global step of the newest checkpoint in `checkpoint_dir`, 0 if
  there is none or it does not read: TF's estimator module had this
  private function, which TPU programs call before their train/evaluate
  loop (`install()` provides it at TF's path)."""
  try:
    checkpoint = tf.train.latest_checkpoint(checkpoint_dir)
    return int(tf.train.load_checkpoint(checkpoint).get_tensor(
        tf.compat.v1.GraphKeys.GLOBAL_STEP))
  except Exception:  # pylint: disable=broad-except
    return 0  # As TF: any failure means "no step yet".

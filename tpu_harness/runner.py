"""`Runner`: TPUEstimator-style train / evaluate / predict over device loops.

The public API and its checks; each call then runs its session with a
`job.Job` in `tpu_harness._run`: `training.train`, `evaluation.evaluate`,
`prediction.predict`.
"""

from __future__ import annotations

import time
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    Optional, Sequence)

from absl import logging
import tensorflow as tf

from hooks import validation
from tpu_harness import _runner_args as runner_args
from tpu_harness import errors
from tpu_harness import spec as spec_lib
from tpu_harness._infeed.position import RestoredPositionError
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from tpu_harness._model_dir.lease import ModelDirLease
from tpu_harness._run import evaluation
from tpu_harness._run import logs
from tpu_harness._run import prediction
from tpu_harness._run import training
from tpu_harness._run.job import Job
from tpu_harness.config import RunConfig
from tpu_harness.loops import cpu_loop
from tpu_harness.loops.device_loop import DeviceLoop
from tpu_harness.tpu import check as tpu_check


# The most steps a train() may be asked for (global steps are int64, and
# input counts add to them).
MAX_STEPS = 2**62

_MODE_KEYS = {"train": spec_lib.ModeKeys.TRAIN, "eval": spec_lib.ModeKeys.EVAL,
              "predict": spec_lib.ModeKeys.PREDICT}


class Runner:
  """Trains, evaluates and predicts with `model_fn` in device loops."""

  def __init__(self,
               model_fn: Callable[..., Any],
               config: RunConfig,
               *,  # Makes all following args keyword only.
               params: Optional[Mapping[str, Any]] = None,
               train_batch_size: Optional[int] = None,
               eval_batch_size: Optional[int] = None,
               predict_batch_size: Optional[int] = None,
               device_loop: Optional[DeviceLoop] = None,
               clock: Callable[[], float] = time.monotonic):
    """Initializes the runner.

    Args:
      model_fn: `model_fn(features, labels, mode, params) -> ModelSpec`.
      config: the `RunConfig`.
      params: passed to `model_fn` and `input_fn`, plus `batch_size` (the
        per-replica batch size), which the runner sets.
      train_batch_size: global examples per training step.
      eval_batch_size: global examples per evaluation step.
      predict_batch_size: global examples per prediction step.
      device_loop: how loops are built; default: CPU emulation with
        `config.tpu.num_shards` replicas.
      clock: seconds, for the progress log.

    Raises:
      TypeError: `model_fn` is not callable with four arguments, `config` is
        not a RunConfig, `params` is not a mapping.
      ValueError: `params` has `batch_size` or `input_context`; a batch
        size is not a positive multiple of `num_shards`; `device_loop`
        builds for another number of hosts than `config.tpu.hosts`.
    """
    params = runner_args.checked(model_fn, config, params,
                                 {"train_batch_size": train_batch_size,
                                  "eval_batch_size": eval_batch_size,
                                  "predict_batch_size": predict_batch_size},
                                 device_loop)
    self._model_fn = model_fn
    self._config = config
    self._params = params
    self._batch_sizes = {"train": train_batch_size, "eval": eval_batch_size,
                         "predict": predict_batch_size}
    self._device = device_loop or cpu_loop.CpuEmulationLoop(
        num_shards=config.tpu.num_shards,
        iterations_per_loop=config.iterations_per_loop,
        max_infeed_bytes=config.max_infeed_bytes, hosts=config.tpu.hosts)
    self._clock = clock
    self._preempted = False

  @property
  def config(self) -> RunConfig:
    return self._config

  @property
  def model_dir(self) -> str:
    return self._config.model_dir

  @property
  def preempted(self) -> bool:
    """Whether the last `train` stopped early because of a SIGTERM or
    SIGINT."""
    return self._preempted

  def latest_checkpoint(self) -> Optional[str]:
    """The newest checkpoint of the run in `model_dir` that reads back, or
    None when there is none.

    Reads every tensor of the checkpoint it returns (and of newer broken
    ones) to verify it: as much I/O as a restore.

    Raises:
      NoRestorableCheckpointError: checkpoints exist, none reads back.
      StorageError: storage kept failing or refused access.
    """
    return restore_order.latest_restorable(self._config.model_dir)

  # Training.

  def train(self,
            input_fn: Callable[[Dict[str, Any]], tf.data.Dataset],
            max_steps: Optional[int] = None,
            steps: Optional[int] = None,
            hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]] = None,
            saving_listeners: Optional[Iterable[
                tf.compat.v1.train.CheckpointSaverListener]] = None,
            ) -> "Runner":
    """Trains until the global step is `max_steps` (or for `steps` more).

    Holds the lease on `model_dir` while it trains (a second trainer gets
    `ModelDirBusyError`). Resumes from the newest checkpoint of the run in
    `model_dir` that restores, reading it once (a truncated or corrupt newer
    one is skipped with a warning; other files and other checkpoints there
    are left alone);
    with none there and `config.warm_start_from` set, initializes trainable
    variables from it. A SIGTERM or SIGINT stops training after the current
    loop, with a checkpoint saved and listeners' `end` called; `preempted` is
    then True. If training stops with an error, a checkpoint write in flight
    is finished first.

    Args:
      input_fn: `input_fn(params) -> Dataset` of (features, labels), or of
        features alone (`model_fn` gets `labels=None`), with
        fixed-shape batches of `params['batch_size']` (where the device loop
        takes them, `CpuEmulationLoop(dynamic_batch=True)`, batches of up
        to that many rows, e.g. a partial last one); called once per
        host, `params['input_context']` (a `tf.distribute.InputContext`)
        says which of how many hosts' input it makes.
      max_steps: the global step to stop at.
      steps: how many steps to run from the current global step. Exactly one
        of `steps` and `max_steps`.
      hooks: more `SessionRunHook`s; they are told nothing about
        steps_per_run and see one `Session.run` per loop.
      saving_listeners: `CheckpointSaverListener`s for the checkpoint saver.

    Returns:
      self.

    Raises:
      ValueError, TypeError: bad arguments, or a `model_fn` / `input_fn`
        that breaks the contract (see `tpu_harness.spec`).
      RuntimeError: the train op did not advance the global step by one
        per step.
      ModelDirBusyError: another trainer holds `model_dir`.
      LeaseLostError: another trainer took `model_dir` over.
      CheckpointMismatchError: the checkpoint in `model_dir` has other
        variables, shapes or dtypes than the model.
      NoRestorableCheckpointError: `model_dir` holds checkpoints of the run
        but none reads back.
      StorageError: storage kept failing or refused access.
      NanLossError: the loss became NaN (with `config.stop_on_nan_loss`).
      hooks.NonFiniteWeightsError: a weight was NaN or Inf when a save was
        due (with `config.stop_on_nan_loss`); it was not saved.
      TPUCompatibilityError: the device loop runs on a TPU and the training
        step cannot (with `config.check_tpu_compatibility`); raised before
        anything is written.
    """
    validation.exactly_one({"max_steps": max_steps, "steps": steps})
    # As ints: a numpy integer too (a step read with
    # tf.train.load_variable, as resnet_main.py computes max_steps).
    max_steps, steps = (
        None if value is None else _step_count(name, value)
        for name, value in (("max_steps", max_steps), ("steps", steps)))
    user_hooks = list(hooks or [])
    for index, hook in enumerate(user_hooks):
      if not isinstance(hook, tf.compat.v1.train.SessionRunHook):
        raise TypeError(f"`hooks[{index}]` ({hook!r}) must be a "
                        f"tf.compat.v1.train.SessionRunHook.")
    batch_size = self._prepare("train", input_fn)
    model_dir = self._config.model_dir
    self._preempted = False
    contents.prepare_model_dir(model_dir)
    # Settled by the training's first write, once its graph is built.
    with ModelDirLease(model_dir).claimed() as lease:
      resume = restore_order.resume_point(model_dir)
      restore_input_state = True
      while True:
        last_step = (max_steps if max_steps is not None
                     else resume.step + steps)
        if resume.step >= last_step:
          logging.info("Skipping training: global step %d is already at or "
                       "past max_steps %d (%s).", resume.step, last_step,
                       resume.checkpoint)
          return self
        try:
          self._preempted = training.train(
              self._job(batch_size),
              training.TrainRequest(
                  input_fn=input_fn, resume=resume, last_step=last_step,
                  batch_size=batch_size, hooks=user_hooks,
                  listeners=list(saving_listeners or []), lease=lease,
                  restore_input_state=restore_input_state))
          return self
        except RestoredPositionError as error:
          if not restore_input_state:
            raise
          # No checkpoint was saved since the restore's own: the same
          # step again, its pass's steps read and dropped instead.
          logging.warning(
              "%s. Training again from %s, reading and dropping the steps "
              "of its input pass already trained on instead of restoring "
              "the position (as resume_input='skip' would).", error,
              error.checkpoint)
          restore_input_state = False
          resume = restore_order.resume_point(model_dir, order=resume.order)
        except errors.CheckpointRestoreError as error:
          # Raised by the restore, before any step: resume from an older
          # checkpoint instead.
          resume.order.skip(error.checkpoint, error.reason, "restore")
          resume = restore_order.resume_point(model_dir, order=resume.order)

  # Evaluation.

  def evaluate(self,
               input_fn: Callable[[Dict[str, Any]], tf.data.Dataset],
               steps: Optional[int] = None,
               checkpoint_path: Optional[str] = None,
               name: Optional[str] = None,
               hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]
               = None) -> Dict[str, Any]:
    """Evaluates a checkpoint; returns its metrics, `loss` and `global_step`.

    Args:
      input_fn: `input_fn(params) -> Dataset` of (features, labels), or of
        features alone (`model_fn` gets `labels=None`), in batches of
        fixed shape; where the device loop takes them
        (`CpuEmulationLoop(dynamic_batch=True)`), batches of up to
        `params['batch_size']` rows, e.g. a partial last one.
      steps: eval steps; None runs until the input ends.
      checkpoint_path: the checkpoint; default: the latest in `model_dir`.
      name: eval name: events go to `model_dir/eval_<name>` (or `/eval`).
      hooks: more `SessionRunHook`s.

    Returns:
      `{name: value}`: `loss` (its mean over the steps) and each metric's
      value (scalars as Python numbers), and `global_step`, the
      checkpoint's. The scalars are also written as a summary to the eval
      directory, at that step.

    Raises:
      ValueError: no checkpoint, bad `steps`, a contract violation, or an
        eval directory that cannot be written (checked before evaluating).
      TPUCompatibilityError: the device loop runs on a TPU and the eval
        step cannot (with `config.check_tpu_compatibility`).
      NoRestorableCheckpointError: checkpoints of the run exist, none
        restores.
      CheckpointRestoreError: `checkpoint_path` does not read back.
      InputShapeError: batches of no fixed shape (with a device loop that
        takes batches of no fixed size, `CpuEmulationLoop(
        dynamic_batch=True)`: of no fixed shape after the first
        dimension).
    """
    if steps is not None:
      steps = validation.positive_int("steps", steps)
    if name is not None:
      validation.non_empty_str("name", name)
    batch_size = self._prepare("eval", input_fn)
    return evaluation.evaluate(
        self._job(batch_size),
        evaluation.EvalRequest(
            input_fn=input_fn, steps=steps, checkpoint_path=checkpoint_path,
            name=name, batch_size=batch_size, hooks=hooks))

  # Prediction.

  def predict(self,
              input_fn: Callable[[Dict[str, Any]], tf.data.Dataset],
              checkpoint_path: Optional[str] = None,
              hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]
              = None,
              yield_single_examples: bool = True,
              ) -> Iterator[Any]:
    """Yields the predictions, in input order.

    The input's last batch may be partial; it is padded for the device and
    the padding is dropped.

    Args:
      input_fn: `input_fn(params) -> Dataset` of features (or (features,
        labels), labels ignored).
      checkpoint_path: the checkpoint; default: the latest in `model_dir`.
      hooks: more `SessionRunHook`s.
      yield_single_examples: one item per example (a `{name: value}` dict,
        or the value for a single-tensor prediction); else one per input
        batch, its values stacked.

    Yields:
      The predictions of the input's examples, or batches, in input order.
      The arguments are checked, and the checkpoint restored, when the
      first is asked for.

    Raises:
      ValueError: no checkpoint, or a contract violation.
      TPUCompatibilityError: the device loop runs on a TPU and the predict
        step cannot (with `config.check_tpu_compatibility`).
      NoRestorableCheckpointError: checkpoints of the run exist, none
        restores.
      CheckpointRestoreError: `checkpoint_path` does not read back.
    """
    job = self._job(self._prepare("predict", input_fn))
    yield from prediction.predict(
        job, prediction.PredictRequest(
            input_fn=input_fn, checkpoint_path=checkpoint_path, hooks=hooks,
            yield_single_examples=yield_single_examples))

  # TPU compatibility.

  def check_tpu_compatibility(
      self, *,
      train_input_fn: Optional[Callable[[Dict[str, Any]],
                                        tf.data.Dataset]] = None,
      eval_input_fn: Optional[Callable[[Dict[str, Any]],
                                       tf.data.Dataset]] = None,
      predict_input_fn: Optional[Callable[[Dict[str, Any]],
                                          tf.data.Dataset]] = None,
  ) -> List[tpu_check.Problem]:
    """Whether the model's steps can run on a TPU, found out on CPU.

    For each mode given an input_fn, compiles one replica's step of
    `model_fn` with XLA on CPU, on inputs of the per-replica static shapes
    the device loop would give it, and runs it once (see
    `tpu_harness.tpu.check`). Nothing is read from or written to
    `model_dir`. Runs in any process; no TPU is needed.

    Args:
      train_input_fn: the training input; checks the TRAIN step.
      eval_input_fn: the evaluation input; checks the EVAL step.
      predict_input_fn: the prediction input; checks the PREDICT step.

    Returns:
      Every problem found (`tpu_check.Problem`: mode, kind, op or input,
      what is wrong, and the line of the user's code that created it);
      empty when every step compiled and ran.

    Raises:
      ValueError: no input_fn given, or the mode's batch size was not
        given to the Runner; `model_fn` or `input_fn` break the runner's
        contract.
    """
    given = {"train": train_input_fn, "eval": eval_input_fn,
             "predict": predict_input_fn}
    if all(fn is None for fn in given.values()):
      raise ValueError("Pass at least one of `train_input_fn`, "
                       "`eval_input_fn` and `predict_input_fn` to check.")
    problems = []
    for mode, input_fn in given.items():
      if input_fn is not None:
        problems += self._check(mode, input_fn)
    return problems

  def _check(self, mode: str, input_fn: Callable) -> List[tpu_check.Problem]:
    params = self._params_for(self._batch_size(mode))
    return tpu_check.check_model(
        self._model_fn, input_fn, params, _MODE_KEYS[mode],
        input_params=self._device.input_params(params),
        num_shards=self._device.num_shards,
        per_host_input=self._device.per_host_input)

  def _prepare(self, mode: str, input_fn: Callable) -> int:
    """What train, evaluate and predict do before building: one line per
    log message, the session target checked (a TPU loop needs TPUs), and
    a TPUCompatibilityError for a model that cannot run on a TPU (unless
    `config.check_tpu_compatibility` is off). Returns the mode's global
    batch size."""
    logs.one_line_per_message()
    self._device.check_target(self._config.session_target)
    batch_size = self._batch_size(mode)
    if (self._device.compiles_for_tpu
        and self._config.check_tpu_compatibility):
      tpu_check.check_or_raise(self._check(mode, input_fn))
    return batch_size

  # Shared.

  def _batch_size(self, mode: str) -> int:
    value = self._batch_sizes[mode]
    if value is None:
      raise ValueError(f"`{mode}_batch_size` was not given to the Runner; "
                       f"it is needed to {mode}.")
    return value

  def _session_config(self) -> tf.compat.v1.ConfigProto:
    """The device loop's session config with `config.session_config`
    merged in; the loop's device counts win; where the user's sets any of
    Grappler's options (`graph_options.rewrite_options`), those are used
    as they are, TF's defaults for the rest."""
    device = self._device.session_config()
    users = self._config.session_config
    if users is None:
      return device
    merged = tf.compat.v1.ConfigProto()
    merged.CopyFrom(users)
    merged.MergeFrom(device)
    for name, count in device.device_count.items():
      merged.device_count[name] = count
    options = users.graph_options.rewrite_options
    if options.ListFields():
      merged.graph_options.rewrite_options.CopyFrom(options)
    return merged

  def _params_for(self, global_batch_size: int) -> Dict[str, Any]:
    return dict(self._params,
                batch_size=global_batch_size // self._device.num_shards)

  def _job(self, global_batch_size: int) -> Job:
    """What train, evaluate and predict run with, at `global_batch_size`."""
    return Job(model_fn=self._model_fn, config=self._config,
               device=self._device, params=self._params_for(global_batch_size),
               session_config=self._session_config(), clock=self._clock)


def _step_count(name: str, value: Any) -> int:
  """`value` as an int, if it is a positive integer within int64's steps.

  Raises:
    TypeError: `value` is not an integer.
    ValueError: `value` is not positive, or over `MAX_STEPS`.
  """
  count = validation.positive_int(name, value)
  if count > MAX_STEPS:
    raise ValueError(f"`{name}` ({value}) must be at most 2**62 "
                     f"({MAX_STEPS}): global steps are int64.")
  return count

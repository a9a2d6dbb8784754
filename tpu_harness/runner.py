"""`Runner`: TPUEstimator-style train / evaluate / predict over device loops.

Per training loop (one `Session.run` of up to `iterations_per_loop` steps)::

  infeed.request(k)            # host thread moves k steps of input
  n = infeed.wait()            # steps actually available (input may end)
  infeed.request(next k)       # so the host fills while the device runs
  hooks.before_run             # every hook, steps_per_run = iterations_per_loop
  session.run(loop, iterations=n)   # n steps on the device, outfeed back
  hooks.after_run              # saves, step counting, stop at max_steps
  log: step, loss, steps/sec, examples/sec; write loss + host_call scalars

The last loop is shortened so training stops exactly at `max_steps`.
"""

from __future__ import annotations

import inspect
import time
from typing import (Any, Callable, Dict, Iterable, Iterator, Mapping,
                    Optional, Sequence)

from absl import logging
import numpy as np
import tensorflow as tf

import hooks as hooks_lib
from hooks import _paths
from hooks import _validation
from tpu_harness import checkpoints
from tpu_harness import cpu_loop
from tpu_harness import host_loop
from tpu_harness import restore
from tpu_harness import spec as spec_lib
from tpu_harness.config import RunConfig
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.infeed import InfeedHook
from tpu_harness.lease import ModelDirLease
from tpu_harness.nan_loss import NanLossHook
from tpu_harness.preemption import PreemptionWatcher


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
      ValueError: `params` has `batch_size`; a batch size is not a positive
        multiple of `num_shards`.
    """
    if not callable(model_fn):
      raise TypeError(f"`model_fn` ({model_fn!r}) must be callable.")
    try:
      inspect.signature(model_fn).bind(None, None, None, None)
    except (TypeError, ValueError):
      raise TypeError(
          f"`model_fn` ({model_fn!r}) must accept (features, labels, mode, "
          f"params); its signature is {_signature(model_fn)}.") from None
    if not isinstance(config, RunConfig):
      raise TypeError(f"`config` ({config!r}) must be a "
                      f"tpu_harness.RunConfig.")
    if params is not None and not isinstance(params, Mapping):
      raise TypeError(f"`params` ({params!r}) must be a dict or None.")
    params = dict(params or {})
    if "batch_size" in params:
      raise ValueError(
          f"`params` ({params!r}) must not contain 'batch_size': the runner "
          f"sets it to the per-replica batch size; pass train_batch_size / "
          f"eval_batch_size / predict_batch_size instead.")
    shards = config.tpu.num_shards
    for name, value in (("train_batch_size", train_batch_size),
                        ("eval_batch_size", eval_batch_size),
                        ("predict_batch_size", predict_batch_size)):
      if value is None:
        continue
      _validation.positive_int(name, value)
      if value % shards:
        raise ValueError(f"`{name}` ({value}) must be a multiple of "
                         f"`num_shards` ({shards}).")
    self._model_fn = model_fn
    self._config = config
    self._params = params
    self._batch_sizes = {"train": train_batch_size, "eval": eval_batch_size,
                         "predict": predict_batch_size}
    self._device = device_loop or cpu_loop.CpuEmulationLoop(
        num_shards=shards, iterations_per_loop=config.iterations_per_loop,
        max_infeed_bytes=config.max_infeed_bytes)
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
    return checkpoints.latest_restorable(self._config.model_dir)

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
    `model_dir` that reads back (a truncated or corrupt newer one is skipped
    with a warning; other files and other checkpoints there are left alone);
    with none there and `config.warm_start_from` set, initializes trainable
    variables from it. A SIGTERM or SIGINT stops training after the current
    loop, with a checkpoint saved and listeners' `end` called; `preempted` is
    then True. If training stops with an error, a checkpoint write in flight
    is finished first.

    Args:
      input_fn: `input_fn(params) -> Dataset` of (features, labels) with
        fixed-shape batches of `params['batch_size']`.
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
    """
    _validation.exactly_one({"max_steps": max_steps, "steps": steps})
    if max_steps is not None:
      _validation.positive_int("max_steps", max_steps)
    if steps is not None:
      _validation.positive_int("steps", steps)
    user_hooks = list(hooks or [])
    for index, hook in enumerate(user_hooks):
      if not isinstance(hook, tf.compat.v1.train.SessionRunHook):
        raise TypeError(f"`hooks[{index}]` ({hook!r}) must be a "
                        f"tf.compat.v1.train.SessionRunHook.")
    batch_size = self._batch_size("train")
    model_dir = self._config.model_dir
    self._preempted = False
    checkpoints.prepare_model_dir(model_dir)
    with ModelDirLease(model_dir) as lease:
      resume = checkpoints.resume_point(model_dir)
      last_step = max_steps if max_steps is not None else resume.step + steps
      if resume.step >= last_step:
        logging.info("Skipping training: global step %d is already at or "
                     "past max_steps %d (%s).", resume.step, last_step,
                     resume.checkpoint)
        return self
      self._train(input_fn, resume, last_step, batch_size, user_hooks,
                  saving_listeners, lease)
    return self

  def _train(self, input_fn, resume: checkpoints.ResumePoint, last_step: int,
             batch_size: int, user_hooks, saving_listeners,
             lease: ModelDirLease) -> None:
    config = self._config
    start_step = resume.step
    with tf.Graph().as_default():
      if config.tf_random_seed is not None:
        tf.compat.v1.set_random_seed(config.tf_random_seed)
      spec_lib.create_global_step()
      loop = self._device.build_train(self._model_fn, input_fn,
                                      self._params_for(batch_size),
                                      skip_steps=start_step,
                                      max_steps=last_step - start_step)
      if resume.checkpoint is not None:
        checkpoints.check_matches(resume.checkpoint,
                                  tf.compat.v1.global_variables())
      elif config.warm_start_from:
        logging.info("Warm-starting trainable variables from %s.",
                     config.warm_start_from)
        tf.compat.v1.train.warm_start(config.warm_start_from)
      scaffold, _ = restore.scaffold_for(loop.spec, lambda: (
          tf.compat.v1.train.Saver(max_to_keep=config.keep_checkpoint_max,
                                   save_relative_paths=True)))
      # Rotation (keep_checkpoint_max) covers the run's own checkpoints of
      # earlier runs, and a lowered maximum applies at once.
      scaffold.saver.recover_last_checkpoints(checkpoints.enforce_keep_max(
          config.model_dir, resume.recent, config.keep_checkpoint_max))
      ipl = config.iterations_per_loop
      periodic = (config.save_checkpoints_steps is not None
                  or config.save_checkpoints_secs is not None)
      saver_hook = hooks_lib.CheckpointSaverHook(
          config.model_dir,
          # No periodic saves: only the one at the start and the last.
          save_steps=(config.save_checkpoints_steps if periodic
                      else _NEVER),
          save_secs=config.save_checkpoints_secs, scaffold=scaffold,
          listeners=saving_listeners, steps_per_run=ipl,
          save_graph_def=config.save_graph_def,
          async_save=config.async_checkpoints,
          check_finite=config.stop_on_nan_loss)

      def newest_checkpoint():  # Once the loss is NaN: nothing more to save.
        saver_hook.finish_pending_save()
        return saver_hook.latest_saved

      guards = ([NanLossHook(loop.fetches["outfeed"][cpu_loop.LOSS],
                             newest_checkpoint)]
                if config.stop_on_nan_loss else [])
      all_hooks = list(loop.hooks) + [InfeedHook(loop.infeed)] + guards + [
          hooks_lib.StopAtStepHook(last_step=last_step, steps_per_run=ipl),
          hooks_lib.StepCounterHook(
              every_n_steps=config.log_step_count_steps,
              output_dir=config.model_dir, steps_per_run=ipl,
              batch_size=batch_size),
      ] + list(loop.spec.training_hooks) + user_hooks + [saver_hook]
      creator = tf.compat.v1.train.ChiefSessionCreator(
          scaffold=scaffold, checkpoint_filename_with_path=resume.checkpoint,
          master=config.master, config=self._session_config())
      writer = tf.compat.v1.summary.FileWriterCache.get(config.model_dir)
      logging.info("Training from step %d to %d, %d steps per loop, on %s.",
                   start_step, last_step, ipl, config.master or "this process")
      try:
        with PreemptionWatcher() as preemption:
          with tf.compat.v1.train.MonitoredSession(
              session_creator=creator, hooks=all_hooks) as session:
            try:
              self._train_loops(session, loop, start_step, last_step,
                                batch_size, writer, preemption, lease)
            finally:
              loop.infeed.stop()
      except BaseException:
        # The session ended without the hooks' end(): finish a checkpoint
        # write in flight rather than abandon it.
        saver_hook.finish_pending_save()
        raise
      finally:
        writer.flush()
      if preemption.requested:
        self._preempted = True
        logging.warning("Stopped by %s at step %s with a checkpoint saved "
                        "(%s); training resumes from it when run again.",
                        preemption.signal_name,
                        checkpoints.checkpoint_step(saver_hook.latest_saved),
                        saver_hook.latest_saved)

  def _train_loops(self, session, loop: BuiltLoop, step: int, last_step: int,
                   batch_size: int, writer, preemption,
                   lease: ModelDirLease) -> None:
    def stop():
      return session.should_stop() or preemption.requested or lease.lost

    for count, results, elapsed in self._run_loops(loop, session,
                                               last_step - step, stop):
      end_step = int(results["end_step"])
      if end_step - step != count:
        raise RuntimeError(
            f"The global step went from {step} to {end_step} in a loop of "
            f"{count} steps: `model_fn`'s train_op must advance it by exactly "
            f"one per step (pass global_step=tf.compat.v1.train."
            f"get_global_step() to the optimizer's minimize).")
      self._report(results["outfeed"], step, end_step, elapsed, batch_size,
                   last_step, writer)
      _run_host_call(loop, results, count)
      step = end_step
    lease.check()
    if step < last_step and not stop():
      logging.info("Input ended at step %d, before max_steps %d.", step,
                   last_step)

  def _report(self, outfeed, start, end, elapsed, batch_size, last_step,
              writer) -> None:
    losses = outfeed[cpu_loop.LOSS]
    steps = end - start
    rate = steps / elapsed if elapsed > 0 else float("inf")
    logging.info("step %d: loss = %.6g (%.1f steps/sec, %.1f examples/sec)",
                 end, losses[-1], rate, rate * batch_size)
    every = self._config.save_summary_steps
    for offset, step in enumerate(range(start + 1, end + 1)):
      if step % every and step != last_step:
        continue
      writer.add_summary(tf.compat.v1.Summary(value=[
          tf.compat.v1.Summary.Value(tag="loss",
                                     simple_value=losses[offset])]), step)

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
      input_fn: `input_fn(params) -> Dataset` of (features, labels).
      steps: eval steps; None runs until the input ends.
      checkpoint_path: the checkpoint; default: the latest in `model_dir`.
      name: eval name: events go to `model_dir/eval_<name>` (or `/eval`).
      hooks: more `SessionRunHook`s.

    Raises:
      ValueError: no checkpoint, bad `steps`, a contract violation, or an
        eval directory that cannot be written (checked before evaluating).
    """
    if steps is not None:
      _validation.positive_int("steps", steps)
    if name is not None:
      _validation.non_empty_str("name", name)
    batch_size = self._batch_size("eval")
    eval_dir = checkpoints.join(self._config.model_dir,
                                f"eval_{name}" if name else "eval")
    params = self._params_for(batch_size)

    def prepare():
      # Before any work, so as not to evaluate and then fail to write.
      checkpoints.prepare_model_dir(
          eval_dir, label=f"The eval directory {eval_dir!r} (under "
          f"`model_dir`, where evaluate writes its results)")

    with self._restored(
        lambda: self._device.build_eval(self._model_fn, input_fn, params,
                                        steps),
        checkpoint_path, hooks, prepare) as (loop, session, checkpoint):
      ran = 0
      try:
        for count, results, _ in self._run_loops(loop, session, steps):
          _run_host_call(loop, results, count)
          ran += count
      finally:
        loop.infeed.stop()
      metrics, step = session.run(
          (loop.metrics, tf.compat.v1.train.get_global_step()))
      if ran == 0:
        raise ValueError("`input_fn` gave no complete eval step (each step "
                         f"needs {self._device.num_shards} batches of "
                         f"{batch_size // self._device.num_shards}).")
      writer = tf.compat.v1.summary.FileWriterCache.get(eval_dir)
      writer.add_summary(tf.compat.v1.Summary(value=[
          tf.compat.v1.Summary.Value(tag=key, simple_value=float(value))
          for key, value in metrics.items() if np.ndim(value) == 0]),
                         int(step))
      writer.flush()
    results = {key: _python_value(value) for key, value in metrics.items()}
    results["global_step"] = int(step)
    logging.info("Eval of %s over %d steps: %s", checkpoint, ran, results)
    return results

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

    Raises:
      ValueError: no checkpoint, or a contract violation.
    """
    params = self._params_for(self._batch_size("predict"))
    with self._restored(
        lambda: self._device.build_predict(self._model_fn, input_fn, params),
        checkpoint_path, hooks) as (loop, session, _):
      try:
        for _, results, _ in self._run_loops(loop, session, None):
          rows = host_loop.prediction_rows(results["outfeed"])
          if yield_single_examples:
            yield from rows
          else:
            yield from host_loop.batches(rows, results["outfeed"])
      finally:
        loop.infeed.stop()

  # Shared.

  def _run_loops(self, loop: BuiltLoop, session, steps: Optional[int],
                 stop: Callable[[], bool] = lambda: False):
    return host_loop.run_loops(loop, session, steps,
                               self._config.iterations_per_loop, self._clock,
                               stop)

  def _batch_size(self, mode: str) -> int:
    value = self._batch_sizes[mode]
    if value is None:
      raise ValueError(f"`{mode}_batch_size` was not given to the Runner; "
                       f"it is needed to {mode}.")
    return value

  def _session_config(self) -> tf.compat.v1.ConfigProto:
    """The device loop's session config with `config.session_config`
    merged in; the loop's device counts win."""
    device = self._device.session_config()
    if self._config.session_config is None:
      return device
    merged = tf.compat.v1.ConfigProto()
    merged.CopyFrom(self._config.session_config)
    merged.MergeFrom(device)
    for name, count in device.device_count.items():
      merged.device_count[name] = count
    return merged

  def _params_for(self, global_batch_size: int) -> Dict[str, Any]:
    return dict(self._params,
                batch_size=global_batch_size // self._device.num_shards)

  def _checkpoint_to_use(self, checkpoint_path: Optional[str]) -> str:
    if checkpoint_path is not None:
      _paths.check_no_glob_characters(
          "checkpoint_path",
          _validation.non_empty_path("checkpoint_path", checkpoint_path))
      if not tf.io.gfile.exists(checkpoint_path + ".index"):
        raise ValueError(f"`checkpoint_path` ({checkpoint_path!r}) is not a "
                         f"checkpoint: {checkpoint_path}.index does not "
                         f"exist.")
      return checkpoint_path
    latest = self.latest_checkpoint()
    if latest is None:
      raise ValueError(f"No checkpoint that reads back in `model_dir` "
                       f"({self._config.model_dir!r}); train first or pass "
                       f"`checkpoint_path`.")
    return latest

  def _restored(self, build: Callable[[], BuiltLoop],
                checkpoint_path: Optional[str], hooks,
                prepare: Callable[[], None] = lambda: None):
    """`restore.restored` on `checkpoint_path`, or on the newest checkpoint
    of the run in `model_dir`."""
    return restore.restored(
        build, lambda: self._checkpoint_to_use(checkpoint_path),
        fixed=checkpoint_path is not None, master=self._config.master,
        session_config=self._session_config(), hooks=hooks,
        prepare=prepare)


# A save interval no run reaches.
_NEVER = 2**62


def _run_host_call(loop: BuiltLoop, results, count: int) -> None:
  """Runs the loop's host_call for each of its `count` steps."""
  if loop.host_call is not None:
    loop.host_call.run(results["outfeed"], count)


def _python_value(value: Any) -> Any:
  return value.item() if isinstance(value, np.generic) or (
      isinstance(value, np.ndarray) and value.ndim == 0) else value


def _signature(fn: Callable) -> str:
  try:
    return str(inspect.signature(fn))
  except (TypeError, ValueError):
    return "unknown"

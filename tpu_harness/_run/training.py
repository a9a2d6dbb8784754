"""One training session: the loop, the hooks around it, the checkpoints.

Per training loop (one `Session.run` of up to `iterations_per_loop` steps)::

  infeed.request(k)            # host thread moves k steps of input
  n = infeed.wait()            # steps actually available (input may end)
  infeed.request(next k)       # so the host fills while the device runs
  hooks.before_run             # every hook, steps_per_run = iterations_per_loop
  session.run(loop, iterations=n)   # n steps on the device, outfeed back
  hooks.after_run              # saves, step counting, stop at max_steps
  log: step, loss, steps/sec, examples/sec; write loss (and model_fn's
  summaries, at a loop that reaches a multiple of save_summary_steps or
  the last step); run host_call

The last loop is shortened so training stops exactly at `max_steps`.
`tpu_harness.Runner.train` checks the arguments, claims the lease on
`model_dir` and finds where to resume; this module builds the graph,
settles the lease (its read-back waited for while the graph was built) and
runs the session.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, List, Optional, Sequence

from absl import logging
import tensorflow as tf

import hooks as hooks_lib
from hooks import paths
from tpu_harness import errors
from tpu_harness import spec as spec_lib
from tpu_harness._infeed import background_start
from tpu_harness._infeed import position as input_position
from tpu_harness._infeed.protocol import InfeedHook
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from tpu_harness._model_dir import storage
from tpu_harness._model_dir.lease import LeaseHook
from tpu_harness._model_dir.lease import ModelDirLease
from tpu_harness._run import host_loop
from tpu_harness._run import restore
from tpu_harness._run.job import Job
from tpu_harness._run.nan_loss import NanLossHook
from tpu_harness._run.preemption import PreemptionWatcher
from tpu_harness.config import RunConfig
from tpu_harness.loops import device_loop
from tpu_harness.loops import summaries
from tpu_harness.loops.device_loop import BuiltLoop
from tpu_harness.loops.device_loop import LOSS

# A save interval no run reaches.
_NEVER = 2**62


@dataclasses.dataclass(frozen=True)
class TrainRequest:
  """One `train()` call's session: its input, where it resumes and stops.

  Attributes:
    input_fn: the training `input_fn`.
    resume: the checkpoint it resumes from (`resume.checkpoint` None: a
      fresh start).
    last_step: the global step it stops at.
    batch_size: global examples per step.
    hooks: the caller's SessionRunHooks.
    listeners: the caller's CheckpointSaverListeners.
    lease: the lease on `model_dir`, claimed; `train` settles it before
      its first write there.
    restore_input_state: whether the iterator state of the input position
      saved in `resume.checkpoint` is restored (False after reading right
      after restoring it failed: its steps are read and dropped instead).
  """
  input_fn: Callable[..., Any]
  resume: restore_order.ResumePoint
  last_step: int
  batch_size: int
  hooks: Sequence[tf.compat.v1.train.SessionRunHook]
  listeners: Sequence[Any]
  lease: ModelDirLease
  restore_input_state: bool = True


def train(job: Job, request: TrainRequest) -> bool:
  """Trains from `request.resume` to `request.last_step` in one session;
  returns whether a SIGTERM/SIGINT stopped it (with a checkpoint saved).

  Raises:
    CheckpointRestoreError: `request.resume.checkpoint` does not read back
      (raised before any step; the caller falls back to an older one).
    Exception: what `tpu_harness.Runner.train` documents.
  """
  config = job.config
  with tf.Graph().as_default():
    loop, position, saved = _build_graph(job, request)
    # The infeed starts beside the other hooks' after_create_session (the
    # first checkpoint's save waits for it where it saves the position).
    loop = dataclasses.replace(loop, infeed=background_start.BackgroundStart(
        loop.infeed, first_request=_first_loop(job, request)))
    scaffold, saver, listeners = _saver_and_listeners(job, loop, position,
                                                      saved, request)
    saver_hook = _saver_hook(config, saver, listeners, request.lease)
    preemption = PreemptionWatcher()
    loop_secs = _LongestLoop()
    if position is not None:
      # A save is decided after a loop; its fill was asked for before the
      # loop ran, at most (twice) the longest loop earlier.
      position.expect_saves(lambda step: (
          step >= request.last_step or preemption.requested
          or saver_hook.due(step, time.monotonic() + 2 * loop_secs.longest)))
    all_hooks = _hooks(job, loop, saver_hook, request)
    creator = restore.CheckedRestore(
        request.resume.checkpoint, scaffold=scaffold,
        master=config.session_target, config=job.session_config,
        tpu=config.tpu, reset_pod=True)
    # The first write into model_dir: the lease claimed before the graph
    # was built is settled now (a no-op on a retry).
    request.lease.settle()
    events_before = _events_files(config.model_dir)
    # The saver hook writes the graph that runs into the events file.
    writer = storage.events_writer(config.model_dir, config.model_dir,
                                   with_graph=False)
    started = removed = False
    logging.info("Training from step %d to %d, %d steps per loop, on %s.",
                 request.resume.step, request.last_step,
                 config.iterations_per_loop,
                 config.session_target or "this process")
    try:
      with preemption:
        with tf.compat.v1.train.MonitoredSession(
            session_creator=creator, hooks=all_hooks) as session:
          started = True
          try:
            _train_loops(job, session, loop, request, writer, preemption,
                         loop_secs)
          finally:
            loop.infeed.stop()
    except BaseException:
      # The session ended without the hooks' end(): finish a checkpoint
      # write in flight rather than abandon it.
      saver_hook.finish_pending_save()
      if not started and not request.lease.lost:
        _remove_new_events_files(config.model_dir, events_before)
        removed = True  # And the writer closed.
      raise
    finally:
      # Not into another trainer's model_dir.
      if not request.lease.lost and not removed:
        writer.flush()
    if preemption.requested:
      logging.warning("Stopped by %s at step %s with a checkpoint saved "
                      "(%s); training resumes from it when run again.",
                      preemption.signal_name,
                      contents.checkpoint_step(saver_hook.latest_saved),
                      saver_hook.latest_saved)
    return preemption.requested


def _build_graph(job: Job, request: TrainRequest) -> tuple:
  """In the default graph: the global step, the training loop, and the
  model's starting point (the checkpoint checked to fit, or a warm
  start). Returns (the loop, the input position or None, what the
  checkpoint holds or None)."""
  config, resume = job.config, request.resume
  if config.tf_random_seed is not None:
    tf.compat.v1.set_random_seed(config.tf_random_seed)
  with tf.device(job.device.variable_device):
    spec_lib.create_global_step()
  position = _input_position(config.resume_input, resume,
                             request.restore_input_state)
  loop = job.device.build_train(job.model_fn, request.input_fn, job.params,
                                skip_steps=0,
                                max_steps=request.last_step - resume.step,
                                position=position)
  saved = None
  if resume.checkpoint is not None:
    saved = restore_order.check_matches(resume.checkpoint,
                                        tf.compat.v1.global_variables())
  elif config.warm_start_from:
    logging.info("Warm-starting trainable variables from %s.",
                 config.warm_start_from)
    tf.compat.v1.train.warm_start(config.warm_start_from)
  return loop, position, saved


def _saver_and_listeners(job: Job, loop: BuiltLoop, position,
                         saved: Optional[restore_order.SavedVariables],
                         request: TrainRequest) -> tuple:
  """(the session's Scaffold, the Saver the saver hook saves with, its
  listeners). The hook's saver saves the input position too; it restores
  the model as well where the checkpoint restored holds a position this
  graph's variables fit (or there is none), else the scaffold has a Saver
  of the model alone (a checkpoint without a position still restores)."""
  config = job.config

  def model_saver():
    return tf.compat.v1.train.Saver(
        max_to_keep=config.keep_checkpoint_max,
        keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
        save_relative_paths=True)

  def position_saver():
    return tf.compat.v1.train.Saver(
        var_list=(tf.compat.v1.global_variables() + tf.compat.v1
                  .get_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS)
                  + position.variables),
        max_to_keep=config.keep_checkpoint_max,
        keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
        save_relative_paths=True)

  # One Saver where it can both restore and save: each one built costs ops
  # for every variable.
  one_saver = position is not None and (
      saved is None or saved.fits(position.variables))
  scaffold, users_saver = restore.scaffold_for(
      loop.spec, position_saver if one_saver else model_saver)
  saver = scaffold.saver
  listeners = list(request.listeners or [])
  if position is not None:
    if users_saver:
      position.disable("`scaffold_fn` gave a Saver, which saves what it "
                       "was built for")
    elif not one_saver:
      saver = position_saver()
    # The Saver restoring the model restores the position's variables too.
    position.variables_restored = one_saver and saved is not None
    listener = position.listener()
    listeners.append(background_start.after_start(
        listener, loop.infeed, needs_start=listener.needs_start))
  # Rotation (keep_checkpoint_max) covers the run's own checkpoints of
  # earlier runs, and a lowered maximum applies at once.
  kept = contents.enforce_keep_max(config.model_dir, request.resume.recent,
                                  config.keep_checkpoint_max,
                                  config.keep_checkpoint_every_n_hours)
  # What Saver.recover_last_checkpoints does, without its deprecated
  # helper (a warning in every resumed run's log) and its glob per
  # checkpoint: each one's time is its index's.
  saver.set_last_checkpoints_with_time([
      (path, stat.mtime_nsec / 1e9) for path in kept
      for stat in [storage.stat_or_none(path + ".index")]
      if stat is not None])
  return scaffold, saver, listeners


def _saver_hook(config: RunConfig, saver, listeners, lease: ModelDirLease
                ) -> hooks_lib.CheckpointSaverHook:
  periodic = (config.save_checkpoints_steps is not None
              or config.save_checkpoints_secs is not None)
  return hooks_lib.CheckpointSaverHook(
      config.model_dir,
      # No periodic saves: only the one at the start and the last.
      save_steps=config.save_checkpoints_steps if periodic else _NEVER,
      save_secs=config.save_checkpoints_secs, saver=saver,
      listeners=listeners, steps_per_run=config.iterations_per_loop,
      save_graph_def=config.save_graph_def,
      async_save=config.async_checkpoints,
      check_finite=config.stop_on_nan_loss, write_guard=lease.confirm)


def _hooks(job: Job, loop: BuiltLoop,
           saver_hook: hooks_lib.CheckpointSaverHook,
           request: TrainRequest) -> List[tf.compat.v1.train.SessionRunHook]:
  """The session's hooks, in order: the lease's (before any other writes),
  the loop's, the infeed's (it starts the infeed on a thread of its own:
  the hooks after it start meanwhile), the NaN guard, stop, step counter,
  the model's, the caller's, the saver last."""
  config = job.config
  ipl = config.iterations_per_loop

  def newest_checkpoint():  # Once the loss is NaN: nothing more to save.
    saver_hook.finish_pending_save()
    return saver_hook.latest_saved

  guards = ([NanLossHook(loop.fetches["outfeed"][LOSS], newest_checkpoint)]
            if config.stop_on_nan_loss else [])
  return [LeaseHook(request.lease)] + list(loop.hooks) + [
      InfeedHook(loop.infeed)
  ] + guards + [
      hooks_lib.StopAtStepHook(last_step=request.last_step,
                               steps_per_run=ipl),
      hooks_lib.StepCounterHook(
          every_n_steps=config.log_step_count_steps,
          output_dir=config.model_dir, steps_per_run=ipl,
          batch_size=request.batch_size),
  ] + list(loop.spec.training_hooks) + list(request.hooks) + [saver_hook]


def _input_position(mode: str, resume: restore_order.ResumePoint,
                    restore_state: bool = True
                    ) -> Optional[input_position.InputPosition]:
  """The InputPosition to save and restore for `RunConfig.resume_input`
  `mode`; None for `restart`."""
  if mode == input_position.RESTART:
    if resume.step:
      logging.info("resume_input='restart': the input starts again from "
                   "its first element at step %d.", resume.step)
    return None
  return input_position.InputPosition(mode, resume.checkpoint, resume.step,
                                      restore_state=restore_state)


def _first_loop(job: Job, request: TrainRequest) -> int:
  """The first loop's steps, requested from the infeed as the session
  starts: its input is read while the first checkpoint is saved."""
  return max(0, min(job.config.iterations_per_loop,
                    request.last_step - request.resume.step))


class _LongestLoop:
  """The longest loop so far, in seconds."""

  def __init__(self):
    self.longest = 0.0

  def add(self, secs: float) -> None:
    self.longest = max(self.longest, secs)


def _train_loops(job: Job, session, loop: BuiltLoop, request: TrainRequest,
                 writer, preemption, loop_secs: _LongestLoop) -> None:
  step, last_step = request.resume.step, request.last_step
  batch_size, lease = request.batch_size, request.lease

  def stop():
    return session.should_stop() or preemption.requested or lease.lost

  every = job.config.save_summary_steps
  start = step

  def summary_feed(done: int, count: int):
    first, last = start + done + 1, start + done + count
    if loop.summaries is None or not summaries.due(first, last, every,
                                                   last_step):
      return None
    return loop.summaries.feed()

  for count, results, elapsed in host_loop.run_loops(
      loop, session, last_step - step, job.config.iterations_per_loop,
      job.clock, stop, first_requested=_first_loop(job, request) > 0,
      feed=summary_feed):
    loop_secs.add(elapsed)
    end_step = int(results["end_step"])
    if end_step - step != count:
      replicas = job.device.num_shards
      raise RuntimeError(
          f"The global step went from {step} to {end_step} in a loop of "
          f"{count} steps: `model_fn`'s train_op must advance it by exactly "
          f"one per step (pass global_step=tf.compat.v1.train."
          f"get_global_step() to the optimizer's minimize)."
          + (f" With {replicas} replicas, an increment of the global step "
             f"in `model_fn` itself (tf.compat.v1.assign_add) runs once per "
             f"replica; only the optimizer's advances it once per step."
             if replicas > 1 and end_step - step == count * replicas
             else ""))
    _report(job.config, results["outfeed"], step, end_step, elapsed,
            batch_size, last_step, writer, first_loop=step == start)
    # Values of batches of no fixed size come back padded: trimmed.
    host_loop.run_host_call(
        loop, device_loop.trimmed(results["outfeed"], count), count)
    step = end_step
  lease.confirm()
  if step < last_step and not stop():
    logging.info("Input ended at step %d, before max_steps %d.", step,
                 last_step)


def _report(config: RunConfig, outfeed, start, end, elapsed, batch_size,
            last_step, writer, first_loop: bool) -> None:
  """The progress line (at the call's first loop, then where a loop
  reaches a multiple of log_step_count_steps, and at its last step;
  TPUEstimator logged the loss at its first run and then every
  ceil(log_step_count_steps / iterations_per_loop) loops), the loss
  summary every save_summary_steps, and `model_fn`'s summaries where the
  loop computed them (its last step). Where those have a `loss` of their
  own, ours is not written at that step (Estimator's rule: no second
  `loss`)."""
  losses = outfeed[LOSS]
  if first_loop or summaries.due(start + 1, end, config.log_step_count_steps,
                                 last_step):
    rate = (end - start) / elapsed if elapsed > 0 else float("inf")
    logging.info("step %d: loss = %.6g (%.1f steps/sec, %.1f examples/sec)",
                 end, losses[-1], rate, rate * batch_size)
  made = outfeed.get(summaries.SUMMARY)
  made = made[-1] if made is not None and len(made) and made[-1] else None
  own_loss = made is not None and "loss" in summaries.tags(made)
  every = config.save_summary_steps
  for offset, step in enumerate(range(start + 1, end + 1)):
    if (not summaries.due(step, step, every, last_step)
        or (own_loss and step == end)):
      continue
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag="loss",
                                   simple_value=losses[offset])]), step)
  if made is not None:
    writer.add_summary(made, end)


def _events_files(model_dir: str) -> set:
  return {name for name in storage.list_names(model_dir)
          if name.startswith("events.out.tfevents.")}


def _remove_new_events_files(model_dir: str, before: set) -> None:
  """After a start-up that failed before any step: removes the events files
  it created (the graph's events, a megabyte or more: a job restarted in a
  loop on a full disk would pile them up; the next start writes them
  again)."""
  try:
    tf.compat.v1.summary.FileWriterCache.clear()  # Closes them.
    for name in sorted(_events_files(model_dir) - before):
      logging.info("Removing %s, written by this failed start.", name)
      tf.io.gfile.remove(paths.join(model_dir, name))
  except (tf.errors.OpError, errors.StorageError) as error:
    logging.warning("Could not remove this failed start's events files: %s",
                    storage.first_line(error))

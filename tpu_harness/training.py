"""One training session: the loop, the hooks around it, the checkpoints.

Per training loop (one `Session.run` of up to `iterations_per_loop` steps)::

  infeed.request(k)            # host thread moves k steps of input
  n = infeed.wait()            # steps actually available (input may end)
  infeed.request(next k)       # so the host fills while the device runs
  hooks.before_run             # every hook, steps_per_run = iterations_per_loop
  session.run(loop, iterations=n)   # n steps on the device, outfeed back
  hooks.after_run              # saves, step counting, stop at max_steps
  log: step, loss, steps/sec, examples/sec; write loss; run host_call

The last loop is shortened so training stops exactly at `max_steps`.
`tpu_harness.Runner.train` checks the arguments, takes the lease on
`model_dir` and finds where to resume; this module runs the session.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import tensorflow as tf

import hooks as hooks_lib
from tpu_harness import checkpoints
from tpu_harness.device_loop import LOSS
from tpu_harness import host_loop
from tpu_harness import input_position
from tpu_harness import restore
from tpu_harness import spec as spec_lib
from tpu_harness.config import RunConfig
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.infeed import InfeedHook
from tpu_harness.lease import ModelDirLease
from tpu_harness.nan_loss import NanLossHook
from tpu_harness.preemption import PreemptionWatcher

# A save interval no run reaches.
_NEVER = 2**62


@dataclasses.dataclass(frozen=True)
class Job:
  """What a Runner trains with."""
  model_fn: Callable[..., Any]
  config: RunConfig
  device: DeviceLoop
  params: Dict[str, Any]
  session_config: tf.compat.v1.ConfigProto
  clock: Callable[[], float]


def train(job: Job, input_fn, resume: checkpoints.ResumePoint, last_step: int,
          batch_size: int, user_hooks, saving_listeners,
          lease: ModelDirLease) -> bool:
  """Trains from `resume` to `last_step` in one session; returns whether a
  SIGTERM/SIGINT stopped it (with a checkpoint saved).

  Raises:
    CheckpointRestoreError: `resume.checkpoint` does not read back (raised
      before any step; the caller falls back to an older one).
    Exception: what `tpu_harness.Runner.train` documents.
  """
  config = job.config
  start_step = resume.step
  with tf.Graph().as_default():
    if config.tf_random_seed is not None:
      tf.compat.v1.set_random_seed(config.tf_random_seed)
    with tf.device(job.device.variable_device):
      spec_lib.create_global_step()
    position = _input_position(config.resume_input, resume)
    loop = job.device.build_train(job.model_fn, input_fn, job.params,
                                  skip_steps=0,
                                  max_steps=last_step - start_step,
                                  position=position)
    if resume.checkpoint is not None:
      checkpoints.check_matches(resume.checkpoint,
                                tf.compat.v1.global_variables())
    elif config.warm_start_from:
      logging.info("Warm-starting trainable variables from %s.",
                   config.warm_start_from)
      tf.compat.v1.train.warm_start(config.warm_start_from)
    scaffold, users_saver = restore.scaffold_for(loop.spec, lambda: (
        tf.compat.v1.train.Saver(max_to_keep=config.keep_checkpoint_max,
                                 save_relative_paths=True)))
    # The scaffold's saver restores the model; the saver hook's saves the
    # input position too (a checkpoint without one still restores).
    saver = scaffold.saver
    listeners = list(saving_listeners or [])
    if position is not None:
      if users_saver:
        position.disable("`scaffold_fn` gave a Saver, which saves what it "
                         "was built for")
      else:
        saver = tf.compat.v1.train.Saver(
            var_list=(tf.compat.v1.global_variables() + tf.compat.v1
                      .get_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS)
                      + position.variables),
            max_to_keep=config.keep_checkpoint_max, save_relative_paths=True)
      listeners.append(position.listener())
    # Rotation (keep_checkpoint_max) covers the run's own checkpoints of
    # earlier runs, and a lowered maximum applies at once.
    saver.recover_last_checkpoints(checkpoints.enforce_keep_max(
        config.model_dir, resume.recent, config.keep_checkpoint_max))
    ipl = config.iterations_per_loop
    periodic = (config.save_checkpoints_steps is not None
                or config.save_checkpoints_secs is not None)
    saver_hook = hooks_lib.CheckpointSaverHook(
        config.model_dir,
        # No periodic saves: only the one at the start and the last.
        save_steps=(config.save_checkpoints_steps if periodic
                    else _NEVER),
        save_secs=config.save_checkpoints_secs, saver=saver,
        listeners=listeners, steps_per_run=ipl,
        save_graph_def=config.save_graph_def,
        async_save=config.async_checkpoints,
        check_finite=config.stop_on_nan_loss)
    preemption = PreemptionWatcher()
    loop_secs = _LongestLoop()
    if position is not None:
      # A save is decided after a loop; its fill was asked for before the
      # loop ran, at most (twice) the longest loop earlier.
      position.expect_saves(lambda step: (
          step >= last_step or preemption.requested
          or saver_hook.due(step, time.monotonic() + 2 * loop_secs.longest)))

    def newest_checkpoint():  # Once the loss is NaN: nothing more to save.
      saver_hook.finish_pending_save()
      return saver_hook.latest_saved

    guards = ([NanLossHook(loop.fetches["outfeed"][LOSS],
                           newest_checkpoint)]
              if config.stop_on_nan_loss else [])
    all_hooks = list(loop.hooks) + [InfeedHook(loop.infeed)] + guards + [
        hooks_lib.StopAtStepHook(last_step=last_step, steps_per_run=ipl),
        hooks_lib.StepCounterHook(
            every_n_steps=config.log_step_count_steps,
            output_dir=config.model_dir, steps_per_run=ipl,
            batch_size=batch_size),
    ] + list(loop.spec.training_hooks) + user_hooks + [saver_hook]
    creator = restore.CheckedRestore(
        resume.checkpoint, scaffold=scaffold, master=config.session_target,
        config=job.session_config, hosts=config.tpu.hosts,
        host_wait_secs=config.tpu.host_wait_secs)
    writer = tf.compat.v1.summary.FileWriterCache.get(config.model_dir)
    logging.info("Training from step %d to %d, %d steps per loop, on %s.",
                 start_step, last_step, ipl,
                 config.session_target or "this process")
    try:
      with preemption:
        with tf.compat.v1.train.MonitoredSession(
            session_creator=creator, hooks=all_hooks) as session:
          try:
            _train_loops(job, session, loop, start_step, last_step,
                         batch_size, writer, preemption, lease, loop_secs)
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
      logging.warning("Stopped by %s at step %s with a checkpoint saved "
                      "(%s); training resumes from it when run again.",
                      preemption.signal_name,
                      checkpoints.checkpoint_step(saver_hook.latest_saved),
                      saver_hook.latest_saved)
    return preemption.requested


def _input_position(mode: str, resume: checkpoints.ResumePoint
                    ) -> Optional[input_position.InputPosition]:
  """The InputPosition to save and restore for `RunConfig.resume_input`
  `mode`; None for `restart`."""
  if mode == input_position.RESTART:
    if resume.step:
      logging.info("resume_input='restart': the input starts again from "
                   "its first element at step %d.", resume.step)
    return None
  return input_position.InputPosition(mode, resume.checkpoint, resume.step)


class _LongestLoop:
  """The longest loop so far, in seconds."""

  def __init__(self):
    self.longest = 0.0

  def add(self, secs: float) -> None:
    self.longest = max(self.longest, secs)


def _train_loops(job: Job, session, loop: BuiltLoop, step: int,
                 last_step: int, batch_size: int, writer, preemption,
                 lease: ModelDirLease, loop_secs: _LongestLoop) -> None:
  def stop():
    return session.should_stop() or preemption.requested or lease.lost

  for count, results, elapsed in host_loop.run_loops(
      loop, session, last_step - step, job.config.iterations_per_loop,
      job.clock, stop):
    loop_secs.add(elapsed)
    end_step = int(results["end_step"])
    if end_step - step != count:
      raise RuntimeError(
          f"The global step went from {step} to {end_step} in a loop of "
          f"{count} steps: `model_fn`'s train_op must advance it by exactly "
          f"one per step (pass global_step=tf.compat.v1.train."
          f"get_global_step() to the optimizer's minimize).")
    _report(job.config, results["outfeed"], step, end_step, elapsed,
            batch_size, last_step, writer)
    host_loop.run_host_call(loop, results, count)
    step = end_step
  lease.check()
  if step < last_step and not stop():
    logging.info("Input ended at step %d, before max_steps %d.", step,
                 last_step)


def _report(config: RunConfig, outfeed, start, end, elapsed, batch_size,
            last_step, writer) -> None:
  """The progress line, and the loss summary every save_summary_steps."""
  losses = outfeed[LOSS]
  steps = end - start
  rate = steps / elapsed if elapsed > 0 else float("inf")
  logging.info("step %d: loss = %.6g (%.1f steps/sec, %.1f examples/sec)",
               end, losses[-1], rate, rate * batch_size)
  every = config.save_summary_steps
  for offset, step in enumerate(range(start + 1, end + 1)):
    if step % every and step != last_step:
      continue
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag="loss",
                                   simple_value=losses[offset])]), step)

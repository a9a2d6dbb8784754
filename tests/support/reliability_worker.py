"""A training process for the preemption and kill tests (run as a script).

Trains the linear model of runner_models plus an 8 MB "ballast" variable, so
that saves take long enough to be interrupted, with deterministic input.

  python tests/support/reliability_worker.py MODEL_DIR MAX_STEPS [--markers DIR]
      [--hold_in_end] [--async_checkpoints] [--nan_at STEP]
      [--keep_checkpoint_max N] [--resume_input MODE]
      [--lease_secs HEARTBEAT,STALE] [--pause_at STEP]

With --markers, a listener writes DIR/began (at begin), DIR/end (in end(),
with the step) and, with --hold_in_end, DIR/in_end, and then waits in end()
until DIR/release appears (at most 60 s).
With --pause_at (and --markers), a hook run before the saver's writes
DIR/paused once the global step reaches STEP, then waits until DIR/go
appears (at most 120 s): a test stops the process there. --lease_secs sets
the lease's heartbeat and staleness (all trainers on one model_dir must
agree). With --nan_at, the loss becomes NaN from that step on. The input is
shuffled with a fixed seed: a resumed run that feeds other batches than an
uninterrupted one ends with other weights.
Prints "FINAL_STEP=N PREEMPTED=B" when train returns.
"""

import argparse
import os
import sys
import threading
import time

# Run as a script: `support` is a package of tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import tensorflow as tf  # pylint: disable=g-import-not-at-top

import hooks  # pylint: disable=g-import-not-at-top
import tpu_harness as th  # pylint: disable=g-import-not-at-top
from tpu_harness._model_dir import contents  # pylint: disable=g-import-not-at-top
from tpu_harness._model_dir import lease as lease_lib  # pylint: disable=g-import-not-at-top
from support.runner_models import linear_model_fn  # pylint: disable=g-import-not-at-top
from support.runner_models import data  # pylint: disable=g-import-not-at-top

BALLAST = 2_000_000  # floats: 8 MB per checkpoint.


def model_fn(features, labels, mode, params):
  ballast = tf.compat.v1.get_variable("ballast", [BALLAST],
                                      initializer=tf.zeros_initializer())
  spec = linear_model_fn(features, labels, mode, params)
  if mode != th.ModeKeys.TRAIN:
    return spec
  extra = 1e-3 * tf.reduce_mean(tf.square(ballast - 1.0))
  if params.get("nan_at") is not None:
    step = tf.compat.v1.train.get_global_step().read_value()
    extra += tf.where(step + 1 >= params["nan_at"], float("nan"), 0.0)
  ballast_step = tf.compat.v1.train.GradientDescentOptimizer(0.5).minimize(
      extra, var_list=[ballast])
  return th.ModelSpec(mode=mode, loss=spec.loss + extra,
                      train_op=tf.group(spec.train_op, ballast_step))


def train_input_fn():
  x, y = data()

  def input_fn(params):
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    return dataset.shuffle(64, seed=5).batch(params["batch_size"],
                                             drop_remainder=True)

  return input_fn


class MarkerListener(hooks.CheckpointSaverListener):

  def __init__(self, directory, hold_in_end):
    self._dir = directory
    self._hold = hold_in_end

  def _write(self, name, text=""):
    with open(os.path.join(self._dir, name), "w") as f:
      f.write(text)

  def begin(self):
    self._write("began", str(os.getpid()))

  def end(self, session, global_step_value):
    self._write("end", str(global_step_value))
    if self._hold:
      self._write("in_end")
      deadline = time.monotonic() + 60
      while (not os.path.exists(os.path.join(self._dir, "release"))
             and time.monotonic() < deadline):
        time.sleep(0.01)


class PauseHook(tf.compat.v1.train.SessionRunHook):
  """Writes DIR/paused once the step reaches `at`, then waits for DIR/go."""

  def __init__(self, directory, at):
    self._dir = directory
    self._at = at
    self._done = False

  def begin(self):
    self._step = tf.compat.v1.train.get_global_step()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._step)

  def after_run(self, run_context, run_values):
    step = run_context.session.run(self._step)
    if self._done or step < self._at:
      return
    self._done = True
    # No write in flight either (async saves): the stop is between writes.
    while any(thread.name.startswith("ckpt-write-")
              for thread in threading.enumerate()):
      time.sleep(0.001)
    with open(os.path.join(self._dir, "paused"), "w") as f:
      f.write(str(step))
    deadline = time.monotonic() + 120
    while (not os.path.exists(os.path.join(self._dir, "go"))
           and time.monotonic() < deadline):
      time.sleep(0.001)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("model_dir")
  parser.add_argument("max_steps", type=int)
  parser.add_argument("--markers")
  parser.add_argument("--hold_in_end", action="store_true")
  parser.add_argument("--iterations_per_loop", type=int, default=2)
  parser.add_argument("--async_checkpoints", action="store_true")
  parser.add_argument("--nan_at", type=int)
  parser.add_argument("--keep_checkpoint_max", type=int, default=3)
  parser.add_argument("--resume_input", default="exact")
  parser.add_argument("--lease_secs")
  parser.add_argument("--pause_at", type=int)
  args = parser.parse_args()
  if args.lease_secs:
    lease_lib.HEARTBEAT_SECS, lease_lib.STALE_SECS = map(
        float, args.lease_secs.split(","))
  listeners = ([MarkerListener(args.markers, args.hold_in_end)]
               if args.markers else [])
  hooks_ = ([PauseHook(args.markers, args.pause_at)]
            if args.pause_at is not None else [])
  runner = th.Runner(
      model_fn,
      th.RunConfig(args.model_dir,
                   iterations_per_loop=args.iterations_per_loop,
                   save_checkpoints_steps=2,
                   keep_checkpoint_max=args.keep_checkpoint_max,
                   log_step_count_steps=1000, save_summary_steps=1000,
                   async_checkpoints=args.async_checkpoints,
                   resume_input=args.resume_input),
      params={"lr": 0.05, "nan_at": args.nan_at}, train_batch_size=8)
  runner.train(train_input_fn(), max_steps=args.max_steps,
               saving_listeners=listeners, hooks=hooks_)
  step = contents.checkpoint_step(runner.latest_checkpoint())
  print(f"FINAL_STEP={step} PREEMPTED={runner.preempted}", flush=True)


if __name__ == "__main__":
  sys.exit(main())

"""Training-loop speed: the runner against a raw loop, Keras and MonitoredSession.

The same model (an MLP, 64 -> 256 -> 10, Adam or SGD), the same synthetic data
(batches of 128) and the same number of steps for every variant:

  raw        all steps in ONE Session.run of a tf.while_loop reading the
             dataset inside the loop, no hooks: the limit.
  runner/N   tpu_harness.Runner with its default hooks (checkpoints every
             1000 steps, step counter, loss summaries), iterations_per_loop=N.
  keras/N    Keras model.fit(steps_per_execution=N).
  mts        tf.compat.v1.train.MonitoredTrainingSession, one step per
             Session.run, with its default TF hooks.

Rates are steady state: graph building, session start and the first run
(which builds the executor) are excluded, measured by a hook (graph mode),
an untimed first run (raw) or an untimed first fit (Keras), while per-loop
work (hooks, input, saves) is included. Each variant runs --repeats times,
in alternating order; the table shows the median rate, and for the ratios
the targets are about, the median (and range) of each repeat's ratio, whose
two sides run next to each other. Absolute numbers are noise on shared
machines; the ratios, measured in one run, are the result.

    python -m scripts.bench.loop [--steps=4000] [--repeats=7] [--optimizer=sgd]

The optimizer is the same algorithm everywhere but not the same kernels:
graph mode uses tf.compat.v1.train's (Adam: one fused ResourceApplyAdam per
variable), Keras its own (element-wise ops). `--optimizer=sgd`, one update
op per variable on both sides, separates the loop's cost from the kernels'.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Callable, Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import hooks  # pylint: disable=g-import-not-at-top
import tpu_harness as th  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 4000, "Training steps per timed run.",
                     lower_bound=10)
flags.DEFINE_integer("repeats", 7, "Timed runs per variant.", lower_bound=1)
flags.DEFINE_list("loops", ["1", "10", "100", "1000"],
                  "iterations_per_loop / steps_per_execution values.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"],
                  "Optimizer of every variant (learning rate 1e-3).")

BATCH, FEATURES, HIDDEN, CLASSES = 128, 64, 256, 10


@flags.multi_flags_validator(
    ["steps", "loops"],
    message="--steps must be a multiple of every --loops value and at least "
            "twice the largest (the first run of each variant is not timed, "
            "and every timed run must do the same steps).")
def _check_steps(values):
  loops = [int(n) for n in values["loops"]]
  return all(n > 0 and values["steps"] % n == 0 and values["steps"] >= 2 * n
             for n in loops)


def _data():
  rng = np.random.RandomState(0)
  x = rng.normal(size=(8192, FEATURES)).astype(np.float32)
  y = rng.randint(0, CLASSES, size=8192).astype(np.int32)
  return x, y


def _dataset(batch=BATCH):
  x, y = _data()
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
      batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _mlp_loss(features, labels):
  with tf.compat.v1.variable_scope("mlp", reuse=tf.compat.v1.AUTO_REUSE):
    w1 = tf.compat.v1.get_variable("w1", [FEATURES, HIDDEN])
    b1 = tf.compat.v1.get_variable("b1", [HIDDEN],
                                   initializer=tf.zeros_initializer())
    w2 = tf.compat.v1.get_variable("w2", [HIDDEN, CLASSES])
    b2 = tf.compat.v1.get_variable("b2", [CLASSES],
                                   initializer=tf.zeros_initializer())
  logits = tf.matmul(tf.nn.relu(tf.matmul(features, w1) + b1), w2) + b2
  return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits))


def _train_op(loss):
  optimizer = (tf.compat.v1.train.AdamOptimizer(1e-3)
               if FLAGS.optimizer == "adam" else
               tf.compat.v1.train.GradientDescentOptimizer(1e-3))
  return th.CrossShardOptimizer(optimizer).minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())


class _RateHook(tf.compat.v1.train.SessionRunHook):
  """Steady-state steps per second, with no extra `Session.run`.

  Each run fetches the global step from before the run (the read the other
  hooks share); at the end of the run the hook notes the time. From the end
  of the first run to the end of the last, the steps done are those of the
  runs after the first: the last run's step-before minus the first run's
  (every run does the same number of steps here). The first run is left
  out: it builds the executor, which is set-up, not steady state.
  """

  def __init__(self):
    self.first = self.last = None
    self._step = None

  def begin(self):
    self._step = hooks.global_step_read()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._step)

  def after_run(self, run_context, run_values):
    now = (time.perf_counter(), int(run_values.results))
    if self.first is None:
      self.first = now
    self.last = now

  def rate(self) -> float:
    return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def raw(steps: int) -> float:
  with tf.Graph().as_default():
    tf.compat.v1.train.get_or_create_global_step()
    iterator = tf.compat.v1.data.make_one_shot_iterator(_dataset())
    count = tf.compat.v1.placeholder(tf.int32, [])

    def body(i):
      with tf.control_dependencies([_train_op(_mlp_loss(*iterator.get_next()))]):
        return i + 1

    loop = tf.while_loop(lambda i: i < count, body, [tf.constant(0)])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(loop, {count: 1})  # Set-up: builds the executor.
      started = time.perf_counter()
      session.run(loop, {count: steps})
      return steps / (time.perf_counter() - started)


def runner(steps: int, loop: int) -> float:
  def model_fn(features, labels, mode, params):
    loss = _mlp_loss(features, labels)
    return th.ModelSpec(mode=mode, loss=loss, train_op=_train_op(loss))

  with tempfile.TemporaryDirectory() as model_dir:
    hook = _RateHook()
    th.Runner(model_fn, th.RunConfig(model_dir, iterations_per_loop=loop),
              train_batch_size=BATCH).train(
                  lambda params: _dataset(params["batch_size"]),
                  max_steps=steps, hooks=[hook])
    return hook.rate()


def keras(steps: int, loop: int) -> float:
  import keras as keras_lib  # pylint: disable=g-import-not-at-top
  model = keras_lib.Sequential([
      keras_lib.Input((FEATURES,)),
      keras_lib.layers.Dense(HIDDEN, activation="relu"),
      keras_lib.layers.Dense(CLASSES)])
  model.compile(optimizer=(keras_lib.optimizers.Adam(1e-3)
                           if FLAGS.optimizer == "adam" else
                           keras_lib.optimizers.SGD(1e-3)),
                loss=keras_lib.losses.SparseCategoricalCrossentropy(
                    from_logits=True),
                steps_per_execution=loop, jit_compile=False)
  times: List[float] = []

  class Timer(keras_lib.callbacks.Callback):

    def on_train_batch_begin(self, batch, logs=None):
      if not times:
        times.append(time.perf_counter())

    def on_train_end(self, logs=None):
      times.append(time.perf_counter())

  # Warm-up: tracing the train function is setup, not steady state.
  model.fit(_dataset(), steps_per_epoch=loop, epochs=1, verbose=0)
  model.fit(_dataset(), steps_per_epoch=steps, epochs=1, verbose=0,
            callbacks=[Timer()])
  return steps / (times[1] - times[0])


def mts(steps: int) -> float:
  with tf.Graph().as_default(), tempfile.TemporaryDirectory() as model_dir:
    tf.compat.v1.train.get_or_create_global_step()
    iterator = tf.compat.v1.data.make_one_shot_iterator(_dataset())
    train_op = _train_op(_mlp_loss(*iterator.get_next()))
    hook = _RateHook()
    with tf.compat.v1.train.MonitoredTrainingSession(
        checkpoint_dir=model_dir, save_checkpoint_steps=1000,
        save_checkpoint_secs=None, save_summaries_steps=100,
        log_step_count_steps=100, hooks=[
            hook, tf.compat.v1.train.StopAtStepHook(last_step=steps)]) as s:
      while not s.should_stop():
        s.run(train_op)
    return hook.rate()


def main(argv):
  del argv  # Unused.
  _common.quiet()
  steps, loops = FLAGS.steps, [int(n) for n in FLAGS.loops]
  variants: Dict[str, Callable[[], float]] = {"raw": lambda: raw(steps)}
  for n in loops:
    variants[f"runner/{n}"] = lambda n=n: runner(steps, n)
    variants[f"keras/{n}"] = lambda n=n: keras(steps, n)
  variants["mts"] = lambda: mts(steps)
  rates: Dict[str, List[float]] = {name: [] for name in variants}
  names = list(variants)
  # The pairs the targets compare run next to each other, so that a slow
  # drift of the machine's speed hits both alike.
  first = [name for name in ("raw", "runner/100", "keras/100", "runner/1",
                             "mts") if name in variants]
  order = first + [name for name in names if name not in first]
  for repeat in range(FLAGS.repeats):
    for name in order if repeat % 2 == 0 else order[::-1]:
      rates[name].append(variants[name]())
    print(f"repeat {repeat + 1}/{FLAGS.repeats} done", flush=True)
  median = {name: statistics.median(values) for name, values in rates.items()}
  print(f"\n{steps} steps per run, median of {FLAGS.repeats}, "
        f"alternating order; batch {BATCH}, MLP {FEATURES}-{HIDDEN}-"
        f"{CLASSES}, {FLAGS.optimizer}\n")
  _common.print_table(
      ["variant", "steps/sec", "vs raw"],
      [(name, f"{median[name]:.0f}", f"{median[name] / median['raw']:.2f}")
       for name in names], numeric=[False, True, True])
  checks = []
  if 100 in loops:
    checks += [("runner/100", "raw", 0.95), ("runner/100", "keras/100", 1.25)]
  if 1 in loops:
    checks.append(("runner/1", "mts", 1.0))
  # Each repeat's ratio (a pair measured side by side), then their median.
  rows = []
  for numerator, denominator, target in checks:
    ratios = [a / b for a, b in zip(rates[numerator], rates[denominator])]
    value = statistics.median(ratios)
    rows.append((f"{numerator} / {denominator}", f"{value:.2f}",
                 f"{min(ratios):.2f}-{max(ratios):.2f}", f">= {target:.2f}",
                 "yes" if value >= target else "NO"))
  print()
  _common.print_table(["ratio", "median", "range", "target", "met"], rows,
                      numeric=[False, True, True, True])


if __name__ == "__main__":
  app.run(main)

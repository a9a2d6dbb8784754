"""Infeed throughput: the runner's infeed-to-loop path against a raw loop.

A trivial model (one scalar weight fitted to a few pixels of each batch)
trains on batches of uint8 images, so that moving the input is nearly all
the work:

  large   batches of 128 images of 224x224x3 (18.4 MiB a step), as a TPU
          host feeds ResNet;
  small   batches of 128 images of 28x28x1 (98 KiB a step).

The input is one image repeated and batched (`Dataset.from_tensors(image)
.repeat().batch(128)`): each batch is a new buffer, as `batch` makes it in
any input pipeline, with no decoding, so that the infeed's own work shows.
Two variants read the same dataset for the same steps:

  raw      ONE Session.run of a tf.while_loop that calls the iterator's
           get_next every step: the limit;
  runner   tpu_harness.Runner (CPU emulation, one replica) with
           --iterations_per_loop steps per Session.run: the host thread
           moves each loop's elements into the infeed queue while the loop
           runs.

Rates are steady state (the first loop, and raw's warm-up run, excluded);
--repeats repeats in alternating order; the table shows the median rate and
the median of each repeat's runner/raw ratio (its two sides measured next to
each other). Absolute rates are noise on shared machines; the ratio is the
result.

    python -m scripts.bench.infeed [--repeats=5] [--steps=200]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Dict, List, Tuple

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tpu_harness as th  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Alternating repeats.", lower_bound=1)
flags.DEFINE_integer("steps", 200, "Steps per timed run.", lower_bound=2)
flags.DEFINE_integer("iterations_per_loop", 20, "The runner's steps per "
                     "Session.run.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Images per batch.", lower_bound=1)
flags.DEFINE_list("sizes", ["large", "small"], "Which batch sizes to run.")

SHAPES = {"large": (224, 224, 3), "small": (28, 28, 1)}


def dataset_for(size: str) -> tf.data.Dataset:
  """One image and label repeated, batched: each batch a new buffer, as
  `batch` makes it in any input pipeline, and nothing else to compute."""
  rng = np.random.RandomState(0)
  image = rng.randint(0, 256, size=SHAPES[size], dtype=np.uint8)
  return tf.data.Dataset.from_tensors((image, np.int32(3))).repeat().batch(
      FLAGS.batch_size, drop_remainder=True)


def step_ops(images, labels, global_step):
  """The trivial model: a scalar fitted to a few pixels; returns
  (loss, train op)."""
  weight = tf.compat.v1.get_variable("weight", [],
                                     initializer=tf.zeros_initializer())
  pixels = tf.cast(images[:, 0, 0, 0], tf.float32) + tf.cast(labels,
                                                             tf.float32)
  loss = tf.reduce_mean(tf.square(pixels - weight))
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(1e-4)
  return loss, optimizer.minimize(loss, global_step=global_step)


def raw(size: str, steps: int) -> float:
  """Steps/sec of one Session.run of a while loop reading the dataset."""
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    iterator = tf.compat.v1.data.make_one_shot_iterator(dataset_for(size))
    count = tf.compat.v1.placeholder(tf.int32, [])

    def body(i):
      images, labels = iterator.get_next()
      _, train_op = step_ops(images, labels, global_step)
      with tf.control_dependencies([train_op]):
        return i + 1

    loop = tf.while_loop(lambda i: i < count, body, [tf.constant(0)])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(loop, {count: 2})  # Warm-up: the executor is built.
      start = time.perf_counter()
      session.run(loop, {count: steps})
      return steps / (time.perf_counter() - start)


class _LoopClock(tf.compat.v1.train.SessionRunHook):
  """Wall time from the end of the first loop to the end of the last."""

  def __init__(self):
    self.ends: List[float] = []

  def after_run(self, run_context, run_values):
    self.ends.append(time.perf_counter())


def runner(size: str, steps: int, directory: str) -> float:
  """Steps/sec of the runner's steady-state loops."""
  ipl = FLAGS.iterations_per_loop

  def model_fn(features, labels, mode, params):
    del params  # Unused.
    loss, train_op = step_ops(features, labels,
                              tf.compat.v1.train.get_global_step())
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  config = th.RunConfig(directory, iterations_per_loop=ipl,
                        save_checkpoints_steps=None,
                        log_step_count_steps=10**6,
                        save_summary_steps=10**6, save_graph_def=False,
                        stop_on_nan_loss=False)
  clock = _LoopClock()
  th.Runner(model_fn, config, train_batch_size=FLAGS.batch_size).train(
      lambda params: dataset_for(size), max_steps=steps + ipl,
      hooks=[clock])
  return steps / (clock.ends[-1] - clock.ends[0])


def main(argv):
  del argv  # Unused.
  _common.quiet()
  steps = FLAGS.steps
  rates: Dict[Tuple[str, str], List[float]] = {}
  with tempfile.TemporaryDirectory() as root:
    for repeat in range(FLAGS.repeats):
      for size in FLAGS.sizes:
        order = ["raw", "runner"] if repeat % 2 == 0 else ["runner", "raw"]
        for name in order:
          rate = (raw(size, steps) if name == "raw" else
                  runner(size, steps, os.path.join(
                      root, f"{size}{repeat}")))
          rates.setdefault((size, name), []).append(rate)
      print(f"repeat {repeat + 1}/{FLAGS.repeats} done", flush=True)
  print(f"\n{steps} steps per run, batch {FLAGS.batch_size} uint8 images, "
        f"runner at iterations_per_loop={FLAGS.iterations_per_loop}; "
        f"median of {FLAGS.repeats}, alternating order\n")
  rows = []
  for size in FLAGS.sizes:
    ratios = [r / w for r, w in zip(rates[(size, "runner")],
                                    rates[(size, "raw")])]
    mib = FLAGS.batch_size * int(np.prod(SHAPES[size])) / 2**20
    target = 0.9 if size == "large" else None
    value = statistics.median(ratios)
    rows.append((f"{size} {SHAPES[size]}", f"{mib:.2f}",
                 f"{statistics.median(rates[(size, 'raw')]):.1f}",
                 f"{statistics.median(rates[(size, 'runner')]):.1f}",
                 f"{value:.2f}", f"{min(ratios):.2f}-{max(ratios):.2f}",
                 f">= {target}" if target else "(reported)",
                 ("yes" if value >= target else "NO") if target else ""))
  _common.print_table(
      ["batch", "MiB/step", "raw steps/sec", "runner steps/sec",
       "runner/raw (median of repeats)", "range", "target", "met"], rows,
      numeric=[False] + [True] * 6)


if __name__ == "__main__":
  app.run(main)

"""Time to the first step when training resumes, by RunConfig.resume_input.

A decode-heavy input (JPEG images decoded and resized per example, shuffled
first, as an ImageNet pipeline does) trains a trivial model to each of
--steps (default 1k, 10k, 100k) with checkpoints, in exact mode. Then, from
a copy of each of those checkpoints, a `train()` of one more step is timed
from the call to the end of its first step (a hook's first `after_run`), in
each mode: `exact` (restores the saved input position), `skip` (reads and
drops the steps already trained on) and `restart` (starts the input again).
The baseline, measured in the same run, is the same one-step `train()` from
no checkpoint: a fresh start. Ratios are to its median.

    python -m scripts.bench.resume [--steps=1000,10000,100000] [--repeats=3]

Target (issue 15): exact at the largest step count <= 1.5x a fresh start.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tpu_harness as th  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_list("steps", ["1000", "10000", "100000"],
                  "Global steps to resume at.")
flags.DEFINE_integer("repeats", 3, "Timed resumes of each kind.",
                     lower_bound=1)
flags.DEFINE_integer("image_size", 96, "Images are this many pixels square.",
                     lower_bound=8)
flags.DEFINE_integer("batch_size", 4, "Images per step.", lower_bound=1)

MODES = ("exact", "skip", "restart")
_JPEGS = 16  # Distinct encoded images, decoded again for every example.


def _jpegs() -> List[bytes]:
  rng = np.random.RandomState(0)
  size = FLAGS.image_size
  images = []
  for _ in range(_JPEGS):
    # Smooth noise: a JPEG of it decodes at a photo's cost per pixel.
    small = rng.randint(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
    image = np.kron(small, np.ones((8, 8, 1), np.uint8))
    images.append(tf.io.encode_jpeg(image).numpy())
  return images


def input_fn_for(jpegs: List[bytes]):
  def input_fn(params):
    size = FLAGS.image_size
    table = tf.constant(jpegs)

    def decode(index):
      image = tf.io.decode_jpeg(table[index % _JPEGS], channels=3)
      image = tf.image.resize(image, [size + 8, size + 8])
      # Stateless: a seeded stateful op would be state outside tf.data.
      image = tf.image.stateless_random_crop(
          image, [size, size, 3], seed=tf.stack([index, 0]))
      return image / 255.0, tf.cast(index % 10, tf.float32)[None]

    return (tf.data.Dataset.range(2**62).shuffle(1024, seed=3)
            .map(decode).batch(params["batch_size"], drop_remainder=True)
            .prefetch(2))

  return input_fn


def model_fn(features, labels, mode, params):
  del params  # Unused.
  w = tf.compat.v1.get_variable("w", [1], initializer=tf.zeros_initializer())
  prediction = tf.reduce_mean(features, axis=[1, 2, 3])[:, None] * w
  loss = tf.reduce_mean(tf.square(prediction - labels))
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(1e-3)
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, tf.compat.v1.train.get_global_step()))


class _FirstStep(tf.compat.v1.train.SessionRunHook):
  """Notes when the first loop has run."""

  def __init__(self):
    self.at = None

  def after_run(self, run_context, run_values):
    if self.at is None:
      self.at = time.monotonic()


def runner(model_dir: str, mode: str, iterations: int) -> th.Runner:
  return th.Runner(model_fn, th.RunConfig(
      model_dir, iterations_per_loop=iterations, save_checkpoints_steps=None,
      save_graph_def=False, log_step_count_steps=10**9,
      resume_input=mode), train_batch_size=FLAGS.batch_size)


def first_step_seconds(model_dir: str, mode: str, input_fn, step: int
                       ) -> float:
  hook = _FirstStep()
  started = time.monotonic()
  runner(model_dir, mode, 1).train(input_fn, max_steps=step + 1,
                                   hooks=[hook])
  return hook.at - started


def main(argv):
  del argv  # Unused.
  _common.quiet()
  steps = sorted(int(value) for value in FLAGS.steps)
  input_fn = input_fn_for(_jpegs())
  results: Dict[str, List[float]] = {}
  with tempfile.TemporaryDirectory() as root:
    trained = os.path.join(root, "trained")
    copies = {}
    started = time.monotonic()
    for step in steps:
      runner(trained, "exact", 1000).train(input_fn, max_steps=step)
      copies[step] = os.path.join(root, f"at_{step}")
      shutil.copytree(trained, copies[step])
    print(f"trained to {steps[-1]} steps in "
          f"{time.monotonic() - started:.0f} s "
          f"({(time.monotonic() - started) / steps[-1] * 1e3:.2f} ms/step)")

    def timed(name, source, mode, step):
      for repeat in range(FLAGS.repeats):
        model_dir = os.path.join(root, f"run_{name}_{repeat}")
        if source is not None:
          shutil.copytree(source, model_dir)
        results.setdefault(name, []).append(
            first_step_seconds(model_dir, mode, input_fn, step))
        shutil.rmtree(model_dir)

    timed("fresh start (baseline)", None, "exact", 0)
    for step in steps:
      for mode in MODES:
        timed(f"{mode} at {step}", copies[step], mode, step)
  base = statistics.median(results["fresh start (baseline)"])
  print(f"\nseconds from train() to the end of its first step, median of "
        f"{FLAGS.repeats}; batch {FLAGS.batch_size} of "
        f"{FLAGS.image_size}x{FLAGS.image_size} JPEGs\n")
  medians = {name: statistics.median(s) for name, s in results.items()}
  _common.print_table(
      ["start", "seconds", "/ fresh start"],
      [(name, f"{median:.2f}", f"{median / base:.2f}")
       for name, median in medians.items()], numeric=[False, True, True])
  worst = statistics.median(results[f"exact at {steps[-1]}"]) / base
  print(f"\nexact resume at {steps[-1]} steps: {worst:.2f}x a fresh start; "
        f"target <= 1.5x: {'met' if worst <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
  app.run(main)

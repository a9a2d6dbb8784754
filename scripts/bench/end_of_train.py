"""The end of `train()`: how long it takes to return after its last loop.

A TPUEstimator-style conv net (conv, batch norm, dense; 32x32x3 images,
batch 32) trains through `tpu_harness.Runner` for --loops loops of
--iterations_per_loop steps, --runs times, each run in a fresh model_dir.
Its input does real work per image (a parallel map that builds and blurs
it), as a decoding pipeline does, and leaves tf.data to add its own
prefetching. Per run, a hook notes when the last loop's `Session.run`
ended, a saving listener how long the final save took, and then:

  end stall = (train() returned - last loop ended) - final save

that is, what the end of training costs beyond the save it needs: the
input pipeline still running, the session closing. Two variants alternate:

  harness     the input as given (the infeed turns tf.data's autotuning
              off unless the dataset's options set it; see
              tpu_harness._infeed.layout.without_autotune_thread);
  autotune    the same input with `options.autotune.enabled = True` set
              explicitly: TF's default, and what the infeed ran before.

One loop's duration, measured in the same run, is the yardstick: the ratio
says how many loops' worth of time the end costs.

    python -m scripts.bench.end_of_train [--runs=20]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tpu_harness as th  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 20, "Training runs.", lower_bound=1)
flags.DEFINE_integer("loops", 3, "Loops per run.", lower_bound=1)
flags.DEFINE_integer("iterations_per_loop", 20, "Steps per loop.",
                     lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("image_work", 8, "Blur passes per input image (the "
                     "input's cost per image).", lower_bound=0)

SIDE = 32
CLASSES = 10


def input_fn(params, autotune=None):
  """Images made and blurred per element: work like decoding."""

  def make(index):
    seed = tf.stack([index, index + 1])
    image = tf.random.stateless_uniform([SIDE, SIDE, 3], seed)
    kernel = tf.ones([3, 3, 3, 1]) / 27.0
    for _ in range(FLAGS.image_work):
      image = tf.nn.depthwise_conv2d(image[None], tf.tile(kernel, [1, 1, 1, 1]),
                                     [1, 1, 1, 1], "SAME")[0]
    label = tf.cast(index % CLASSES, tf.int32)
    return image, label

  dataset = (tf.data.Dataset.range(10**9)
             .map(make, num_parallel_calls=tf.data.AUTOTUNE)
             .batch(params["batch_size"], drop_remainder=True))
  if autotune is not None:
    options = tf.data.Options()
    options.autotune.enabled = autotune
    dataset = dataset.with_options(options)
  return dataset


def model_fn(features, labels, mode, params):
  del params  # Unused.
  net = tf.compat.v1.layers.conv2d(features, 16, 3, padding="same",
                                   activation=tf.nn.relu)
  net = tf.compat.v1.layers.batch_normalization(
      net, training=mode == th.ModeKeys.TRAIN)
  net = tf.compat.v1.layers.max_pooling2d(net, 2, 2)
  logits = tf.compat.v1.layers.dense(tf.compat.v1.layers.flatten(net),
                                     CLASSES)
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.01))
  with tf.control_dependencies(
      tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.minimize(loss, tf.compat.v1.train.get_global_step())
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)


class _LoopTimes(tf.compat.v1.train.SessionRunHook):
  """When each loop's Session.run began and ended."""

  def __init__(self):
    self.begins: List[float] = []
    self.ends: List[float] = []

  def before_run(self, run_context):
    self.begins.append(time.perf_counter())

  def after_run(self, run_context, run_values):
    self.ends.append(time.perf_counter())


class _SaveTimes(tf.compat.v1.train.CheckpointSaverListener):
  """How long each save took."""

  def __init__(self):
    self.durations: List[float] = []
    self._start = 0.0

  def before_save(self, session, global_step_value):
    self._start = time.perf_counter()

  def after_save(self, session, global_step_value):
    self.durations.append(time.perf_counter() - self._start)


def one_run(directory: str, autotune=None) -> Dict[str, float]:
  steps = FLAGS.loops * FLAGS.iterations_per_loop
  config = th.RunConfig(directory,
                        iterations_per_loop=FLAGS.iterations_per_loop,
                        save_checkpoints_steps=None,
                        log_step_count_steps=10**6, save_summary_steps=10**6,
                        save_graph_def=False)
  runner = th.Runner(model_fn, config, train_batch_size=FLAGS.batch_size)
  loops, saves = _LoopTimes(), _SaveTimes()
  runner.train(lambda params: input_fn(params, autotune), max_steps=steps,
               hooks=[loops], saving_listeners=[saves])
  returned = time.perf_counter()
  loop_time = statistics.median(
      end - begin for begin, end in zip(loops.begins[1:], loops.ends[1:]))
  return {"stall": returned - loops.ends[-1] - saves.durations[-1],
          "save": saves.durations[-1], "loop": loop_time}


def main(argv):
  del argv  # Unused.
  _common.quiet()
  variants = {"harness": None, "autotune": True}
  results: Dict[str, List[Dict[str, float]]] = {name: [] for name in variants}
  with tempfile.TemporaryDirectory() as root:
    for index in range(FLAGS.runs):
      for name, autotune in variants.items():
        results[name].append(one_run(
            os.path.join(root, f"{name}{index}"), autotune))
  print(f"\n{FLAGS.runs} runs per variant, alternating, of {FLAGS.loops} "
        f"loops x {FLAGS.iterations_per_loop} steps, batch "
        f"{FLAGS.batch_size}, conv net on {SIDE}x{SIDE}x3 images\n")
  rows = []
  for name, runs in results.items():
    stalls = [r["stall"] for r in runs]
    loop = statistics.median(r["loop"] for r in runs)
    rows.append((name, f"{statistics.median(stalls):.3f}",
                 f"{max(stalls):.3f}", f"{max(stalls) / loop:.2f}",
                 f"{max(r['save'] for r in runs):.3f}", f"{loop:.3f}"))
  _common.print_table(
      ["variant", "end stall median (s)", "max (s)", "max / one loop",
       "final save max (s)", "one loop (s)"], rows,
      numeric=[False] + [True] * 5)
  worst = max(r["stall"] for r in results["harness"])
  target = 0.2
  print(f"\nharness: max end stall {worst:.3f} s; target <= {target} s: "
        f"{'met' if worst <= target else 'NOT met'}")


if __name__ == "__main__":
  app.run(main)

"""Bytes read at start-up: resuming training, and evaluating, from a
checkpoint.

A model with --megabytes of variables trains a step and saves. Then, --repeats
times, a new `train()` resumes from that checkpoint, and an `evaluate()`
restores it. For each, the bytes this process reads (`rchar` in
/proc/self/io: every read() and pread(), from disk or page cache alike) from
the call until its first loop starts (a hook's first `before_run`) are
divided by the checkpoint's size (data and index files). The baseline,
measured in the same run, is what a read-through verification of the same
checkpoint (`restore_order.unreadable_reason`, which start-up did before
restoring until issue 15) reads on its own: start-up used to cost that plus
a restore.

    python -m scripts.bench.restore [--megabytes=256] [--repeats=3]

Linux only (/proc/self/io).
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Dict, List

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import tpu_harness as th  # pylint: disable=g-import-not-at-top
from tpu_harness._model_dir import restore_order  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("megabytes", 256, "Size of the variables, in MiB.",
                     lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed start-ups of each kind.",
                     lower_bound=1)

WIDTH = 1024


def read_bytes() -> int:
  """Bytes this process has read so far (rchar)."""
  with open("/proc/self/io", encoding="ascii") as io:
    for line in io:
      if line.startswith("rchar:"):
        return int(line.split()[1])
  raise RuntimeError("/proc/self/io has no rchar line")


def model_fn(features, labels, mode, params):
  del params  # Unused.
  rows = FLAGS.megabytes * 2**20 // 4 // WIDTH
  table = tf.compat.v1.get_variable("table", [rows, WIDTH],
                                    initializer=tf.zeros_initializer())
  w = tf.compat.v1.get_variable("w", [WIDTH, 1])
  prediction = tf.matmul(features + table[:1], w)
  loss = tf.reduce_mean(tf.square(prediction - labels))
  if mode == th.ModeKeys.EVAL:
    return th.ModelSpec(mode=mode, loss=loss)
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.01)
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, tf.compat.v1.train.get_global_step(), var_list=[w]))


def input_fn(params):
  x = np.ones((8, WIDTH), np.float32)
  y = np.ones((8, 1), np.float32)
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
      params["batch_size"], drop_remainder=True)


class _FirstLoop(tf.compat.v1.train.SessionRunHook):
  """Notes the bytes read when the first loop starts."""

  def __init__(self):
    self.at_first_loop = None

  def before_run(self, run_context):
    if self.at_first_loop is None:
      self.at_first_loop = read_bytes()


def main(argv):
  del argv  # Unused.
  _common.quiet()
  results: Dict[str, List[float]] = {"train": [], "evaluate": [],
                                     "verification (baseline)": []}
  with tempfile.TemporaryDirectory() as model_dir:
    config = th.RunConfig(model_dir, iterations_per_loop=1,
                          save_checkpoints_steps=None, save_graph_def=False,
                          keep_checkpoint_max=0)
    runner = th.Runner(model_fn, config, train_batch_size=8,
                       eval_batch_size=8)
    runner.train(input_fn, max_steps=1)
    step = 1
    for _ in range(FLAGS.repeats):
      prefix = restore_order.resume_point(model_dir).checkpoint
      size = _common.checkpoint_bytes(prefix)
      before = read_bytes()
      assert restore_order.unreadable_reason(prefix) is None
      results["verification (baseline)"].append(
          (read_bytes() - before) / size)
      hook = _FirstLoop()
      before = read_bytes()
      step += 1
      runner.train(input_fn, max_steps=step, hooks=[hook])
      results["train"].append((hook.at_first_loop - before) / size)
      hook = _FirstLoop()
      before = read_bytes()
      runner.evaluate(input_fn, steps=1, hooks=[hook])
      results["evaluate"].append((hook.at_first_loop - before) / size)
  print(f"\ncheckpoint of {size / 2**20:.0f} MiB; bytes read until the first "
        f"loop / checkpoint size, median of {FLAGS.repeats}\n")
  _common.print_table(
      ["start-up", "read / size", "range"],
      [(name, f"{statistics.median(ratios):.3f}",
        f"{min(ratios):.3f}-{max(ratios):.3f}")
       for name, ratios in results.items()], numeric=[False, True, True])
  worst = max(results["train"] + results["evaluate"])
  target = 1.1
  print(f"\nworst start-up read {worst:.3f}x the checkpoint; target <= "
        f"{target}x: {'met' if worst <= target else 'NOT met'} (before: "
        f"about {1 + statistics.median(results['verification (baseline)']):.2f}"
        f"x, a verification and a restore)")


if __name__ == "__main__":
  app.run(main)

"""Checkpoint cost: training stall of sync vs async saves, and save throughput.

A model with --megabytes of variables (one big embedding-like variable whose
row 0 is updated every step, plus a small dense layer) trains with
MonitoredTrainingSession and hooks.CheckpointSaverHook, one step per
Session.run, each step about --step_ms of matrix work. A save comes every
--runs_between_saves runs, far enough apart that an async write finishes
before the next save, so what is measured is the stall itself:

  stall = median wall time of a run that saves - median of runs that do not

for async_save=False (the write blocks the run) and async_save=True (the run
only copies the variables to host memory). Throughput: the sync save's MB/s
against a plain file copy of the same checkpoint data file (shutil.copyfile),
measured in the same run. Sync and async alternate, --repeats times; medians.

    python -m scripts.bench.checkpoint [--megabytes=128] [--repeats=3]
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
import tensorflow as tf  # pylint: disable=g-import-not-at-top

import hooks  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("megabytes", 128, "Size of the variables, in MiB.",
                     lower_bound=1)
flags.DEFINE_integer("saves", 3, "Timed saves per mode and repeat.",
                     lower_bound=1)
flags.DEFINE_integer("runs_between_saves", 40, "Runs between two saves.",
                     lower_bound=2)
flags.DEFINE_integer("matrix", 768, "Side of the square matmul per step.",
                     lower_bound=8)
flags.DEFINE_integer("repeats", 3, "Alternating repeats.", lower_bound=1)


def measure(async_save: bool, directory: str) -> Dict[str, float]:
  """Trains with saves; returns stall and save timings in seconds."""
  rows = FLAGS.megabytes * 1024 * 1024 // 4 // 1024
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    big = tf.compat.v1.get_variable("embedding", [rows, 1024],
                                    initializer=tf.zeros_initializer())
    dense = tf.compat.v1.get_variable("dense", [FLAGS.matrix, FLAGS.matrix])
    work = tf.reduce_sum(tf.matmul(dense, dense))
    step = tf.group(big[0, :].assign(big[0, :] + work * 1e-9),
                    global_step.assign_add(1))
    hook = hooks.CheckpointSaverHook(
        directory, save_steps=FLAGS.runs_between_saves,
        saver=tf.compat.v1.train.Saver(max_to_keep=2), save_graph_def=False,
        async_save=async_save)
    saving, normal = [], []
    runs = FLAGS.runs_between_saves * (FLAGS.saves + 1)
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None) as session:
      for run in range(1, runs + 1):
        started = time.perf_counter()
        session.run(step)
        elapsed = time.perf_counter() - started
        # The hook saves after the run that reaches a multiple of the period.
        (saving if run % FLAGS.runs_between_saves == 0 else normal).append(
            elapsed)
  data = tf.io.gfile.glob(os.path.join(directory, "*.data-*"))[0]
  copy_start = time.perf_counter()
  shutil.copyfile(data, data + ".copy")
  copy = time.perf_counter() - copy_start
  size = os.path.getsize(data)
  return {"stall": statistics.median(saving) - statistics.median(normal),
          "save_run": statistics.median(saving),
          "normal_run": statistics.median(normal),
          "copy": copy, "bytes": size}


def main(argv):
  del argv  # Unused.
  _common.quiet()
  results: Dict[str, List[Dict[str, float]]] = {"sync": [], "async": []}
  for repeat in range(FLAGS.repeats):
    order = ["sync", "async"] if repeat % 2 == 0 else ["async", "sync"]
    for mode in order:
      with tempfile.TemporaryDirectory() as directory:
        results[mode].append(measure(mode == "async", directory))
    print(f"repeat {repeat + 1}/{FLAGS.repeats} done", flush=True)

  def med(mode, key):
    return statistics.median(r[key] for r in results[mode])

  megabytes = med("sync", "bytes") / 2**20
  print(f"\n{megabytes:.0f} MiB checkpoint, median of {FLAGS.repeats} "
        f"alternating repeats of {FLAGS.saves} saves each\n")
  _common.print_table(
      ["mode", "run without save (ms)", "run with save (ms)", "stall (ms)"],
      [(mode, *(f"{med(mode, key) * 1e3:.1f}"
                for key in ("normal_run", "save_run", "stall")))
       for mode in ("sync", "async")], numeric=[False, True, True, True])
  sync_stall = med("sync", "stall")
  save_rate = megabytes / med("sync", "save_run")
  copy_rate = megabytes / med("sync", "copy")
  ratio = med("async", "stall") / sync_stall if sync_stall > 0 else float(
      "nan")
  print()
  _common.print_table(["measure", "value", "target", "met"], [
      ("async stall / sync stall", f"{ratio:.3f}", "<= 0.10",
       "yes" if ratio <= 0.10 else "NO"),
      ("sync save MB/s / file copy MB/s",
       f"{save_rate:.0f} / {copy_rate:.0f} = {save_rate / copy_rate:.2f}",
       "(reported)", "")], numeric=[False, True, True])


if __name__ == "__main__":
  app.run(main)

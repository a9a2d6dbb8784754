"""Reading files in parallel: the rewritten interleave against tf.data's.

While a training `input_fn` runs, the harness builds an `interleave` with
`num_parallel_calls` (and `parallel_interleave(sloppy=False)`,
`TFRecordDataset(num_parallel_reads=...)`) as a sequential interleave of
datasets that each prefetch on a thread of their own, because tf.data's
parallel interleave, restored, stops giving elements (TF 2.21;
`tpu_harness/_infeed/rewrite.py`). This measures what that costs in
reading speed, on TPU programs' readers over local TFRecord files of JPEG
examples (--files files, cycle_length 4, num_parallel_calls 4):

  records   files interleaved, records parsed, batched: the reader alone;
  decode    the same, then `shuffle(1024)`, decode and a random crop per
            image in a parallel map, batched (resnet's input);
  inside    each file's records decoded inside the interleave's function
            (the work the interleave itself runs in parallel).

Two variants (three with --symbolic) read the same pipeline for
--batches batches after a warm-up of --warmup batches, in one graph-mode
session each:

  tf.data     as TensorFlow builds it (what `resume_input='skip'` and
              `'restart'` read);
  symbolic    (with --symbolic) the same with tf.data's symbolic
              checkpointing on: what `'exact'` would read without the
              rewrite, were its restore not broken. Off by default: TF
              2.21 now and then crashes (SIGSEGV) closing a session whose
              parallel interleave runs a map under symbolic checkpointing;
  rewritten   as the harness builds it in `'exact'` mode (inside
              `rewrite.rewriting`, with symbolic checkpointing on, as the
              infeed runs it).

--repeats repeats in turn, the order reversed every other one; the table
shows the median rates and the median of each repeat's ratios to
tf.data. Files on GCS add
the latency of opening each file, which tf.data's parallel interleave
overlaps (it opens the next files ahead) and the rewrite does not; local
files do not show it.

    python -m scripts.bench.interleave [--repeats=5] [--batches=200]
        [--symbolic]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Tuple

from scripts.bench import _common  # Before TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tpu_harness._infeed import rewrite  # pylint: disable=g-import-not-at-top
from tpu_harness._infeed import saveable  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Alternating repeats.", lower_bound=1)
flags.DEFINE_integer("batches", 200, "Batches per timed read.",
                     lower_bound=1)
flags.DEFINE_integer("warmup", 20, "Batches read before the clock starts.",
                     lower_bound=1)
flags.DEFINE_integer("files", 8, "TFRecord files.", lower_bound=1)
flags.DEFINE_integer("records", 256, "Records per file.", lower_bound=1)
flags.DEFINE_integer("batch_size", 32, "Examples per batch.", lower_bound=1)
flags.DEFINE_list("workloads", ["records", "decode", "inside"],
                  "Which pipelines to read.")
flags.DEFINE_bool("symbolic", False, "Also read tf.data's parallel "
                  "interleave with symbolic checkpointing (may crash TF 2.21 "
                  "at a session's close).")

ALL_VARIANTS = ("tf.data", "symbolic", "rewritten")
_SIZE = 64  # Images are this many pixels square.
_FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
             "label": tf.io.FixedLenFeature([], tf.int64)}


def write_files(directory: str) -> List[str]:
  """--files TFRecord files of --records JPEG examples each."""
  rng = np.random.RandomState(0)
  files = []
  for part in range(FLAGS.files):
    path = os.path.join(directory, f"train-{part:05d}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      for index in range(FLAGS.records):
        small = rng.randint(0, 256, (_SIZE // 8 + 1, _SIZE // 8 + 1, 3))
        image = np.kron(small.astype(np.uint8), np.ones((8, 8, 1), np.uint8))
        example = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[tf.io.encode_jpeg(image).numpy()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[index % 10]))}))
        writer.write(example.SerializeToString())
    files.append(path)
  return files


def _parse(record):
  return tf.io.parse_single_example(record, _FEATURES)


def _decode(record):
  example = _parse(record)
  image = tf.io.decode_jpeg(example["image"], channels=3)
  image = tf.image.random_crop(image, [_SIZE, _SIZE, 3])
  return tf.cast(image, tf.float32) / 255.0, example["label"]


def pipeline(workload: str, files: List[str]) -> tf.data.Dataset:
  """The workload's pipeline, endless."""
  names = tf.data.Dataset.from_tensor_slices(files).repeat()
  batch = FLAGS.batch_size
  if workload == "inside":
    return names.interleave(
        lambda name: tf.data.TFRecordDataset(name).map(_decode),
        cycle_length=4, num_parallel_calls=4).batch(batch,
                                                    drop_remainder=True)
  records = names.interleave(tf.data.TFRecordDataset, cycle_length=4,
                             num_parallel_calls=4)
  if workload == "records":
    return records.map(_parse).batch(batch, drop_remainder=True)
  return (records.shuffle(1024).map(_decode, num_parallel_calls=4)
          .batch(batch, drop_remainder=True).prefetch(2))


def read_rate(variant: str, make: Callable[[], tf.data.Dataset]) -> float:
  """Batches/sec of reading `make()`'s dataset as `variant` builds it."""
  graph = tf.Graph()
  with graph.as_default():
    if variant == "rewritten":
      with rewrite.rewriting(graph):
        dataset = make()
    else:
      dataset = make()
    if variant != "tf.data":
      dataset = saveable.symbolic(dataset)
    iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
    batch = tf.nest.flatten(iterator.get_next())[0]
    with tf.compat.v1.Session() as session:
      session.run(iterator.initializer)
      for _ in range(FLAGS.warmup):
        session.run(batch.op)
      start = time.perf_counter()
      for _ in range(FLAGS.batches):
        session.run(batch.op)
      return FLAGS.batches / (time.perf_counter() - start)


def main(argv):
  del argv  # Unused.
  _common.quiet()
  variants = tuple(v for v in ALL_VARIANTS
                   if FLAGS.symbolic or v != "symbolic")
  rates: Dict[Tuple[str, str], List[float]] = {}
  ratios: Dict[Tuple[str, str], List[float]] = {}
  with tempfile.TemporaryDirectory() as root:
    files = write_files(root)
    for repeat in range(FLAGS.repeats):
      order = variants if repeat % 2 == 0 else variants[::-1]
      for workload in FLAGS.workloads:
        got = {variant: read_rate(variant,
                                  lambda w=workload: pipeline(w, files))
               for variant in order}
        for variant, rate in got.items():
          rates.setdefault((workload, variant), []).append(rate)
        for variant in variants[1:]:
          ratios.setdefault((workload, variant), []).append(
              got[variant] / got["tf.data"])
  rows = []
  for workload in FLAGS.workloads:
    rows.append([workload] + [
        f"{statistics.median(rates[(workload, v)]):.1f}" for v in variants
    ] + [f"{statistics.median(ratios[(workload, v)]):.2f}"
         for v in variants[1:]])
  print(f"Batches of {FLAGS.batch_size} per second, median of "
        f"{FLAGS.repeats} repeats ({FLAGS.batches} batches each):")
  _common.print_table(
      ["workload"] + list(variants)
      + [f"{v} / tf.data" for v in variants[1:]], rows,
      numeric=[False] + [True] * (2 * len(variants) - 1))


if __name__ == "__main__":
  app.run(main)

"""The length of a host infeed's input, as far as streaming needs it.

A host infeed streams an input whose length tf.data knows (`cardinality`):
it answers a loop's request at once and enqueues the elements while the
loop runs, where an input of unknown length is read a whole request ahead
first, so that a short one is found before the loop waits on it (see
`requests`). An endless input (`repeat()`) has a known length: infinite.

tf.compat.v1 maps hide it: `tf.compat.v1.data.Dataset.map` (every map of a
TPUEstimator program's input) makes its dataset with
`preserve_cardinality=False`, so tf.data reports the length of
`shuffle().repeat().map(parse).batch(B)` as unknown, and the first loop of
every `train()` waited for a whole request of input to be read and
decoded first (`iterations_per_loop` batches: over a second for a ResNet's
100 batches of JPEGs here). Such a map gives one element per input
element, as any map does; what the flag kept from TF 1 is that an
`OutOfRangeError` raised by its function ends the input (tf.data's own
maps call that an error). `of` therefore takes a map of either kind, and
the transformations that keep an endless input endless, to keep their
input's length where that is infinite. The rare v1 map that ends an
endless input that way then ends it short of its promised length, which
the infeed reports as an error (`InputEndedEarlyError`) naming the cause.
A finite length behind a v1 map stays unknown (a filter, say, would not
keep it).

`endless` says, from the graph alone (before any session), whether an
input is endless: `resume_policy` must not read and drop the steps of an
endless pass, whose count only grows.
"""

from __future__ import annotations

from typing import List, Optional

import tensorflow as tf

# Transformations of an endless input that are endless too: one element
# (or a batch, or the rows of one) per input element, in tf.data's graph.
_KEEP_ENDLESS = {
    "MapDataset", "ParallelMapDataset", "ParallelMapDatasetV2",
    "MapAndBatchDataset", "BatchDataset", "BatchDatasetV2",
    "PaddedBatchDataset", "PaddedBatchDatasetV2", "ParallelBatchDataset",
    "UnbatchDataset", "PrefetchDataset", "OptionsDataset", "ModelDataset",
    "MaxIntraOpParallelismDataset", "PrivateThreadPoolDataset",
}
# Those that report no length where their function's attribute says so.
_MAPS = {"MapDataset", "ParallelMapDataset", "ParallelMapDatasetV2",
         "MapAndBatchDataset"}
# Those past which a `take` above counts other elements than one below.
_REGROUP = {"MapAndBatchDataset", "BatchDataset", "BatchDatasetV2",
            "PaddedBatchDataset", "PaddedBatchDatasetV2",
            "ParallelBatchDataset", "UnbatchDataset"}
_INFINITE = tf.data.INFINITE_CARDINALITY
# Transformations of one input (their first) that give elements for as long
# as it does, endless where it is: those above, shuffles (the harness's
# window shuffle is a zip, a map, a prefetch and an unbatch), caches, a
# host's shard, filters and interleaves (whose elements' datasets are taken
# not to be all empty, as an endless pass over them never ends otherwise).
_ENDLESS_AFTER_FIRST = _KEEP_ENDLESS | {
    "ShuffleDataset", "ShuffleDatasetV2", "ShuffleDatasetV3",
    "CacheDataset", "CacheDatasetV2", "FilterDataset", "SkipDataset",
    "IgnoreErrorsDataset", "AssertCardinalityDataset", "AssertNextDataset",
    "ParallelFilterDataset", "FlatMapDataset", "InterleaveDataset",
    "ParallelInterleaveDataset", "ParallelInterleaveDatasetV2",
    "ParallelInterleaveDatasetV3", "ParallelInterleaveDatasetV4",
    "LegacyParallelInterleaveDatasetV2", "ExperimentalMapAndBatchDataset",
    "SlidingWindowDataset", "WindowDataset", "ScanDataset", "ShardDataset",
    "AutoShardDataset", "RebatchDataset", "RebatchDatasetV2",
    "ThreadPoolDataset", "ParseExampleDataset", "ParseExampleDatasetV2",
    "LatencyStatsDataset", "SetStatsAggregatorDataset",
}
# Sources that never end.
_ENDLESS_SOURCES = {"RandomDataset", "RandomDatasetV2"}
# What `_count_of` says of a negative count.
_ALL = -1


def of(dataset: tf.data.Dataset) -> tf.Tensor:
  """`dataset.cardinality()` (built in the default graph), but infinite
  (or the count of the `take` that ends it) where tf.data reports unknown
  only because of maps made with `preserve_cardinality=False` over an
  endless input."""
  length = dataset.cardinality()
  op = tf.data.experimental.to_variant(dataset).op
  hidden = regrouped = False
  counts: List[tf.Tensor] = []
  while True:
    if op.type == "TakeDataset":
      if regrouped:  # Its count is of other elements: not worked out.
        return length
      counts.append(op.inputs[1])
    elif op.type in _KEEP_ENDLESS:
      hidden = hidden or (op.type in _MAPS and not _preserves(op))
      regrouped = regrouped or op.type in _REGROUP
    else:
      break
    op = op.inputs[0].op
  if not hidden:
    return length
  # The length below the maps and the transformations above them.
  below = tf.raw_ops.DatasetCardinality(input_dataset=op.outputs[0])
  endless = tf.constant(_INFINITE, tf.int64)
  for count in counts:  # A take's negative count takes everything.
    count = tf.cast(count, tf.int64)
    endless = tf.where(count < 0, endless,
                       tf.where(endless < 0, count,
                                tf.minimum(endless, count)))
  return tf.where(tf.equal(below, _INFINITE), endless, length)


def _preserves(op: tf.Operation) -> bool:
  """Whether a map op reports its input's length."""
  try:
    return bool(op.get_attr("preserve_cardinality"))
  except ValueError:
    return False


def endless(dataset: tf.data.Dataset) -> bool:
  """Whether `dataset` (built in a graph) never ends, as far as its graph
  says: a `repeat()` (or `repeat(-1)`, `shuffle_and_repeat`, a
  `take(-1)`) below transformations that keep an input endless (a zip,
  where all its inputs are; a concatenation, where one is). False where
  that is unknown (a count fed at run time, an op not listed here)."""
  return _endless(tf.data.experimental.to_variant(dataset).op)


def _endless(op: tf.Operation) -> bool:
  if op.type in _ENDLESS_SOURCES:
    return True
  if op.type in ("RepeatDataset", "ShuffleAndRepeatDataset",
                 "ShuffleAndRepeatDatasetV2"):
    return _count_of(op) == _ALL or _endless(op.inputs[0].op)
  if op.type == "TakeDataset":
    return _count_of(op) == _ALL and _endless(op.inputs[0].op)
  if op.type == "ZipDataset":
    return all(_endless(tensor.op) for tensor in op.inputs)
  if op.type == "ConcatenateDataset":
    return any(_endless(tensor.op) for tensor in op.inputs[:2])
  if op.type in _ENDLESS_AFTER_FIRST and op.inputs:
    return _endless(op.inputs[0].op)
  return False


def _count_of(op: tf.Operation) -> Optional[int]:
  """A repeat's or take's count (its input named `count`): `_ALL` for any
  negative one (all, or for ever), None where it is fed at run time."""
  names = [arg.name for arg in op.op_def.input_arg]
  count = tf.get_static_value(op.inputs[names.index("count")])
  if count is None:
    return None
  return _ALL if int(count) < 0 else int(count)

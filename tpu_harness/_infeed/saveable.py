"""What of a built training input a saved position can hold.

`inspect` reads the pipeline's graph (its dataset ops and the functions
they run) before any session, so that what a position cannot hold is
found when the input is built, not by a save that fails (each failed save
logs three lines of TF C++ warnings), and said once:

- `unsaveable`: what holds data a position does not (a shuffle or cache
  made outside the training `input_fn`, whose rewrite,
  `tpu_harness._infeed.rewrite`, did not replace it; a file cache; a
  `from_generator` source), what tf.data cannot restore (a `py_function`,
  whose state lives in Python; `tf.data.experimental.parallel_interleave`),
  or what a restore stops (a parallel interleave made outside `input_fn`);
- `unordered`: a parallel `map` or `interleave` asked for no fixed order
  (`deterministic=False`, `sloppy=True`, or `Options.deterministic =
  False`): it gives elements as their calls finish, which of those in
  flight it has given is not a position, and tf.data refuses to save it
  symbolically;
- `random_ops`: stateful random ops (`tf.image.random_*`,
  `tf.random.uniform` in a `map`): a restored pipeline restarts their
  random stream from its seed rather than where it was.

`symbolic` turns on tf.data's symbolic checkpointing, under which a saved
position is where each source and transformation is, not what it holds.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, List, Optional, Set

import tensorflow as tf

from tpu_harness import _tf_internals

# Transformations whose saved state holds elements, or that tf.data cannot
# restore: a position is not saved for a pipeline that has one.
_HOLD_DATA = {
    "ShuffleDataset": "shuffle",
    "ShuffleDatasetV2": "shuffle",
    "ShuffleDatasetV3": "shuffle",
    "ShuffleAndRepeatDataset": "shuffle_and_repeat",
    "ShuffleAndRepeatDatasetV2": "shuffle_and_repeat",
    "CacheDataset": "cache",
    "CacheDatasetV2": "cache",
    "GeneratorDataset": "from_generator",
    "PyFunc": "numpy_function",
    "PyFuncStateless": "numpy_function",
    "EagerPyFunc": "py_function",
    # tf.data.experimental.parallel_interleave (squeezenet's and other TPU
    # programs' readers): no symbolic checkpointing in TF 2.21, found here
    # rather than by a failed save.
    "LegacyParallelInterleaveDatasetV2": "experimental parallel_interleave",
    # An interleave with num_parallel_calls, in its order too: restored
    # symbolically, it gives no element once the inputs it restored end
    # (TF 2.21), and the host's fill waited for good. Those made in the
    # training input_fn in their order are rewritten (`rewriting`); one
    # left (made outside it) keeps no position.
    "ParallelInterleaveDatasetV2": "interleave with num_parallel_calls",
    "ParallelInterleaveDatasetV3": "interleave with num_parallel_calls",
    "ParallelInterleaveDatasetV4": "interleave with num_parallel_calls",
}
# Parallel transformations that, asked for no fixed order, give elements as
# their calls finish: in TF 2.21 their iterators then say they are not
# symbolic-checkpoint compatible, and the first GetNext marks the iterator
# unsaveable ("... does not support symbolic checkpointing"); asked for
# their order, they save (tests/test_saveable.py tries each case on
# TF). The attribute asking: `deterministic` ("true", "false", or
# "default": the pipeline's `Options.deterministic`, true unless set) or,
# in older versions, `sloppy`.
_UNORDERED = {
    "ParallelMapDataset": "map",
    "ParallelMapDatasetV2": "map",
    "ParallelInterleaveDatasetV2": "interleave",
    "ParallelInterleaveDatasetV3": "interleave",
    "ParallelInterleaveDatasetV4": "interleave",
}
# A parallel map whose only consumers are batches is fused with them into a
# MapAndBatchDataset (tf.data's default `map_and_batch_fusion`), which gives
# its batches in order whatever the map asked and saves its position.
_MAPS = {"ParallelMapDataset", "ParallelMapDatasetV2"}
_BATCHES = {"BatchDataset", "BatchDatasetV2"}
# Stateful random ops: their random stream is not part of a saved position.
_RANDOM_OPS = {
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal",
    "TruncatedNormal", "ParameterizedTruncatedNormal", "RandomShuffle",
    "RandomGamma", "RandomPoisson", "RandomPoissonV2", "Multinomial",
    "RandomCrop", "SampleDistortedBoundingBox", "SampleDistortedBoundingBoxV2",
    "StatefulUniform", "StatefulUniformInt", "StatefulUniformFullInt",
    "StatefulStandardNormalV2", "StatefulTruncatedNormal",
    "RngReadAndSkip", "RngSkip",
}


@dataclasses.dataclass(frozen=True)
class Findings:
  """What a built training input holds, as far as positions go.

  Attributes:
    unsaveable: for each transformation or op whose state a position
      cannot hold, what it is (e.g. "shuffle (ShuffleDatasetV3)").
    random_ops: the stateful random op types in the pipeline.
    unordered: for each parallel transformation that gives its elements
      in no fixed order (its position cannot be saved), what it is and
      why, e.g. "map with num_parallel_calls and deterministic=False
      (ParallelMapDatasetV2)".
  """
  unsaveable: List[str]
  random_ops: List[str]
  unordered: List[str] = dataclasses.field(default_factory=list)


def inspect(dataset: tf.data.Dataset) -> Findings:
  """The ops of `dataset` (built in the default graph, not eagerly) that
  bear on saving its position."""
  types: Set[str] = _tf_internals.dataset_op_types(dataset)
  unsaveable = sorted(f"{_HOLD_DATA[kind]} ({kind})" for kind in types
                      if kind in _HOLD_DATA)
  return Findings(unsaveable=unsaveable,
                  random_ops=sorted(types & _RANDOM_OPS),
                  unordered=_unordered(dataset))


def _unordered(dataset: tf.data.Dataset) -> List[str]:
  """What `Findings.unordered` says of `dataset`: its parallel maps and
  interleaves (in its functions too) that give elements as they are
  ready, but for maps fused with their batches."""
  if _tf_internals.op_determinism_enabled():
    return []  # tf.data then makes every transformation deterministic.
  with warnings.catch_warnings():
    # In graph mode TF warns that options() is what Python set, which is
    # what is asked here.
    warnings.simplefilter("ignore", UserWarning)
    options = dataset.options()
  unordered_by_default = options.deterministic is False
  optimization = options.experimental_optimization
  fusion = (optimization.map_and_batch_fusion
            if optimization.map_and_batch_fusion is not None
            else optimization.apply_default_optimizations is not False)
  nodes, bodies = _tf_internals.dataset_scopes(dataset)
  found = set()
  for scope in [nodes] + bodies:
    consumers: Dict[str, Set[str]] = {}
    for node in scope:
      for name in node.input:
        if not name.startswith("^"):
          consumers.setdefault(name.split(":")[0], set()).add(node.op)
    for node in scope:
      if node.op not in _UNORDERED:
        continue
      why = _why_unordered(node, unordered_by_default)
      if why is None:
        continue
      fused = (fusion and node.op in _MAPS
               and not _attr(node, "use_unbounded_threadpool", False)
               and consumers.get(node.name)
               and consumers[node.name] <= _BATCHES)
      if not fused:
        found.add(f"{_UNORDERED[node.op]} with num_parallel_calls and "
                  f"{why} ({node.op})")
  return sorted(found)


def _why_unordered(node, unordered_by_default: bool) -> Optional[str]:
  """What asks `node` (a parallel map or interleave) for no fixed order,
  or None if it keeps its input's."""
  if "sloppy" in node.attr:
    return "sloppy=True" if node.attr["sloppy"].b else None
  deterministic = _attr(node, "deterministic", b"default")
  if deterministic == b"false":
    return "deterministic=False"
  if deterministic == b"default" and unordered_by_default:
    return "the pipeline's Options.deterministic=False"
  return None


def _attr(node, name: str, default: Any) -> Any:
  """The value of `node`'s attribute `name` (a bool or bytes), or
  `default` if it has none."""
  if name not in node.attr:
    return default
  value = node.attr[name]
  return value.b if value.WhichOneof("value") == "b" else value.s


def symbolic(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's symbolic checkpointing on."""
  options = tf.data.Options()
  options.experimental_symbolic_checkpoint = True
  return dataset.with_options(options)

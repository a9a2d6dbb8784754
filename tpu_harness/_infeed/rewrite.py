"""The training input rewritten so that its position is small to save.

tf.data saves an iterator "symbolically" when the pipeline's options ask
for it (`Options.experimental_symbolic_checkpoint`): sources and
transformations save where they are (a file offset, an index, a count), not
what they hold, and recompute what they held (a prefetch buffer, elements in
flight in a parallel map, the current file of an interleave) when restored.
Two transformations do not: `shuffle` saves its whole buffer, and `cache()`
refuses. For the exact resume mode (`tpu_harness._infeed.position`), while the
training `input_fn` runs, `rewriting` replaces them with equivalents whose
state is a position:

- `Dataset.shuffle(B)` (also through `list_files(shuffle=True)` and
  `tf.data.experimental.shuffle_and_repeat`) becomes a window shuffle: the
  input is cut into consecutive windows of B elements, and each window is
  given in a random order drawn from a seeded random stream (one draw per
  window; a new stream per iteration with `reshuffle_each_iteration`, the
  default). Like TF's buffer shuffle it mixes elements within a span of
  about B, and holds up to 2 B elements (the window being given, and the
  next being read in the background). Its state is the input's position
  at the start of the window and the index in it; a restore reads that one
  window again. The order differs from TF's for the same seed; a given
  seed still gives the same order every run. Unseeded shuffles get a seed
  per pass over the input, saved with the position.
- an in-memory `Dataset.cache()` becomes a materialized cache: the first
  time it is read, its whole input is read into host memory (variables
  outside every collection, never saved), then sliced; later reads and
  later epochs slice the same memory. Its state is an index; a restore
  reads the input once, as the first epoch did. Unlike TF's, it reads all
  of its input before giving the first element.

Anything else that holds data (a shuffle or cache made outside `input_fn`,
a file cache, a `from_generator` source) or whose state tf.data cannot
restore (a `py_function`, whose state lives in Python) is reported by
`unsaveable`, and the caller falls back to skipping; stateful random ops
(`tf.image.random_*`, `tf.random.uniform` in a `map`) are reported by
`random_ops`: a restored pipeline restarts their random stream from its
seed rather than where it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import warnings
from typing import Any, Dict, Iterator, List, Optional, Set

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
}
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
# A batch size larger than any input: `_materialized`'s one batch of all.
_ALL = 2**62
# One rewrite at a time: the replaced methods are the process's.
_LOCK = threading.Lock()


@dataclasses.dataclass
class Rewrite:
  """What rewriting one host's training input made.

  Attributes:
    graph: the graph the input is built in.
    seeds: one per window shuffle, the seed its random stream is fed at
      initialization, and the seed the user gave (None: unseeded).
    variables: the materialized caches' memory (local, never saved).
    kept: why a transformation was left as it was (TF's own then runs,
      and `unsaveable` reports it).
  """
  graph: tf.Graph
  seeds: List[tuple] = dataclasses.field(default_factory=list)
  variables: List[tf.Variable] = dataclasses.field(default_factory=list)
  kept: List[str] = dataclasses.field(default_factory=list)

  def initializer(self) -> Optional[tf.Operation]:
    """Empties the materialized caches (run before the iterator's
    initializer), or None without any."""
    if not self.variables:
      return None
    return tf.compat.v1.variables_initializer(self.variables)

  def fresh_seeds(self) -> List[int]:
    """Seeds for a new pass over the input: the user's where given, else
    drawn at random."""
    draw = random.SystemRandom()
    return [given if given is not None else draw.randrange(1, 2**62)
            for _, given in self.seeds]

  def seed_feed(self, values: List[int]) -> Dict[tf.Tensor, int]:
    """The feed giving the window shuffles `values` as their seeds."""
    return {placeholder: int(value)
            for (placeholder, _), value in zip(self.seeds, values)}


@contextlib.contextmanager
def rewriting(graph: tf.Graph) -> Iterator[Rewrite]:
  """Within the block, `Dataset.shuffle`, `shuffle_and_repeat` and the
  in-memory `Dataset.cache` of datasets built in `graph` (the default
  graph, or a function traced in it) make the resumable equivalents the
  module docstring describes."""
  rewrite = Rewrite(graph=graph)

  def shuffle(dataset, buffer_size, seed=None, reshuffle_each_iteration=None,
              name=None):
    del name  # Names the replaced op.
    return _window_shuffle(dataset, buffer_size, seed,
                           reshuffle_each_iteration in (None, True), rewrite)

  def cache(dataset, filename="", name=None):
    if _is_empty_filename(filename):
      return _materialized(dataset, rewrite, original_cache, name)
    rewrite.kept.append("cache() to a file (its contents are not "
                        "recomputed)")
    return original_cache(dataset, filename, name=name)

  with _LOCK:
    original_cache = tf.data.Dataset.cache
    with _tf_internals.dataset_methods_as(shuffle=shuffle, cache=cache):
      yield rewrite


def _is_empty_filename(filename: Any) -> bool:
  return isinstance(filename, (str, bytes)) and not filename


def _window_shuffle(dataset: tf.data.Dataset, buffer_size: Any,
                    seed: Optional[int], reshuffle: bool,
                    rewrite: Rewrite) -> tf.data.Dataset:
  """`dataset` shuffled in consecutive windows of `buffer_size` elements."""
  specs = tf.nest.flatten(dataset.element_spec)
  if not all(isinstance(spec, tf.TensorSpec) for spec in specs):
    rewrite.kept.append("shuffle() of elements with sparse or ragged parts")
    return _tf_internals.original_shuffle(dataset, buffer_size, seed,
                                          reshuffle)
  if seed is None and rewrite.graph.seed is not None:
    # tf_random_seed set: a fixed seed per shuffle, as TF derives one.
    seed = tf.compat.v1.random.get_seed(None)[1]
  with rewrite.graph.as_default(), rewrite.graph.name_scope(None):
    placeholder = tf.compat.v1.placeholder_with_default(
        tf.constant(0, tf.int64), [], name="window_shuffle_seed")
  rewrite.seeds.append((placeholder, seed))
  with warnings.catch_warnings():
    # In graph mode TF warns that rerandomizing is per repeat() epoch, which
    # is what an iteration of the shuffle is here.
    warnings.simplefilter("ignore")
    draws = tf.data.Dataset.random(seed=placeholder,
                                   rerandomize_each_iteration=reshuffle)
  if all(spec.shape.is_fully_defined() for spec in specs):
    windows = dataset.batch(buffer_size)
  else:
    windows = dataset.ragged_batch(buffer_size)
  shuffled = tf.data.Dataset.zip((windows, draws)).map(_permuted)
  # The next window is read and ordered while this one is given out.
  return shuffled.prefetch(1).unbatch()


def _permuted(window: Any, draw: tf.Tensor) -> Any:
  """`window`'s elements in the random order that `draw` seeds."""
  size = tf.shape(tf.nest.flatten(window)[0], out_type=tf.int64)[0]
  order = tf.argsort(tf.random.stateless_uniform(
      [size], seed=tf.stack([draw, size])))
  return tf.nest.map_structure(lambda part: tf.gather(part, order), window)


def _materialized(dataset: tf.data.Dataset, rewrite: Rewrite,
                  original_cache, name) -> tf.data.Dataset:
  """`dataset` read once into host memory, then sliced (see module)."""
  specs = tf.nest.flatten(dataset.element_spec)
  if not all(isinstance(spec, tf.TensorSpec) and spec.shape.is_fully_defined()
             for spec in specs):
    rewrite.kept.append("cache() of elements without fixed shapes")
    return original_cache(dataset, name=name)
  if tf.compat.v1.get_default_graph() is not rewrite.graph:
    rewrite.kept.append("cache() inside a dataset function")
    return original_cache(dataset, name=name)
  with tf.name_scope("materialized_cache"):
    memory = [tf.compat.v1.Variable(
        tf.zeros([0] + spec.shape.as_list(), spec.dtype),
        shape=tf.TensorShape([None]).concatenate(spec.shape),
        trainable=False, collections=[], use_resource=True, name="memory")
              for spec in specs]
    filled = tf.compat.v1.Variable(False, trainable=False, collections=[],
                                   use_resource=True, name="filled")
  rewrite.variables.extend(memory + [filled])
  empty = tuple(tf.zeros([0] + spec.shape.as_list(), spec.dtype)
                for spec in specs)

  def contents(_):
    def fill():
      everything = _one_batch(dataset).reduce(
          empty, lambda _, batch: tuple(tf.nest.flatten(batch)))
      stored = [part.assign(value, read_value=False)
                for part, value in zip(memory, everything)]
      with tf.control_dependencies(stored):
        done = filled.assign(True, read_value=False)
      with tf.control_dependencies([done]):
        return [tf.identity(value) for value in everything]

    def read():
      return [part.read_value() for part in memory]

    values = tf.cond(filled.read_value(), read, fill)
    for value, spec in zip(values, specs):
      value.set_shape(tf.TensorShape([None]).concatenate(spec.shape))
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.pack_sequence_as(dataset.element_spec, values))

  return tf.data.Dataset.from_tensors(0).flat_map(contents)


def _one_batch(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` as one batch of all its elements (none if it is empty)."""
  options = tf.data.Options()
  # Fused, a map and this batch would allocate the batch's whole size.
  options.experimental_optimization.map_and_batch_fusion = False
  return dataset.batch(_ALL).with_options(options)


@dataclasses.dataclass(frozen=True)
class Findings:
  """What a built training input holds, as far as positions go.

  Attributes:
    unsaveable: for each transformation or op whose state a position
      cannot hold, what it is (e.g. "shuffle (ShuffleDatasetV3)").
    random_ops: the stateful random op types in the pipeline.
  """
  unsaveable: List[str]
  random_ops: List[str]


def inspect(dataset: tf.data.Dataset) -> Findings:
  """The ops of `dataset` (built in the default graph, not eagerly) that
  bear on saving its position."""
  types: Set[str] = _tf_internals.dataset_op_types(dataset)
  unsaveable = sorted(f"{_HOLD_DATA[kind]} ({kind})" for kind in types
                      if kind in _HOLD_DATA)
  return Findings(unsaveable=unsaveable,
                  random_ops=sorted(types & _RANDOM_OPS))


def symbolic(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's symbolic checkpointing on."""
  options = tf.data.Options()
  options.experimental_symbolic_checkpoint = True
  return dataset.with_options(options)

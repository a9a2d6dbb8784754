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
  per pass over the input, saved with the position. A shuffle of a
  materialized cache (below), repeated or not (`cache().repeat()
  .shuffle(B)`, `cache().shuffle(B)`), orders windows of indices into the
  cache's memory instead, in the same order, and gathers each element from
  the memory as it is given: it copies and holds no window of elements.
- an in-memory `Dataset.cache()` becomes a materialized cache: when an
  iterator of the pipeline is initialized, the cache's whole input is
  read into host memory as one batch (a tensor, never saved), which is
  then sliced; later epochs slice the same memory. Its state is an index;
  a restore initializes the iterator, and so reads the input once, as the
  first epoch did. Unlike TF's, it reads all of its input before giving
  the first element.
- an interleave that reads its inputs in parallel in their order
  (`Dataset.interleave` with `num_parallel_calls`, also inside
  `TFRecordDataset(num_parallel_reads=...)`, and
  `tf.data.experimental.parallel_interleave(sloppy=False)`) becomes a
  sequential `interleave` of its inputs each prefetching what TF's
  buffers per input (2 blocks and one; `parallel_interleave`'s
  `buffer_output_elements`, 2 blocks by default) on a thread of its own,
  with the cycle length TF's would compute: the same elements in the same
  order, the inputs read in parallel. tf.data's
  parallel interleave, restored symbolically, gives no element once the
  inputs it restored end (TF 2.21); this one restores. It does not open
  the next inputs ahead of need, as tf.data's does. Only where positions
  are saved (`interleaves`): the order is the same either way.

What the rewrite cannot make resumable is found in the built pipeline by
`tpu_harness._infeed.saveable`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
import warnings
from typing import Any, Dict, Iterator, List, Optional

import tensorflow as tf

from tpu_harness import _tf_internals

_AUTOTUNE = tf.data.AUTOTUNE
# A batch size larger than any input: `_materialized`'s one batch of all.
_ALL = 2**62
# Elements a shuffle of a materialized cache gathers at once from its
# memory: one gather per element cost about 20 us of function call each.
_CHUNK = 128
# The dataset functions of the rewrite are TensorFlow ops only: tracing them
# through AutoGraph, as tf.data does users' functions, only costs time.
_plain = tf.autograph.experimental.do_not_convert
# One rewrite at a time: the replaced methods are the process's.
_LOCK = threading.Lock()


@dataclasses.dataclass
class Rewrite:
  """What rewriting one host's training input made.

  Attributes:
    graph: the graph the input is built in.
    seeds: one per window shuffle, the seed its random stream is fed at
      initialization, and the seed the user gave (None: unseeded).
    kept: why a transformation was left as it was (TF's own then runs,
      and `unsaveable` reports it).
    memories: the materialized caches, for a shuffle of one to find.
  """
  graph: tf.Graph
  seeds: List[tuple] = dataclasses.field(default_factory=list)
  kept: List[str] = dataclasses.field(default_factory=list)
  memories: List["_Memory"] = dataclasses.field(default_factory=list)

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
def rewriting(graph: tf.Graph, interleaves: bool = True
              ) -> Iterator[Rewrite]:
  """Within the block, `Dataset.shuffle`, `shuffle_and_repeat` and the
  in-memory `Dataset.cache` of datasets built in `graph` (the default
  graph, or a function traced in it) make the resumable equivalents the
  module docstring describes; with `interleaves`, so do interleaves in
  parallel in their order (they give the same elements in the same order
  either way: only a run that restores positions needs them)."""
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

  def interleave(dataset, map_func, cycle_length=None, block_length=None,
                 num_parallel_calls=None, deterministic=None, name=None):
    cycle = (None if num_parallel_calls is None
             else _parallel_cycle_length(cycle_length, num_parallel_calls))
    if not interleaves or cycle is None or deterministic is False:
      return _tf_internals.original_interleave(
          dataset, map_func, cycle_length, block_length, num_parallel_calls,
          deterministic, name=name)
    block = 1 if block_length is None else block_length
    # TF's parallel interleave buffers 2 blocks and one per input.
    return _prefetching_interleave(dataset, map_func, cycle, block_length,
                                   2 * block + 1, name=name)

  def legacy_interleave(dataset, map_func, cycle_length, block_length,
                        sloppy, buffer_output_elements,
                        prefetch_input_elements, name=None):
    if not interleaves or sloppy:
      return None  # TF's own.
    del prefetch_input_elements  # Files are not opened ahead of need.
    # Its buffer per input: 2 blocks by default.
    buffer = (2 * block_length if buffer_output_elements is None
              else buffer_output_elements)
    return _prefetching_interleave(dataset, map_func, cycle_length,
                                   block_length, buffer, name=name)

  with _LOCK:
    original_cache = tf.data.Dataset.cache
    with _tf_internals.dataset_methods_as(
        shuffle=shuffle, cache=cache, interleave=interleave,
        legacy_interleave=legacy_interleave):
      yield rewrite


def _parallel_cycle_length(cycle_length: Any, num_parallel_calls: Any
                           ) -> Any:
  """The cycle length of TF's parallel interleave (its C++
  `ComputeCycleLength`, TF 2.21): as given, or where it is None or
  AUTOTUNE, `num_parallel_calls` capped at the schedulable cores, or with
  that AUTOTUNE too, a third of the cores rounded up. A sequential
  interleave takes AUTOTUNE as all the cores: it is given this instead,
  so that its order is the parallel one's. None where that depends on a
  tensor's value."""
  given = (_AUTOTUNE if cycle_length is None
           else tf.get_static_value(cycle_length))
  if given is None:
    return None
  if given != _AUTOTUNE:
    return cycle_length
  calls = tf.get_static_value(num_parallel_calls)
  if calls is None:
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(
      os, "sched_getaffinity") else (os.cpu_count() or 1)
  if calls == _AUTOTUNE:
    return -(-cores // 3)
  return min(int(calls), cores)


def _prefetching_interleave(dataset: tf.data.Dataset, map_func: Any,
                            cycle_length: Any, block_length: Any,
                            buffer: Any, name: Optional[str]
                            ) -> tf.data.Dataset:
  """`dataset.interleave(map_func, cycle_length, block_length)`, each
  dataset that `map_func` makes prefetching `buffer` elements on a thread
  of its own."""

  def prefetched(*args):
    return map_func(*args).prefetch(buffer)

  return _tf_internals.original_interleave(dataset, prefetched, cycle_length,
                                           block_length, name=name)


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
  memory, count = _memory_under(dataset, rewrite.memories)
  if memory is not None:
    return _shuffled_memory(memory, count, buffer_size, draws)
  if all(spec.shape.is_fully_defined() for spec in specs):
    windows = dataset.batch(buffer_size)
  else:
    windows = dataset.ragged_batch(buffer_size)
  shuffled = tf.data.Dataset.zip((windows, draws)).map(_plain(_permuted))
  # The next window is read and ordered while this one is given out.
  return shuffled.prefetch(1).unbatch()


@dataclasses.dataclass(frozen=True)
class _Memory:
  """A materialized cache, as a shuffle of it finds it.

  Attributes:
    variant: the cache dataset's variant tensor (a dataset's identity,
      whether the caller holds it as tf.data or tf.compat.v1.data).
    values: the memory: the flat parts of `element_spec`, each a batch
      of all the elements (computed when an iterator is initialized).
    element_spec: the cache's element spec.
  """
  variant: tf.Tensor
  values: List[tf.Tensor]
  element_spec: Any


def _memory_under(dataset: tf.data.Dataset, memories: List[_Memory]):
  """(memory, repeat count) if `dataset` is a materialized cache of
  `memories` (count None) or its `repeat(count)` (a tensor); else
  (None, None)."""
  variant = tf.data.experimental.to_variant(dataset)
  for memory in memories:
    if variant is memory.variant:
      return memory, None
    if (variant.op.type == "RepeatDataset"
        and variant.op.inputs[0] is memory.variant):
      return memory, variant.op.inputs[1]
  return None, None


def _shuffled_memory(memory: _Memory, count: Optional[Any],
                     buffer_size: Any, draws: tf.data.Dataset
                     ) -> tf.data.Dataset:
  """The window shuffle of `memory` repeated `count` times, as indices:
  the windows `_window_shuffle` would order, each element gathered from
  the memory as it is given."""
  values = memory.values
  size = tf.shape(values[0], out_type=tf.int64)[0]
  indices = tf.data.Dataset.range(size)
  if count is not None:
    indices = indices.repeat(count)
  windows = tf.data.Dataset.zip((indices.batch(buffer_size), draws))

  def elements(chunk):
    return tf.nest.pack_sequence_as(
        memory.element_spec, [tf.gather(part, chunk) for part in values])

  return (windows.map(_plain(_permuted)).unbatch().batch(_CHUNK)
          .map(_plain(elements)).unbatch())


def _permuted(window: Any, draw: tf.Tensor) -> Any:
  """`window`'s elements in the random order that `draw` seeds."""
  size = tf.shape(tf.nest.flatten(window)[0], out_type=tf.int64)[0]
  order = tf.argsort(tf.random.stateless_uniform(
      [size], seed=tf.stack([draw, size])))
  return tf.nest.map_structure(lambda part: tf.gather(part, order), window)


def _materialized(dataset: tf.data.Dataset, rewrite: Rewrite,
                  original_cache, name) -> tf.data.Dataset:
  """`dataset` read whole into host memory, then sliced (see module)."""
  specs = tf.nest.flatten(dataset.element_spec)
  if not all(isinstance(spec, tf.TensorSpec) and spec.shape.is_fully_defined()
             for spec in specs):
    rewrite.kept.append("cache() of elements without fixed shapes")
    return original_cache(dataset, name=name)
  if tf.compat.v1.get_default_graph() is not rewrite.graph:
    rewrite.kept.append("cache() inside a dataset function")
    return original_cache(dataset, name=name)
  with tf.name_scope("materialized_cache"):
    # One batch of every element, or none for an empty input: a graph op,
    # run when an iterator of the pipeline is initialized. The slices
    # below hold the batch as their input, for every epoch; no function
    # is traced or instantiated for it, and nothing reads it per element.
    empty = tf.data.Dataset.from_tensors(tf.nest.pack_sequence_as(
        dataset.element_spec,
        [tf.zeros([0] + spec.shape.as_list(), spec.dtype) for spec in specs]))
    memory = _one_batch(dataset).concatenate(empty).take(1)
    values = tf.nest.flatten(memory.get_single_element())
  cached = tf.data.Dataset.from_tensor_slices(
      tf.nest.pack_sequence_as(dataset.element_spec, values))
  rewrite.memories.append(_Memory(
      variant=tf.data.experimental.to_variant(cached), values=values,
      element_spec=dataset.element_spec))
  return cached


def _one_batch(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` as one batch of all its elements (none if it is empty)."""
  options = tf.data.Options()
  # Fused, a map and this batch would allocate the batch's whole size.
  options.experimental_optimization.map_and_batch_fusion = False
  return dataset.batch(_ALL).with_options(options)

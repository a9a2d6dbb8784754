"""The training input rewritten for small positions: window shuffles,
materialized caches, interleaves of prefetched inputs, and the position's
size."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tensorflow.python.data.ops import readers  # pylint: disable=g-direct-tensorflow-import

from tpu_harness import _tf_internals
from tpu_harness._infeed import rewrite as resumable_input
from tpu_harness._infeed import saveable
from support.iterators import session_values


def _rewritten(make):
  """`make()` built in a new default graph within `rewriting`."""
  graph = tf.compat.v1.get_default_graph()
  with resumable_input.rewriting(graph) as rewrite:
    dataset = make()
  return dataset, rewrite


@pytest.fixture(autouse=True)
def graph_mode():
  with tf.Graph().as_default():
    yield


def test_a_window_shuffle_orders_each_window_at_random():
  dataset, rewrite = _rewritten(
      lambda: tf.data.Dataset.range(40).shuffle(10))
  (values, _), (again, _), (other, _) = (
      session_values(dataset, 40, rewrite, [seed]) for seed in (1, 1, 2))
  values = np.array(values)
  for start in range(0, 40, 10):
    window = values[start:start + 10]
    assert sorted(window) == list(range(start, start + 10))
  assert list(values) != list(range(40))
  assert list(values) == list(again)  # A seed gives one order.
  assert list(values) != list(other)


@pytest.mark.parametrize("reshuffle", [True, False])
def test_reshuffle_each_iteration_gives_each_epoch_its_own_order(reshuffle):
  dataset, rewrite = _rewritten(lambda: tf.data.Dataset.range(20).shuffle(
      20, reshuffle_each_iteration=reshuffle).repeat(2))
  values, _ = session_values(dataset, 40, rewrite, [5])
  first, second = values[:20], values[20:]
  assert sorted(first) == sorted(second) == list(range(20))
  assert (first != second) == reshuffle


def test_a_user_seed_is_kept_and_unseeded_shuffles_get_fresh_seeds():
  _, rewrite = _rewritten(lambda: tf.data.Dataset.range(9).shuffle(
      3, seed=42).shuffle(3))
  fresh = rewrite.fresh_seeds()
  assert fresh[0] == 42 and fresh[1] != 42
  assert rewrite.fresh_seeds()[1] != fresh[1]


def test_shuffle_and_repeat_and_list_files_are_rewritten(tmp_path):
  for index in range(3):
    (tmp_path / f"f{index}").write_text("x")

  def make():
    files = tf.data.Dataset.list_files(str(tmp_path / "f*"), shuffle=True)
    return tf.data.Dataset.range(10).apply(
        tf.data.experimental.shuffle_and_repeat(4, count=2)).concatenate(
            files.map(lambda f: tf.cast(tf.strings.length(f), tf.int64)))

  dataset, rewrite = _rewritten(make)
  assert len(rewrite.seeds) == 2
  assert saveable.inspect(dataset).unsaveable == []
  values, _ = session_values(dataset, 23, rewrite, [3, 4])
  assert sorted(values[:10]) == sorted(values[10:20]) == list(range(10))


def test_the_methods_are_tfs_again_after_the_block():
  shuffle, cache = tf.data.Dataset.shuffle, tf.data.Dataset.cache
  interleave = tf.data.Dataset.interleave
  with pytest.raises(RuntimeError):
    with resumable_input.rewriting(tf.compat.v1.get_default_graph()):
      assert tf.data.Dataset.shuffle is not shuffle
      raise RuntimeError("input_fn failed")
  assert tf.data.Dataset.shuffle is shuffle
  assert tf.data.Dataset.cache is cache
  assert tf.data.Dataset.interleave is interleave
  legacy = tf.data.Dataset.range(4).apply(
      tf.data.experimental.parallel_interleave(tf.data.Dataset.range,
                                               cycle_length=2))
  assert isinstance(legacy, readers.ParallelInterleaveDataset)


def test_elements_of_varying_shape_are_shuffled_too():
  dataset, rewrite = _rewritten(lambda: tf.data.Dataset.range(12).map(
      lambda i: tf.range(i % 4)).shuffle(6))
  values, _ = session_values(dataset, 12, rewrite, [7])
  assert sorted(len(v) for v in values) == sorted(i % 4 for i in range(12))


def test_a_materialized_cache_reads_its_input_once():
  reads = tf.compat.v1.Variable(0, use_resource=True)

  def count(i):
    with tf.control_dependencies([reads.assign_add(1)]):
      return tf.identity(i) * 10

  dataset, rewrite = _rewritten(
      lambda: tf.data.Dataset.range(5).map(count).cache().repeat(3))
  iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
  element = iterator.get_next()
  with tf.compat.v1.Session() as session:
    session.run(reads.initializer)
    session.run(iterator.initializer)
    # Read whole as the iterator is initialized: a graph op, no dataset
    # function of the rewrite's own to trace or instantiate.
    assert session.run(reads) == 5
    values = [session.run(element) for _ in range(15)]
    assert session.run(reads) == 5
  assert values == [0, 10, 20, 30, 40] * 3


# (name, element of index i): the structures a cache keeps.
_CACHED_ELEMENTS = {
    "a tensor": lambda i: i * 2,
    "a tuple": lambda i: (tf.fill([2], i), i + 1),
    "a dict with strings": lambda i: {"name": tf.strings.as_string(i),
                                      "id": i},
}


@pytest.mark.parametrize("size", [0, 4])
@pytest.mark.parametrize("kind", sorted(_CACHED_ELEMENTS))
def test_a_materialized_cache_gives_what_tfs_gives(kind, size):
  def make():
    return tf.data.Dataset.range(size).map(
        _CACHED_ELEMENTS[kind]).cache().repeat(2)

  want = list(_all_values(make(), None))
  dataset, rewrite = _rewritten(make)
  assert dataset.element_spec == make().element_spec
  got = list(_all_values(dataset, rewrite))
  assert len(got) == 2 * size
  for mine, tfs in zip(got, want):
    tf.nest.map_structure(np.testing.assert_array_equal, mine, tfs)


def _all_values(dataset, rewrite):
  """Every element of `dataset`, in a session of its own."""
  iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
  element = iterator.get_next()
  with tf.compat.v1.Session() as session:
    session.run(iterator.initializer,
                rewrite.seed_feed([]) if rewrite is not None else None)
    while True:
      try:
        yield session.run(element)
      except tf.errors.OutOfRangeError:
        return


_COUNT_STATEFUL_LINES = """
import tensorflow as tf
from tpu_harness._infeed import rewrite as resumable_input
from tpu_harness._infeed import saveable
with tf.Graph().as_default() as graph:
  with resumable_input.rewriting(graph) as rewrite:
    dataset = tf.data.Dataset.range(50).cache().repeat(3)
  dataset = saveable.symbolic(dataset)
  iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
  element = iterator.get_next()
  with tf.compat.v1.Session() as session:
    session.run(iterator.initializer)
    values = [session.run(element) for _ in range(150)]
assert values == list(range(50)) * 3, values
"""


@pytest.mark.system
def test_a_materialized_cache_logs_no_line_per_element():
  # With symbolic checkpointing TF checks the functions of a pipeline's
  # transformations as each element is given, and logs "<op> is stateful"
  # for each stateful op it finds (a warn policy it fixes): the cache runs
  # no function at all (an earlier version read its memory in one run for
  # each element: 157 lines here).
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0",
             PYTHONPATH=os.pathsep.join(sys.path))
  result = subprocess.run([sys.executable, "-c", _COUNT_STATEFUL_LINES],
                          env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stderr.count("is stateful")
  assert lines <= 4 * 3, lines  # A few per epoch at most.

def test_a_large_shuffle_buffer_and_cache_leave_a_small_position():
  images = np.random.RandomState(0).rand(20000, 784).astype(np.float32)
  dataset, rewrite = _rewritten(lambda: tf.data.Dataset.from_tensor_slices(
      images).cache().repeat().shuffle(10000).batch(64, drop_remainder=True))
  dataset = saveable.symbolic(dataset)
  # 300 batches in: past the first window, into the cache's second epoch.
  values, state = session_values(dataset, 300, rewrite, [9])
  # TF's own shuffle would hold 10000 x 784 floats: 31 MB.
  assert len(state) < 16 * 2**10
  more, _ = session_values(dataset, 320, rewrite, [9])
  restored, _ = session_values(dataset, 20, rewrite, [9], state=state)
  for want, got in zip(more[300:], restored):
    np.testing.assert_array_equal(want, got)
  assert not np.array_equal(values[0], values[1])


def _image_rows(count):
  return np.arange(count * 6, dtype=np.float32).reshape(count, 2, 3)


# (name, the input after its cache; a map between cache and shuffle keeps
# the window shuffle of elements; the v1 API wraps each dataset).
_CACHE_SHUFFLES = {
    "repeated": lambda cached: cached.repeat(3).shuffle(7),
    "forever": lambda cached: cached.repeat().shuffle(7),
    "once, then repeated": lambda cached: cached.shuffle(7).repeat(2),
    "buffer past the input": lambda cached: cached.repeat(2).shuffle(50),
}


@pytest.mark.parametrize("name", sorted(_CACHE_SHUFFLES))
@pytest.mark.parametrize("api", ["v2", "v1"])
def test_a_shuffle_of_a_cache_orders_indices_as_a_window_shuffle(name, api):
  rows = _image_rows(20)
  source = (tf.compat.v1.data.Dataset if api == "v1"
            else tf.data.Dataset).from_tensor_slices((rows, np.arange(20)))
  tail = _CACHE_SHUFFLES[name]
  indexed, index_rewrite = _rewritten(lambda: tail(source.cache()))
  windowed, window_rewrite = _rewritten(
      lambda: tail(source.cache().map(lambda *element: element)))
  count = 20 * (3 if name == "repeated" else 2)
  want, _ = session_values(windowed, count, window_rewrite, [11])
  got, _ = session_values(indexed, count, index_rewrite, [11])
  assert [label for _, label in got] == [label for _, label in want]
  for (image, label), _ in zip(got, want):
    np.testing.assert_array_equal(image, rows[label])
  assert [label for _, label in got][:20] != list(range(20))
  # Both batch the images once, into the cache's memory; the window
  # shuffle batches them again into its windows, the shuffle of the cache
  # batches indices.
  assert _batches_of_images(windowed) == 2
  assert _batches_of_images(indexed) == 1


def _batches_of_images(dataset):
  """The number of batch transformations of float32 parts in `dataset`."""
  nodes, bodies = _tf_internals.dataset_nodes(dataset)
  return sum(tf.float32.as_datatype_enum in node.attr["output_types"].list.type
             for node in nodes + bodies
             if node.op in ("BatchDataset", "BatchDatasetV2"))


_CACHE_TAILS = {
    "repeated, then shuffled": lambda cached: cached.repeat().shuffle(3000),
    # Each epoch's inner iterator draws its own order: the second one's.
    "shuffled each epoch": lambda cached: cached.shuffle(3000).repeat(),
    "not shuffled": lambda cached: cached.repeat(),
}


@pytest.mark.parametrize("tail", sorted(_CACHE_TAILS))
def test_a_cache_resumes_at_its_position_with_a_small_state(tail):
  rows = np.random.RandomState(0).rand(5000, 784).astype(np.float32)

  def make():
    return _CACHE_TAILS[tail](
        tf.data.Dataset.from_tensor_slices(rows).cache())

  dataset, rewrite = _rewritten(make)
  dataset = saveable.symbolic(dataset)
  # Into the cache's second epoch (and a later shuffle window).
  _, state = session_values(dataset, 7000, rewrite, [9])
  assert len(state) < 16 * 2**10  # The memory alone is 15 MB.
  more, _ = session_values(dataset, 7050, rewrite, [9])
  restored, _ = session_values(dataset, 50, rewrite, [9], state=state)
  for want, got in zip(more[7000:], restored):
    np.testing.assert_array_equal(want, got)


def _inputs(index):
  """Input `index` of an interleave: 50 numbers of its own."""
  return tf.data.Dataset.range(50).map(lambda x: x + 1000 * index)


# Interleaves that read their inputs in parallel, in their order.
_IN_ORDER = {
    "interleave": lambda d: d.interleave(_inputs, cycle_length=2,
                                         num_parallel_calls=2),
    "interleave, deterministic": lambda d: d.interleave(
        _inputs, cycle_length=2, block_length=3, num_parallel_calls=2,
        deterministic=True),
    "parallel_interleave": lambda d: d.apply(
        tf.data.experimental.parallel_interleave(_inputs, cycle_length=2,
                                                 sloppy=False)),
    "parallel_interleave, sloppy=None": lambda d: d.apply(
        tf.data.experimental.parallel_interleave(
            _inputs, cycle_length=2, block_length=2, sloppy=None,
            buffer_output_elements=4)),
    "v1 interleave": lambda d: tf.compat.v1.data.Dataset.range(4).interleave(
        _inputs, cycle_length=2, num_parallel_calls=2),
    # The cycle length TF's parallel interleave computes (from the cores).
    "cycle_length None, AUTOTUNE": lambda d: d.interleave(
        _inputs, num_parallel_calls=tf.data.AUTOTUNE),
    "cycle_length AUTOTUNE, 1 call": lambda d: d.interleave(
        _inputs, cycle_length=tf.data.AUTOTUNE, num_parallel_calls=1),
    "cycle_length None, 2 calls": lambda d: d.interleave(
        _inputs, num_parallel_calls=2),
}


@pytest.mark.parametrize("case", sorted(_IN_ORDER))
def test_an_interleave_in_parallel_in_order_is_rewritten_and_resumes(case):
  """An interleave of prefetched inputs: the same elements in the same
  order (with the cycle length TF's parallel interleave computes where it
  is not given), a position that saves, and a restore that goes on past
  the end of the inputs it restored (tf.data's parallel interleave
  stopped)."""
  def make():
    return _IN_ORDER[case](tf.data.Dataset.range(4))

  expected, _ = session_values(make(), 200)
  dataset, _ = _rewritten(make)
  dataset = saveable.symbolic(dataset)
  assert not {"ParallelInterleaveDatasetV2", "ParallelInterleaveDatasetV4",
              "LegacyParallelInterleaveDatasetV2"} & (
                  _tf_internals.dataset_op_types(dataset))
  assert saveable.inspect(dataset).unsaveable == []
  first, state = session_values(dataset, 30)
  rest, _ = session_values(dataset, 170, state=state)
  assert first + rest == expected


@pytest.mark.parametrize("make, op", [
    (lambda d: d.interleave(_inputs, cycle_length=2, num_parallel_calls=2,
                            deterministic=False),
     "ParallelInterleaveDatasetV4"),
    (lambda d: d.apply(tf.data.experimental.parallel_interleave(
        _inputs, cycle_length=2, sloppy=True)),
     "LegacyParallelInterleaveDatasetV2"),
], ids=["deterministic=False", "sloppy=True"])
def test_an_interleave_in_no_fixed_order_is_left_as_it_is(make, op):
  dataset, _ = _rewritten(lambda: make(tf.data.Dataset.range(4)))
  assert op in _tf_internals.dataset_op_types(dataset)


def test_interleaves_are_left_as_they_are_where_no_position_is_kept():
  graph = tf.compat.v1.get_default_graph()
  with resumable_input.rewriting(graph, interleaves=False):
    dataset = _IN_ORDER["parallel_interleave"](tf.data.Dataset.range(4))
    other = _IN_ORDER["interleave"](tf.data.Dataset.range(4))
  assert "LegacyParallelInterleaveDatasetV2" in (
      _tf_internals.dataset_op_types(dataset))
  assert "ParallelInterleaveDatasetV4" in _tf_internals.dataset_op_types(
      other)
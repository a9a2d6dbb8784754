"""The input length a host infeed streams by: tf.data's, and infinite
behind tf.compat.v1 maps over an endless input."""

import pytest
import tensorflow as tf

from tpu_harness._infeed import length
from tpu_harness._infeed import rewrite

V1 = tf.compat.v1.data.Dataset
V2 = tf.data.Dataset
INFINITE = int(tf.data.INFINITE_CARDINALITY)
UNKNOWN = int(tf.data.UNKNOWN_CARDINALITY)


def _double(x):
  return x * 2


# (name, pipeline, its length, what tf.data reports).
_CASES = [
    ("v2 map", lambda: V2.range(10).map(_double), 10, 10),
    ("v2 endless", lambda: V2.range(3).repeat().map(_double).batch(2),
     INFINITE, INFINITE),
    ("v1 map, endless", lambda: V1.range(3).repeat().map(_double),
     INFINITE, UNKNOWN),
    ("v1 parallel map, batch, prefetch", lambda: V1.range(3).shuffle(
        3).repeat().map(_double, num_parallel_calls=2).batch(
            2, drop_remainder=True).prefetch(1), INFINITE, UNKNOWN),
    ("v1 map under map_and_batch", lambda: V1.range(3).repeat().map(
        _double).apply(tf.data.experimental.map_and_batch(_double, 2)),
     INFINITE, UNKNOWN),
    ("v1 map, endless, taken", lambda: V1.range(3).repeat().map(
        _double).batch(2).take(7).prefetch(1), 7, UNKNOWN),
    ("v1 map, endless, taken twice", lambda: V1.range(3).repeat().map(
        _double).take(9).take(4), 4, UNKNOWN),
    ("v1 map, endless, take of all", lambda: V1.range(3).repeat().map(
        _double).take(-1), INFINITE, UNKNOWN),
    # Unknown stays unknown: a finite input, an empty one, a filter, a
    # take below a batch (its count is of other elements).
    ("v1 map, finite", lambda: V1.range(10).map(_double), UNKNOWN, UNKNOWN),
    ("v1 map, empty repeated", lambda: V1.range(0).repeat().map(_double),
     UNKNOWN, UNKNOWN),
    ("v1 map, filter", lambda: V1.range(3).repeat().map(_double).filter(
        lambda x: x > 0), UNKNOWN, UNKNOWN),
    ("v1 map, take below a batch", lambda: V1.range(3).repeat().map(
        _double).take(7).batch(2), UNKNOWN, UNKNOWN),
]


@pytest.mark.parametrize("name,make,want,tfs", _CASES,
                         ids=[case[0] for case in _CASES])
def test_the_length_of_an_input(name, make, want, tfs):
  del name  # The test's id.
  with tf.Graph().as_default():
    dataset = make()
    with tf.compat.v1.Session() as session:
      assert session.run([length.of(dataset), dataset.cardinality()]) == [
          want, tfs]


def test_a_take_fed_at_initialization_is_the_length():
  with tf.Graph().as_default():
    count = tf.compat.v1.placeholder_with_default(
        tf.constant(5, tf.int64), [])
    dataset = V1.range(3).repeat().map(_double).take(count)
    with tf.compat.v1.Session() as session:
      assert session.run(length.of(dataset), {count: 12}) == 12


def _files():
  return V2.from_tensor_slices(["/no/a", "/no/b"])


# (name, pipeline, endless as the graph says). Built only, never run.
_ENDLESS = [
    ("repeat", lambda: V2.range(3).repeat().batch(2), True),
    ("repeat(-1), v1 maps", lambda: V1.range(3).repeat(-1).map(
        _double).prefetch(1), True),
    ("cache, repeat, shuffle", lambda: V2.range(9).cache().repeat().shuffle(
        5).batch(2, drop_remainder=True), True),
    ("files repeated, sloppy parallel_interleave, map_and_batch",
     lambda: _files().repeat().apply(
         tf.data.experimental.parallel_interleave(
             tf.data.TFRecordDataset, cycle_length=2, sloppy=True)).shuffle(
                 4).apply(tf.data.experimental.map_and_batch(
                     tf.strings.length, 2)), True),
    ("interleave, unordered", lambda: _files().repeat().interleave(
        tf.data.TFRecordDataset, num_parallel_calls=2,
        deterministic=False).map(tf.strings.length).filter(
            lambda n: n > 0), True),
    ("shuffle_and_repeat", lambda: V2.range(3).apply(
        tf.data.experimental.shuffle_and_repeat(3)), True),
    ("take(-1)", lambda: V2.range(3).repeat().take(-1), True),
    ("a host's shard", lambda: V2.range(8).repeat().shard(2, 1).batch(2),
     True),
    ("concatenated with an endless one", lambda: V2.range(3).concatenate(
        V2.range(2).repeat()), True),
    ("finite", lambda: V2.range(10).shuffle(4).batch(2), False),
    ("long, finite", lambda: V2.range(10**9).batch(2), False),
    ("repeat(3)", lambda: V2.range(3).repeat(3), False),
    ("repeat(n), n fed", lambda: V2.range(3).repeat(
        tf.compat.v1.placeholder_with_default(tf.constant(-1, tf.int64),
                                              [])), False),
    ("take(5)", lambda: V2.range(3).repeat().take(5), False),
    ("zipped with a finite one", lambda: V2.zip((V2.range(3).repeat(),
                                                 V2.range(3))), False),
]


@pytest.mark.parametrize("name,make,endless", _ENDLESS,
                         ids=[case[0] for case in _ENDLESS])
def test_whether_an_input_is_endless(name, make, endless):
  del name  # The test's id.
  with tf.Graph().as_default():
    assert length.endless(make()) is endless


def test_the_window_shuffle_keeps_an_input_endless():
  graph = tf.Graph()
  with graph.as_default(), rewrite.rewriting(graph):
    dataset = V2.range(9).cache().repeat().shuffle(4).batch(2)
    finite = V2.range(9).shuffle(4).batch(2)
  with graph.as_default():
    # Rewritten: a zip with an endless random stream, a map, an unbatch.
    assert "ShuffleDataset" not in str(graph.as_graph_def())
    assert length.endless(dataset) and not length.endless(finite)

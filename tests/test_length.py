"""The input length a host infeed streams by: tf.data's, and infinite
behind tf.compat.v1 maps over an endless input."""

import pytest
import tensorflow as tf

from tpu_harness._infeed import length

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

"""HostInfeed: a real host thread filling a real queue in a real session."""

import threading

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness.infeed import HostInfeed
from tpu_harness.infeed import InputShapeError
from tpu_harness.infeed import leaf_paths


def _dataset(n):
  x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  return tf.data.Dataset.from_tensor_slices({"x": x, "i": np.arange(n)})


def test_counts_what_it_moved_and_stops_at_end_of_input():
  infeed = HostInfeed(_dataset(5), capacity=4, name="t")
  element = infeed.dequeue()
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    try:
      infeed.request(3)
      assert infeed.wait() == 3
      assert [session.run(element)["i"] for _ in range(3)] == [0, 1, 2]
      infeed.request(3)
      assert infeed.wait() == 2  # The input ended.
      assert [session.run(element)["i"] for _ in range(2)] == [3, 4]
      infeed.request(3)
      assert infeed.wait() == 0
    finally:
      infeed.stop()


def test_host_fills_while_device_drains():
  infeed = HostInfeed(_dataset(10), capacity=3, name="t")
  element = infeed.dequeue()
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    try:
      infeed.request(3)
      assert infeed.wait() == 3
      infeed.request(3)  # Blocks on the full queue until we dequeue.
      got = [session.run(element)["i"] for _ in range(3)]
      assert infeed.wait() == 3
      got += [session.run(element)["i"] for _ in range(3)]
      assert got == [0, 1, 2, 3, 4, 5]
    finally:
      infeed.stop()


def test_request_beyond_capacity_is_refused():
  infeed = HostInfeed(_dataset(10), capacity=3, name="t")
  for steps in (0, 4):
    with pytest.raises(ValueError, match=rf"`steps` \({steps}\) must be in "
                       r"1..3, the t infeed's capacity"):
      infeed.request(steps)


def test_stop_cancels_a_blocked_enqueue():
  infeed = HostInfeed(_dataset(10).repeat(), capacity=2, name="t")
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    infeed.request(2)
    assert infeed.wait() == 2
    infeed.request(2)  # Blocks: the queue is full.
    stopper = threading.Thread(target=infeed.stop)
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive()


def test_input_errors_surface_in_wait():
  dataset = tf.data.Dataset.range(5).map(_check_small)
  infeed = HostInfeed(dataset, capacity=8, name="t")
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    try:
      infeed.request(5)
      with pytest.raises(tf.errors.InvalidArgumentError, match="bad input"):
        infeed.wait()
    finally:
      infeed.stop()


def _check_small(i):
  with tf.control_dependencies([tf.debugging.assert_less(
      i, tf.constant(2, tf.int64), message="bad input")]):
    return tf.identity(i)


def test_unknown_shapes_are_rejected_with_their_path():
  dataset = tf.data.Dataset.from_tensor_slices(
      {"x": np.zeros((4, 2), np.float32)}).batch(3)
  with pytest.raises(InputShapeError, match=r"element\['x'\] has shape "
                     r"\(None, 2\)"):
    HostInfeed(dataset, capacity=2, name="t")


@pytest.mark.parametrize("structure,expected", [
    (1, ["e"]),
    ((1, 2), ["e[0]", "e[1]"]),
    ({"b": 1, "a": (2, 3)}, ["e['a'][0]", "e['a'][1]", "e['b']"]),
])
def test_leaf_paths_follow_flatten_order(structure, expected):
  assert leaf_paths(structure, "e") == expected
  assert len(tf.nest.flatten(structure)) == len(expected)

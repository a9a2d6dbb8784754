"""Where a host infeed's elements go: the emulated queue (its fill chosen
by element size, closable) or a device's infeed."""

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness._infeed import destination
from tpu_harness._infeed import fill
from tpu_harness._infeed.layout import InfeedLayout


@pytest.fixture(autouse=True)
def graph_mode():
  with tf.Graph().as_default():
    yield


def _dataset():
  return tf.data.Dataset.range(10).map(
      lambda i: tf.fill([4], tf.cast(i, tf.float32)))


@pytest.mark.parametrize("per_element_bytes, kind, chunk", [
    (64 * 2**10, fill.ChunkFill, 8),  # 16-byte elements: small.
    (16, fill.ElementFill, 8),  # As large as the threshold: one by one.
])
def test_the_emulated_queue_fills_by_element_size(per_element_bytes, kind,
                                                  chunk):
  dataset = _dataset()
  specs = tf.nest.flatten(dataset.element_spec)
  queue = destination.EmulatedQueue(
      dataset, specs, capacity=3,
      sizes=InfeedLayout(min_chunk_steps=8,
                         per_element_bytes=per_element_bytes),
      name="train", max_steps=100)
  assert isinstance(queue.fill, kind)
  assert queue.fill.chunk == chunk
  assert queue.queued
  element = queue.dequeue()
  with tf.compat.v1.Session() as session:
    session.run(queue.fill.iterator.initializer)
    read, queued = queue.fill.run(session, queue.fill.asked(3))
    assert (read, queued) == (8, 8)
    np.testing.assert_array_equal(session.run(element), [0.0] * 4)
    queue.close(session)
    for _ in range(7):  # What was queued is still given...
      session.run(element)
    with pytest.raises(tf.errors.OutOfRangeError):  # ...then it ends.
      session.run(element)


def test_a_chunk_is_no_larger_than_the_run_needs():
  dataset = _dataset()
  specs = tf.nest.flatten(dataset.element_spec)
  queue = destination.EmulatedQueue(
      dataset, specs, capacity=3, sizes=InfeedLayout(min_chunk_steps=8),
      name="train", max_steps=5)
  assert queue.fill.chunk == 5


def test_a_device_infeed_is_fed_one_by_one_and_dequeued_by_the_device():
  dataset = _dataset()
  enqueued = tf.queue.FIFOQueue(10, [tf.float32], shapes=[[4]])
  infeed = destination.DeviceInfeed(
      dataset, lambda tensors: enqueued.enqueue(tensors), "train")
  assert isinstance(infeed.fill, fill.ElementFill)
  assert not infeed.queued
  with pytest.raises(RuntimeError, match="The train infeed has a custom "
                     "enqueue; the device dequeues it."):
    infeed.dequeue()
  with tf.compat.v1.Session() as session:
    session.run(infeed.fill.iterator.initializer)
    assert infeed.fill.run(session, 3) == (3, 3)
    infeed.close(session)  # Nothing to close: the device's own.
    assert session.run(enqueued.size()) == 3


def _discard_loops(graph):
  return [op.name for op in graph.get_operations()
          if op.type in ("While", "StatelessWhile")
          and "discard_loop" in op.name]


@pytest.mark.parametrize("per_element_bytes", [
    64 * 2**10,  # A ChunkFill.
    16,  # An ElementFill.
])
@pytest.mark.parametrize("drops", [True, False])
def test_only_a_fill_that_drops_builds_the_discard_loop(per_element_bytes,
                                                        drops):
  dataset = _dataset()
  queue = destination.EmulatedQueue(
      dataset, tf.nest.flatten(dataset.element_spec), capacity=2,
      sizes=InfeedLayout(min_chunk_steps=2,
                         per_element_bytes=per_element_bytes),
      name="train", max_steps=100, drops=drops)
  graph = tf.compat.v1.get_default_graph()
  assert bool(_discard_loops(graph)) == drops
  element = queue.dequeue()
  with tf.compat.v1.Session() as session:
    session.run(queue.fill.iterator.initializer)
    if not drops:
      with pytest.raises(RuntimeError, match="without `drops`"):
        queue.fill.drop(session, 4)
      return
    queue.fill.drop(session, 4)
    queue.fill.run(session, queue.fill.asked(2))
    np.testing.assert_array_equal(session.run(element), [4.0] * 4)


def test_a_device_infeed_without_drops_builds_no_discard_loop():
  dataset = _dataset()
  destination.DeviceInfeed(dataset, lambda values: tf.no_op(), "train",
                           drops=False)
  assert not _discard_loops(tf.compat.v1.get_default_graph())

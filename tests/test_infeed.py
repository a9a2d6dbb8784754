"""HostInfeed: a real host thread filling a real queue in a real session."""

import contextlib
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th

from tpu_harness._infeed.host import HostInfeed
from tpu_harness._infeed.layout import DEFAULT_LAYOUT
from tpu_harness._infeed.layout import InfeedLayout
from tpu_harness.errors import InputShapeError


@contextlib.contextmanager
def _running(infeed):
  """A session with the infeed's host thread started, stopped at the end."""
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    try:
      yield session
    finally:
      infeed.stop()


def _dataset(n):
  x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
  return tf.data.Dataset.from_tensor_slices({"x": x, "i": np.arange(n)})


def test_counts_what_it_moved_and_stops_at_end_of_input():
  infeed = HostInfeed(_dataset(5), capacity=4, name="t")
  element = infeed.dequeue()
  with _running(infeed) as session:
    infeed.request(3)
    assert infeed.wait() == 3
    assert [session.run(element)["i"] for _ in range(3)] == [0, 1, 2]
    infeed.request(3)
    assert infeed.wait() == 2  # The input ended.
    assert [session.run(element)["i"] for _ in range(2)] == [3, 4]
    infeed.request(3)
    assert infeed.wait() == 0


# Chunks of exactly `capacity` elements, as with large elements.
CHUNK_OF_ONE_LOOP = InfeedLayout(min_chunk_steps=1)
# Every element counts as large.
LARGE_ELEMENTS = InfeedLayout(per_element_bytes=1)


def test_host_fills_while_device_drains():
  infeed = HostInfeed(_dataset(10), capacity=3, name="t",
                      sizes=CHUNK_OF_ONE_LOOP)
  element = infeed.dequeue()
  with _running(infeed) as session:
    infeed.request(3)
    assert infeed.wait() == 3
    infeed.request(3)  # The queue holds two chunks.
    assert infeed.wait() == 3
    infeed.request(3)  # Blocks on the full queue until we dequeue.
    got = [session.run(element)["i"] for _ in range(3)]
    assert infeed.wait() == 3
    got += [session.run(element)["i"] for _ in range(6)]
    infeed.request(3)
    assert infeed.wait() == 1  # The input ended.
    got += [session.run(element)["i"]]
    assert got == list(range(10))


def test_elements_of_a_chunk_beyond_a_request_serve_the_next_ones():
  # Small elements: one host Session.run reads and enqueues a chunk of
  # min_chunk_steps elements, which serves many requests of one step.
  infeed = HostInfeed(_dataset(100).repeat(), capacity=1, name="t")
  element = infeed.dequeue()
  fills = []
  with _running(infeed) as session:
    run = session.run

    def counting_run(fetches, *args, **kwargs):
      if fetches is infeed._fill._op:  # pylint: disable=protected-access
        fills.append(1)
      return run(fetches, *args, **kwargs)

    session.run = counting_run
    got = []
    for _ in range(2 * DEFAULT_LAYOUT.min_chunk_steps):
      infeed.request(1)
      assert infeed.wait() == 1
      got.append(run(element)["i"])
  assert got == list(range(2 * DEFAULT_LAYOUT.min_chunk_steps))
  assert len(fills) == 2


def test_request_beyond_capacity_is_refused():
  infeed = HostInfeed(_dataset(10), capacity=3, name="t")
  for steps in (0, 4):
    with pytest.raises(ValueError, match=rf"`steps` \({steps}\) must be in "
                       r"1..3, the t infeed's capacity"):
      infeed.request(steps)


def test_stop_cancels_a_blocked_enqueue():
  infeed = HostInfeed(_dataset(10).repeat(), capacity=2, name="t",
                      sizes=CHUNK_OF_ONE_LOOP)
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    for _ in range(2):  # Two chunks fill the queue.
      infeed.request(2)
      assert infeed.wait() == 2
    infeed.request(2)  # Blocks: the queue is full.
    stopper = threading.Thread(target=infeed.stop)
    stopper.start()
    stopper.join(timeout=60)
    assert not stopper.is_alive()


def _closes(session):
  """Counts the session's runs of a queue's close from now on."""
  closes = []
  run = session.run

  def counting_run(fetches, *args, **kwargs):
    if getattr(fetches, "type", None) == "QueueCloseV2":
      closes.append(fetches.name)
    return run(fetches, *args, **kwargs)

  session.run = counting_run
  return closes


@pytest.mark.parametrize("endless, sizes, dequeued, closed", [
    (False, CHUNK_OF_ONE_LOOP, 3, False),  # Buffered, all steps used: idle.
    (True, LARGE_ELEMENTS, 3, False),      # Streamed, the same.
    (True, CHUNK_OF_ONE_LOOP, 1, True),    # A request not done: closed.
    (True, LARGE_ELEMENTS, 1, True),
])
def test_stop_closes_the_queue_only_under_a_pending_request(
    endless, sizes, dequeued, closed):
  dataset = _dataset(10).repeat() if endless else _dataset(10)
  infeed = HostInfeed(dataset, capacity=3, name="t", sizes=sizes)
  element = infeed.dequeue()
  with tf.compat.v1.Session() as session:
    infeed.start(session)
    closes = _closes(session)
    infeed.request(3)
    assert infeed.wait() == 3
    for _ in range(dequeued):
      session.run(element)
    if not closed:
      # The thread counts a request done just after it answered it.
      deadline = time.monotonic() + 60
      # pylint: disable=protected-access
      while infeed._done != infeed._put and time.monotonic() < deadline:
        time.sleep(0.001)
    else:
      infeed.request(3)  # Blocks on the queue: 2 of 3 places taken.
    infeed.stop()
  assert bool(closes) == closed


def test_input_errors_surface_in_wait():
  dataset = tf.data.Dataset.range(5).map(_check_small)
  infeed = HostInfeed(dataset, capacity=8, name="t")
  with _running(infeed):
    infeed.request(5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad input"):
      infeed.wait()


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


def test_max_steps_bounds_requests_chunks_and_reads():
  infeed = HostInfeed(_dataset(1000).repeat(), capacity=10**9, name="t",
                      max_steps=7)
  element = infeed.dequeue()
  with _running(infeed) as session:
    with pytest.raises(ValueError, match=r"`steps` \(8\) must be in 1..7"):
      infeed.request(8)
    infeed.request(7)
    assert infeed.wait() == 7
    assert [session.run(element)["i"] for _ in range(7)] == list(range(7))
    infeed.request(1)
    assert infeed.wait() == 0  # Nothing read past the steps needed.


@pytest.mark.parametrize("capacity,max_steps,max_bytes,fits", [
    (100, None, 3 * 100 * 16, True),     # Three chunks of 100 x 16 B.
    (100, None, 3 * 100 * 16 - 1, False),
    (100, 10, 3 * 32 * 16, True),        # max_steps=10 shrinks the chunk.
    (10**9, 5, 2**20, True),
    (10**9, None, 2**30, False),
])
def test_host_memory_limit(capacity, max_steps, max_bytes, fits):
  # An element is {"x": 2 float32, "i": int64} = 16 bytes.
  build = lambda: HostInfeed(_dataset(10), capacity=capacity, name="train",
                             max_steps=max_steps, max_bytes=max_bytes,
                             layout="iterations_per_loop=N, batch B")
  if fits:
    build()
  else:
    with pytest.raises(th.InfeedMemoryError) as info:
      build()
    message = str(info.value)
    assert message.startswith("The train infeed would hold up to 3 x ")
    assert "(iterations_per_loop=N, batch B), over the limit of" in message
    assert "Lower `iterations_per_loop` or the batch size" in message


@pytest.mark.parametrize("per_element_bytes, enqueue_op", [
    (1, "QueueEnqueueV2"),         # Every element counts as large.
    (2**40, "QueueEnqueueManyV2"),  # Every element counts as small.
])
def test_large_elements_are_enqueued_one_by_one(per_element_bytes,
                                                enqueue_op):
  infeed = HostInfeed(_dataset(7), capacity=3, name="t",
                      sizes=InfeedLayout(per_element_bytes=per_element_bytes))
  element = infeed.dequeue()
  types = {op.type for op in tf.compat.v1.get_default_graph().get_operations()}
  for function in tf.compat.v1.get_default_graph().as_graph_def(
      ).library.function:
    types |= {node.op for node in function.node_def}
  assert enqueue_op in types
  with _running(infeed) as session:
    got = []
    for expected in (3, 3, 1, 0):
      infeed.request(3)
      count = infeed.wait()
      assert count == expected
      got += [int(session.run(element)["i"]) for _ in range(count)]
  assert got == list(range(7))


# (name, dataset, the run's max_steps, answers after the first two
# requests of 4, the elements given): a known length; an endless input
# behind tf.compat.v1 maps (TPUEstimator programs' inputs), which do not
# report their input's length, known to be endless all the same.
_STREAMED = [
    ("known length", lambda: _dataset(7).repeat(2), None, (4, 2, 0),
     list(range(7)) * 2),
    ("endless behind v1 maps", lambda: tf.compat.v1.data.Dataset.range(
        7).repeat().map(lambda i: {"i": i}), 10, (2, 0),
     list(range(7)) + [0, 1, 2]),
]


@pytest.mark.parametrize("name,make,max_steps,answers,given", _STREAMED,
                         ids=[case[0] for case in _STREAMED])
def test_input_of_known_length_is_streamed(name, make, max_steps, answers,
                                           given):
  del name  # The test's id.
  infeed = HostInfeed(make(), capacity=4, name="t", sizes=LARGE_ELEMENTS,
                      max_steps=max_steps)
  element = infeed.dequeue()
  with _running(infeed) as session:
    assert infeed.streams
    # Promised at once, more than the queue has; elements follow as the
    # loop dequeues them.
    infeed.request(4)
    infeed.request(4)
    assert (infeed.wait(), infeed.wait()) == (4, 4)
    got = [int(session.run(element)["i"]) for _ in range(8)]
    for expected in answers:
      infeed.request(4)
      count = infeed.wait()
      assert count == expected
      got += [int(session.run(element)["i"]) for _ in range(count)]
  assert got == given


def test_a_v1_map_that_ends_an_endless_input_says_so():
  # A TF 1 idiom: a map function reading another iterator ends the input
  # when that one ends. Streamed as endless, the loop promised more fails,
  # saying why.
  with tf.init_scope():
    inner = tf.compat.v1.data.make_one_shot_iterator(
        tf.data.Dataset.range(100, 103))
  dataset = tf.compat.v1.data.Dataset.range(7).repeat().map(
      lambda i: {"i": inner.get_next()})
  infeed = HostInfeed(dataset, capacity=4, name="t", sizes=LARGE_ELEMENTS,
                      max_steps=10)
  element = infeed.dequeue()
  with _running(infeed) as session:
    assert infeed.streams
    infeed.request(4)
    assert infeed.wait() == 4
    assert [int(session.run(element)["i"]) for _ in range(3)] == [
        100, 101, 102]
    with pytest.raises(tf.errors.OutOfRangeError):
      session.run(element)
    with pytest.raises(th.InputEndedEarlyError, match="3 of the 4 steps"):
      infeed.raise_if_failed()


def test_input_of_unknown_length_is_not_streamed():
  dataset = _dataset(7).filter(lambda e: e["i"] >= 0)
  infeed = HostInfeed(dataset, capacity=4, name="t", sizes=LARGE_ELEMENTS)
  element = infeed.dequeue()
  with _running(infeed) as session:
    assert not infeed.streams
    got = []
    for expected in (4, 3, 0):
      infeed.request(4)
      count = infeed.wait()
      assert count == expected
      got += [int(session.run(element)["i"]) for _ in range(count)]
  assert got == list(range(7))


def test_a_streamed_input_that_fails_says_why():
  dataset = tf.data.Dataset.range(5).map(_check_small).map(
      lambda i: {"i": i})
  infeed = HostInfeed(dataset, capacity=4, name="t", sizes=LARGE_ELEMENTS)
  element = infeed.dequeue()
  with _running(infeed) as session:
    assert infeed.streams
    infeed.request(4)
    assert infeed.wait() == 4  # Promised: the length is known (5).
    assert [int(session.run(element)["i"]) for _ in range(2)] == [0, 1]
    # The third element fails: the loop's dequeue stops, and the infeed
    # says why.
    with pytest.raises(tf.errors.OutOfRangeError):
      session.run(element)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad input"):
      infeed.raise_if_failed()
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad input"):
      infeed.wait()


def test_a_custom_infeed_smaller_than_a_loop_is_streamed_into():
  # A stand-in for a TPU's infeed: it holds one element, a loop needs 3.
  sink = tf.queue.FIFOQueue(1, [tf.int64], shapes=[[]])
  infeed = HostInfeed(tf.data.Dataset.range(10).repeat(), capacity=3,
                      name="t", enqueue_fn=lambda values: sink.enqueue(
                          values[0]))
  taken = sink.dequeue()
  guard = tf.compat.v1.RunOptions(timeout_in_ms=60000)  # Fails, not hangs.
  with _running(infeed) as session:
    assert infeed.streams
    got = []
    for _ in range(3):
      infeed.request(3)
      assert infeed.wait() == 3  # Before the elements are in the sink.
      got += [int(session.run(taken, options=guard)) for _ in range(3)]
  assert got == [0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("skip_steps, discard_loop", [(0, False),
                                                       (2, True)])
def test_the_discard_loop_is_built_only_to_skip_steps(skip_steps,
                                                      discard_loop):
  # An evaluation's or a prediction's infeed (no skip, no position) never
  # drops elements.
  infeed = HostInfeed(_dataset(5), capacity=2, name="t",
                      skip_steps=skip_steps)
  element = infeed.dequeue()
  graph = tf.compat.v1.get_default_graph()
  assert any("discard_loop" in op.name for op in graph.get_operations()
             ) == discard_loop
  with _running(infeed) as session:
    infeed.request(2)
    assert infeed.wait() == 2
    assert [session.run(element)["i"] for _ in range(2)] == [
        skip_steps, skip_steps + 1]

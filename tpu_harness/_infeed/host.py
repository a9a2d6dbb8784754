"""The host infeed: a host thread feeding a queue that the loop reads.

Host side: before each loop the runner `request`s k steps; a host thread
makes sure k elements are in the queue, stopping early at the end of the
input, and reports how many it made available (`wait`). The runner then runs
the device loop for exactly that many steps, and asks for the next loop's
steps before it does, so the host fills the queue while the device loop
drains it.

The emulated queue is filled a chunk at a time (one `Session.run` of one
batched read and one `enqueue_many`) of a loop or more; elements beyond a
request stay queued and answer the next at once. Host memory is bounded by
three chunks. Large elements (an image batch) are enqueued one by one by an
in-graph loop, without copies (`tpu_harness._infeed.layout` sizes chunks and
says why). If, besides, tf.data knows the input's length (`cardinality()`:
endless after `repeat()`, or a count), the infeed streams, as a TPU host
does: a request is answered at once with the steps the input still has, and
the host thread enqueues them while the loop dequeues, so the queue holds a
few elements, not a loop of them (a loop of image batches no longer fits in
the CPU's cache). An input that fails (or ends short of its length) while
streamed closes the queue under the loop; `raise_if_failed` says why. Given
the steps a run needs (`max_steps`), the infeed never asks for more
elements than that, and no chunk is larger (tf.data's own optimizations may
still read an element or two ahead inside the pipeline).

With a custom `enqueue_fn` (a TPU's infeed, which takes one element at a
time), a request runs an in-graph loop that enqueues up to k elements one
by one, streamed where the input's length is known, as TPUEstimator's
infeed thread did, so the TPU's infeed never holds a whole loop. (An input
that fails while streamed to a TPU leaves the device loop waiting for
input, as under TPUEstimator.)

A resumed training run's infeed restores the input position saved with
its checkpoint, or reads and drops the steps already trained on, before
the first request (`position`, see `tpu_harness._infeed.position`: the
host thread reads the iterator's state at the fills where a save is
expected); if that leaves nothing to read (the pass's input is used up), it
starts a new pass of the input. Without a position it drops `skip_steps`.

Device side: the loop calls `dequeue()` once per step.

The parts: where the elements go (`destination`: the emulated queue or a
device's infeed) and how the input is read into it (`fill`: chunks or
elements), how requests are answered (`requests`: buffered or streamed),
how reads are sized (`layout.InfeedLayout`); this module holds the host
thread, the start and stop, and the position's hooks. What the loops and
the runner see of it, and of a pod's (`pod.PodInfeed`), is
`protocol.Infeed`; `protocol.InfeedHook` starts and stops it with each
session.
"""

from __future__ import annotations

import contextlib
import queue as queue_lib
import threading
from typing import Any, Callable, List, Optional

from absl import logging
import tensorflow as tf

from tpu_harness._infeed import destination as destination_lib
from tpu_harness._infeed import host_position
from tpu_harness._infeed import layout as layout_lib
from tpu_harness._infeed import position as position_lib
from tpu_harness._infeed import requests as requests_lib
from tpu_harness._infeed.layout import leaf_paths
from tpu_harness.errors import InputEndedEarlyError
from tpu_harness.errors import InputShapeError


class HostInfeed:
  """Queue, iterator and host thread of one input pipeline."""

  def __init__(self, dataset: tf.data.Dataset, capacity: int, name: str,
               enqueue_fn: Optional[Callable[[List[tf.Tensor]],
                                             tf.Operation]] = None,
               *,
               max_steps: Optional[int] = None,
               max_bytes: Optional[int] = None,
               layout: str = "",
               skip_steps: int = 0,
               position: Optional[host_position.HostPosition] = None,
               sizes: layout_lib.InfeedLayout = layout_lib.DEFAULT_LAYOUT):
    """Builds the host-side ops in the default graph.

    Args:
      dataset: elements of one step each, every tensor of fixed shape.
      capacity: the most steps one request asks for; the emulated queue
        holds up to two chunks (`sizes.chunk_steps`) of at least that many.
      name: used in op names and messages.
      enqueue_fn: enqueues one element's flat tensors somewhere else than
        the emulated queue (a TPU's infeed); `dequeue()` is then the
        device's business.
      max_steps: the most steps the run needs, or None (until the input
        ends): no more elements are ever read, and requests, chunks and
        the queue are no larger.
      max_bytes: the most host memory the emulated queue's chunks may take
        (three chunks: two queued, one being read); None: no limit.
      layout: how the caller sized a step, for the InfeedMemoryError
        message (e.g. "iterations_per_loop=100, train_batch_size=128").
      skip_steps: steps of input to read and drop first (those a resumed
        run already trained on), unless `position` restores a saved one.
      position: saves the infeed's position with checkpoints and restores
        it at start (needs `max_steps`); see `tpu_harness._infeed.position`.
      sizes: how reads are sized (`layout.InfeedLayout`).

    Raises:
      InputShapeError: an element tensor has an unknown dimension.
      InfeedMemoryError: three chunks would exceed `max_bytes`.
    """
    self._name = name
    if position is not None:
      dataset = position.prepare(dataset)
    dataset = layout_lib.without_autotune_thread(dataset)
    self._max_steps = max_steps
    self._skip_steps = skip_steps
    self._position = position
    self._take = None
    if max_steps is not None:
      # The count is fed at initialization: a restored iterator's take has
      # already given some (see `start`).
      self._take = tf.compat.v1.placeholder_with_default(
          tf.constant(max_steps, tf.int64), [], name=f"{name}_take")
      dataset = dataset.take(self._take)
      capacity = max(1, min(capacity, max_steps))
    elif position is not None:
      raise ValueError("An infeed that saves its position needs max_steps.")
    self._capacity = capacity
    self._structure = dataset.element_spec
    specs = tf.nest.flatten(self._structure)
    for path, spec in zip(leaf_paths(self._structure), specs):
      if not spec.shape.is_fully_defined():
        raise InputShapeError(
            f"`input_fn` must return a tf.data.Dataset whose elements have "
            f"fixed shapes (batch with drop_remainder=True); {path} has shape "
            f"{spec.shape}.")
    self._dtypes = [spec.dtype for spec in specs]
    self._shapes = [spec.shape for spec in specs]
    # Elements are read and dropped only to skip steps, or where a
    # position's start says so (see `_start`).
    drops = skip_steps > 0 or position is not None
    with tf.name_scope(f"{name}_infeed"):
      self._destination = (
          destination_lib.DeviceInfeed(dataset, enqueue_fn, name,
                                       drops=drops)
          if enqueue_fn is not None else destination_lib.EmulatedQueue(
              dataset, specs, capacity, sizes, name=name,
              max_steps=max_steps, max_bytes=max_bytes, layout=layout,
              drops=drops))
      self._fill = self._destination.fill
      if position is not None:
        position.attach(self._fill.iterator)
    self._answers = None
    self._requests: queue_lib.Queue = queue_lib.Queue()
    # Requests put for the host thread, and those it has done: equal, the
    # thread runs nothing and will not (see `stop`).
    self._put = self._done = 0
    self._thread: Optional[threading.Thread] = None
    self._session = None
    self._stopping = False
    self._take_feed = None
    # The input's length at the last initialization (tf.data's
    # cardinality; None where the fill does not stream).
    self._length: Optional[int] = None
    self._failure: Optional[BaseException] = None
    # Host thread: elements the iterator has read since `start` (those
    # dropped included), take's count at start, and the most the take
    # lets it read; caller: steps answered so far.
    self._reads = 0
    self._taken = 0
    self._read_limit = 0
    self._answered = 0
    # The first request since `start`, and whether a new pass was started
    # because the resumed one was used up.
    self._first_request: Optional[int] = None
    self._new_pass = False
    # Whether nothing was read yet since a saved position was restored.
    self._just_restored = False

  @property
  def element_spec(self) -> Any:
    return self._structure

  @property
  def streams(self) -> bool:
    """Whether, since `start`, requests are answered at once and the
    elements enqueued while the loop runs (large elements, input of known
    length)."""
    return isinstance(self._answers, requests_lib.StreamedRequests)

  @property
  def shapes(self) -> List[tf.TensorShape]:
    """Shapes of the element's flat tensors."""
    return list(self._shapes)

  @property
  def dtypes(self) -> List[tf.DType]:
    return list(self._dtypes)

  def dequeue(self) -> Any:
    """Device side: the next step's element, in the dataset's structure."""
    values = self._destination.dequeue()
    if not isinstance(values, (list, tuple)):
      values = [values]
    for value, shape in zip(values, self._shapes):
      value.set_shape(shape)
    return tf.nest.pack_sequence_as(self._structure, list(values))

  # Starting.

  def start(self, session: tf.compat.v1.Session) -> None:
    """Initializes the iterator (restoring a saved position, or reading
    and dropping the steps already trained on) and starts the host
    thread."""
    self.stop()
    self._new_pass = False
    self._start(session, fresh=False)

  def _start(self, session, fresh: bool) -> None:
    skip, taken, state = self._initialize(session, fresh)
    self._just_restored = state is not None
    # The most elements the take lets this start read.
    self._read_limit = skip + (self._max_steps or 0)
    self._session = session
    self._stopping = False
    self._failure = None
    self._reads = 0
    self._taken = taken
    self._answered = 0
    self._first_request = None
    self._fill.reset()
    if self._position is not None:
      self._position.begin(skip, taken, state)
    self._drop(session, skip)
    if self._position is not None:
      self._position.fill_ended(self._reads)
    self._answers = self._answerer(taken)
    self._requests = queue_lib.Queue()
    self._put = self._done = 0
    self._thread = threading.Thread(target=self._serve, daemon=True,
                                    name=f"{self._name}_infeed")
    self._thread.start()

  def _answerer(self, taken: int):
    """Streamed requests where the input's length is known (element fills
    only), else buffered."""
    length = self._length
    if length is not None:
      if length >= 0 or length == int(tf.data.INFINITE_CARDINALITY):
        # Of the take's count, `taken` were given before this start.
        return requests_lib.StreamedRequests(
            self._run_fill, (max(0, length - taken - self._reads)
                             if length >= 0 else None))
    return requests_lib.BufferedRequests(
        self._run_fill, self._fill.asked, queued=self._destination.queued,
        name=self._name)

  def _initialize(self, session, fresh: bool) -> tuple:
    """Initializes the iterator: restored to the saved position if there
    is one that fits, or a new pass (`fresh`). Returns (elements to drop,
    take's count so far, the state restored or None)."""
    position = self._position
    if position is None:
      self._init_iterator(session, self._skip_steps)
      return self._skip_steps, 0, None
    start = position.start(fresh)
    if start.state is not None:
      self._init_iterator(session, start.taken + start.skip, start.feed)
      if position.restore(session, start.state):
        return start.skip, start.taken, start.state
      start = position.after_failed_restore(start)
    self._init_iterator(session, start.skip, start.feed)
    return start.skip, 0, None

  def _init_iterator(self, session, before: int, feed=None) -> None:
    """Initializes the iterator to give `before` elements more than the
    run's `max_steps`, with `feed` (the input's seeds)."""
    self._take_feed = dict(feed or {})
    if self._take is not None:
      self._take_feed[self._take] = before + self._max_steps
    # The input's length (see `_answerer`) in the same run: one executor
    # fewer to make at start-up.
    fetches = [self._fill.iterator.initializer]
    if self._fill.cardinality is not None:
      fetches.append(self._fill.cardinality)
    values = session.run(fetches, self._take_feed or None)
    self._length = int(values[1]) if len(values) > 1 else None

  def _drop(self, session, count: int) -> None:
    """Reads and drops `count` elements (in chunks, whole chunks now and
    the rest from the first chunk filled)."""
    if not count:
      return
    with self._naming_a_restored_position():
      self._reads += self._fill.drop(session, count)
    logging.info("Read and dropped %d steps of %s input already trained "
                 "on.", count, self._name)

  # The host thread.

  def _serve(self) -> None:
    while True:
      steps = self._requests.get()
      if steps is None:
        return
      if isinstance(self._answers, requests_lib.StreamedRequests):
        if not self._stream(steps):
          return
      elif not self._answers.serve(steps, lambda: self._stopping):
        return
      self._done += 1

  def _run_fill(self, asked: int) -> tuple:
    """Host thread: one fill of up to `asked` elements, with the position
    told before and after; returns (elements read, enqueued)."""
    position = self._position
    if position is not None:
      position.fill_started(self._session, self._reads, asked)
    read, ended = 0, False
    try:
      with self._naming_a_restored_position():
        read, queued = self._fill.run(self._session, asked)
      self._reads += read
      # Short of the take's end too: the input itself ended. (A fill that
      # raised did not: a save must not record a failed read as the end.)
      ended = read < asked and self._reads < self._read_limit
    finally:
      if position is not None:
        position.fill_ended(self._reads, complete=read == asked,
                            input_ended=ended)
    return read, queued

  @contextlib.contextmanager
  def _naming_a_restored_position(self):
    """Around a read: the first since a saved position was restored raises
    its TF error as a `RestoredPositionError` naming the position's
    checkpoint (the fingerprint cannot foresee every stale position)."""
    if not self._just_restored:
      yield
      return
    try:
      yield
    except (tf.errors.OutOfRangeError, tf.errors.CancelledError):
      raise  # The input's end, or the infeed stopping.
    except tf.errors.OpError as error:
      if self._stopping:
        raise
      raise position_lib.RestoredPositionError(
          self._position.checkpoint, error) from error
    self._just_restored = False

  def _stream(self, count: int) -> bool:
    """Host thread, streaming: enqueues `count` promised elements. If the
    input fails or ends short of them, records why and closes the queue,
    so that the loop waiting for them stops (`raise_if_failed` then says
    why); returns False then."""
    try:
      moved = self._answers.serve(count)
      if moved < count:
        raise InputEndedEarlyError(
            f"The {self._name} input ended after fewer elements than its "
            f"cardinality promised ({moved} of the {count} steps a loop "
            f"was given); a dataset whose length tf.data reports must have "
            f"that many elements.")
      return True
    except Exception as error:  # pylint: disable=broad-except
      if self._stopping:
        return False
      if not isinstance(error, position_lib.RestoredPositionError):
        logging.error("%s infeed failed: %s", self._name, error)
      self._failure = error
      try:
        self._destination.close(self._session)
      except (tf.errors.OpError, RuntimeError, ConnectionError):
        pass  # The session is closing, or its host is gone.
      return False

  # The caller's side.

  def request(self, steps: int) -> None:
    """Asks for up to `steps` more steps in the queue: answered at once if
    queued elements cover them (or the input's length is known), else by
    the host thread.

    Raises:
      ValueError: `steps` exceeds the queue capacity; `wait()` would never
        return, since the enqueue loop reports only when it has finished.
    """
    if not 0 < steps <= self._capacity:
      raise ValueError(f"`steps` ({steps}) must be in 1..{self._capacity}, "
                       f"the {self._name} infeed's capacity.")
    if self._first_request is None:
      self._first_request = steps
    work = self._answers.request(steps)
    if work:
      self._put += 1
      self._requests.put(int(work))

  def wait(self) -> int:
    """Returns how many steps the oldest request enqueued (0: input ended).

    Raises:
      Exception: whatever the input pipeline raised on the host thread.
    """
    self.raise_if_failed()
    if self._position is not None:
      # The loops of earlier requests have run.
      self._position.consumed(self._answered)
    answer = self._answers.answer()
    if (answer == 0 and self._answered == 0 and not self._new_pass
        and self._position is not None and self._position.resumed):
      return self._start_new_pass()
    self._answered += answer
    return answer

  def _start_new_pass(self) -> int:
    """The resumed pass's input is used up: starts a new one, as a new
    `train()` on TPUEstimator called `input_fn` again; answers the first
    request again."""
    logging.info("The %s input of the pass resumed from %s is used up: a "
                 "new pass starts from its first element.", self._name,
                 self._position.checkpoint)
    self._new_pass = True
    asked = self._first_request
    self._stop_thread()
    self._start(self._session, fresh=True)
    self.request(asked)
    return self.wait()

  def stop(self) -> None:
    """Stops the host thread; pending enqueues are cancelled (the queue is
    closed where the thread has a request to do: at the end of a run that
    used every step it asked for, the thread is idle, and a close would be
    a run of its own, 0.01 to 0.02 s)."""
    if self._thread is None:
      return
    idle = self._done == self._put  # Only this thread puts requests.
    self._stopping = True
    self._requests.put(None)
    if not idle:
      try:
        self._destination.close(self._session)
      except (tf.errors.OpError, RuntimeError, ConnectionError) as error:
        # The session is closing, or its host is gone.
        logging.debug("Closing %s infeed: %s", self._name, error)
    self._thread.join()
    self._thread = None

  def _stop_thread(self) -> None:
    """Stops the host thread, idle with no request pending, leaving the
    queue open."""
    self._requests.put(None)
    self._thread.join()
    self._thread = None

  def raise_if_failed(self) -> None:
    """Raises what made the input fail while it was streamed, if anything.

    A loop whose `Session.run` stopped with OutOfRangeError or
    CancelledError calls this first: the queue it was reading was closed
    because of that failure.
    """
    if self._failure is not None:
      raise self._failure

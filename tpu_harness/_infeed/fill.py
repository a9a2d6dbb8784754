"""How a host infeed reads its input into the device's queue: two fills.

- `ChunkFill` (small elements into the emulated queue): one `Session.run`
  reads a chunk (a batch of `chunk` elements) and enqueues it with one
  `enqueue_many`; elements of a chunk that were already trained on (a
  resumed run's) are dropped by an offset into the first chunk filled.
- `ElementFill` (large elements, or any element into a TPU's infeed): one
  `Session.run` runs an in-graph loop that reads and enqueues up to the
  asked number of elements one by one, without copies; tf.data's
  `cardinality` (as `length.of` reads it) says whether their count is
  known, so that a request can be answered at once and the elements
  streamed (see `requests`).

Both build their graph ops when made (in the default graph) and say how
many elements a fill read: fewer than asked means the input ended. The
loop that reads and drops elements is built only for an infeed that may
drop some (`drops`): an evaluation's or a prediction's never does, and
the loop, with its two traced functions, took 7.5 ms of the 24 ms that
building the estimator bench's resnet eval infeed took (median of 15).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import tensorflow as tf

from tpu_harness._infeed import length
from tpu_harness._infeed import ops


class ChunkFill:
  """Reads a chunk of elements at a time into `queue`."""

  def __init__(self, dataset: tf.data.Dataset, queue: tf.queue.FIFOQueue,
               chunk: int, *, drops: bool = True):
    """Builds the fill's ops: `drops`, also those `drop` runs."""
    self.chunk = chunk
    self.iterator = tf.compat.v1.data.make_initializable_iterator(
        dataset.batch(chunk))
    self._offset = tf.compat.v1.placeholder_with_default(0, [],
                                                         name="offset")
    self._op = ops.enqueue_chunk(self.iterator, queue, self._offset)
    self._discard = _Discard(self.iterator) if drops else None
    self._next_offset = 0
    self.cardinality: Optional[tf.Tensor] = None  # Chunks are not streamed.

  def reset(self) -> None:
    self._next_offset = 0

  def asked(self, steps: int) -> int:
    """Elements a fill for `steps` steps reads: a whole chunk."""
    del steps  # A chunk is at least a request.
    return self.chunk

  def run(self, session, asked: int) -> tuple:
    """Reads and enqueues one chunk (`asked` elements); returns (elements
    read, of them enqueued: those past the offset)."""
    del asked  # Always a chunk.
    read = int(session.run(self._op, {self._offset: self._next_offset}))
    queued = max(0, read - self._next_offset)
    self._next_offset = 0
    return read, queued

  def drop(self, session, count: int) -> int:
    """Reads and drops `count` elements: whole chunks now, the rest from
    the first chunk filled. Returns the elements read now.

    Raises:
      RuntimeError: the fill was built without `drops`.
    """
    whole, self._next_offset = divmod(count, self.chunk)
    return self.chunk * _built(self._discard).run(session, whole)


class ElementFill:
  """Reads elements one by one, each enqueued by `enqueue_fn(flat
  tensors)` as it is read: `chunk` at a time when not streamed (into the
  emulated queue, which holds two chunks), or as many as asked (None: a
  TPU's infeed)."""

  def __init__(self, dataset: tf.data.Dataset,
               enqueue_fn: Callable[[List[tf.Tensor]], tf.Operation],
               chunk: Optional[int] = None, *, drops: bool = True):
    """Builds the fill's ops: `drops`, also those `drop` runs."""
    self.chunk = chunk
    self.iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
    self._steps = tf.compat.v1.placeholder(tf.int32, [], name="steps")
    self._op = ops.enqueue_elements(self.iterator, self._steps, enqueue_fn)
    self._discard = _Discard(self.iterator) if drops else None
    # Known at start: then requests are answered at once and the elements
    # streamed while the loop runs (see `requests.StreamedRequests`); an
    # endless input's behind tf.compat.v1 maps too (see `length`).
    self.cardinality: Optional[tf.Tensor] = length.of(dataset)

  def reset(self) -> None:
    pass

  def asked(self, steps: int) -> int:
    """Elements a fill for `steps` steps reads."""
    return steps if self.chunk is None else self.chunk

  def run(self, session, asked: int) -> tuple:
    """Reads and enqueues up to `asked` elements; returns (elements read,
    enqueued: the same)."""
    read = int(session.run(self._op, {self._steps: asked}))
    return read, read

  def drop(self, session, count: int) -> int:
    """Reads and drops up to `count` elements; returns how many.

    Raises:
      RuntimeError: the fill was built without `drops`.
    """
    return _built(self._discard).run(session, count)


class _Discard:
  """The op that reads and drops up to a fed count of an iterator's
  elements."""

  def __init__(self, iterator):
    self._count = tf.compat.v1.placeholder(tf.int32, [], name="discard")
    self._op = ops.discard(iterator, self._count)

  def run(self, session, count: int) -> int:
    """Reads and drops up to `count` elements; returns how many."""
    return int(session.run(self._op, {self._count: count}))


def _built(discard: Optional[_Discard]) -> _Discard:
  if discard is None:
    raise RuntimeError("This fill was built without `drops`: it cannot "
                       "drop elements.")
  return discard

"""Where a host infeed's elements go, and the fill that puts them there.

- `EmulatedQueue` (the CPU emulation): a FIFO queue on the host holding two
  chunks of steps, which the emulated device loop dequeues. Small elements
  go in a chunk at a time (`fill.ChunkFill`), large ones one by one
  (`fill.ElementFill`, which keeps the iterator's tensors as they are). The
  queue can be closed, so that a loop waiting on it stops.
- `DeviceInfeed` (a TPU): elements go one by one through `enqueue_fn` into
  the device's own infeed, a few steps deep, and are enqueued while the
  loop runs where the input's length allows; the device dequeues them, and
  its infeed cannot be closed from here.

`host.HostInfeed` makes one and reads through its `fill`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Union

import tensorflow as tf

from tpu_harness._infeed import fill as fill_lib
from tpu_harness._infeed import layout as layout_lib

Fill = Union[fill_lib.ChunkFill, fill_lib.ElementFill]


class EmulatedQueue:
  """The CPU emulation's infeed queue, and its fill."""

  # Requests are answered from what the queue holds (`requests`).
  queued = True

  def __init__(self, dataset: tf.data.Dataset, specs: List[tf.TensorSpec],
               capacity: int, sizes: layout_lib.InfeedLayout, *,
               name: str, max_steps: Optional[int] = None,
               max_bytes: Optional[int] = None, layout: str = "",
               drops: bool = True):
    """Builds the queue and the fill in the default graph.

    Args:
      dataset: elements of one step each, of `specs` (fixed shapes).
      specs: the element's flat tensor specs.
      capacity: the most steps one request asks for.
      sizes: how reads are sized (`layout.InfeedLayout`).
      name: for the InfeedMemoryError message.
      max_steps: the most steps the run needs (None: no bound): no chunk
        is larger.
      max_bytes: the most host memory three chunks may take; None: no
        limit.
      layout: how the caller sized a step, for the message.
      drops: the fill can read and drop elements (`fill.drop`).

    Raises:
      InfeedMemoryError: three chunks would exceed `max_bytes`.
    """
    chunk = sizes.chunk_steps(capacity, specs)
    if max_steps is not None:
      chunk = max(1, min(chunk, max_steps))
    layout_lib.check_memory(name, chunk, specs, max_bytes, layout)
    self._queue = tf.queue.FIFOQueue(
        2 * chunk, [spec.dtype for spec in specs],
        shapes=[spec.shape for spec in specs])
    self._close = self._queue.close(cancel_pending_enqueues=True)
    self.fill: Fill
    if sizes.one_by_one(specs):
      # Large elements go in one by one: the queue keeps the iterator's
      # tensors as they are, where batching a chunk and splitting it into
      # the queue would copy each element twice.
      self.fill = fill_lib.ElementFill(dataset, self._queue.enqueue, chunk,
                                       drops=drops)
    else:
      self.fill = fill_lib.ChunkFill(dataset, self._queue, chunk,
                                     drops=drops)

  def dequeue(self) -> Any:
    """Device side: the next step's flat tensors."""
    return self._queue.dequeue()

  def close(self, session) -> None:
    """Closes the queue: a loop waiting on it stops."""
    session.run(self._close)


class DeviceInfeed:
  """A device's own infeed (a TPU's), fed by `enqueue_fn`."""

  # Requests are answered as the elements are enqueued (`requests`).
  queued = False

  def __init__(self, dataset: tf.data.Dataset,
               enqueue_fn: Callable[[List[tf.Tensor]], tf.Operation],
               name: str, drops: bool = True):
    """Builds the fill in the default graph.

    Args:
      dataset: elements of one step each.
      enqueue_fn: enqueues one element's flat tensors into the device's
        infeed.
      name: for messages.
      drops: the fill can read and drop elements (`fill.drop`).
    """
    self._name = name
    self.fill: Fill = fill_lib.ElementFill(dataset, enqueue_fn, drops=drops)

  def dequeue(self) -> Any:
    raise RuntimeError(f"The {self._name} infeed has a custom enqueue; the "
                       f"device dequeues it.")

  def close(self, session) -> None:
    """Nothing: a TPU's infeed cannot be closed."""
    del session  # Unused.

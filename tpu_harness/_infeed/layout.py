"""The layout of the infeed's input: element sizes, chunks and the host
memory they take, names of an element's leaves, and the tf.data options the
infeed sets on the user's dataset.

The emulated infeed's queue is filled a chunk at a time: one `Session.run`
of one batched read and one `enqueue_many`. A chunk is `capacity` elements
(one loop), or more for small loops of small elements: up to
`min_chunk_steps` elements while it stays within `min_chunk_bytes`, so that
a loop of one step does not cost a host `Session.run` per step. (On CPU, an
in-graph loop that enqueues one element per iteration costs about 30 us per
element, a chunk about 5.) The queue holds up to two chunks and a third may
be being read, so host memory is bounded by three chunks; a layout whose
chunks would exceed `max_bytes` is refused when the infeed is built
(`InfeedMemoryError`). Elements of `per_element_bytes` or more (an image
batch) are instead enqueued one by one: the queue then holds the iterator's
own tensors, where a batched read and `enqueue_many` would copy each element
twice, which for a batch of 128 224x224x3 images costs more than the 30 us
per element of the loop. `InfeedLayout` holds these three sizes; the
loops pass one to their infeeds (tests pass their own).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, List, Optional

import tensorflow as tf

from tpu_harness.errors import InfeedMemoryError


@dataclasses.dataclass(frozen=True)
class InfeedLayout:
  """How the emulated infeed sizes its reads (see the module docstring).

  Attributes:
    min_chunk_steps: a chunk holds at least this many elements...
    min_chunk_bytes: ...while they stay within this many bytes.
    per_element_bytes: elements at least this large are enqueued one by
      one, without copies (scripts/bench/infeed.py).
  """
  min_chunk_steps: int = 32
  min_chunk_bytes: int = 16 * 2**20
  per_element_bytes: int = 64 * 2**10

  def one_by_one(self, specs: List[tf.TensorSpec]) -> bool:
    """Whether elements of `specs` are large: enqueued one by one."""
    return element_bytes(specs) >= self.per_element_bytes

  def chunk_steps(self, capacity: int, specs: List[tf.TensorSpec]) -> int:
    """Elements the emulated infeed reads and enqueues at a time:
    `capacity`, or up to `min_chunk_steps` if that many stay within
    `min_chunk_bytes`."""
    size = max(1, element_bytes(specs))
    return max(capacity, min(self.min_chunk_steps,
                             self.min_chunk_bytes // size))


DEFAULT_LAYOUT = InfeedLayout()


def without_autotune_thread(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`dataset` with tf.data's autotuning off, unless its options set it.

  TF 2.21's autotuning thread ignores the end of its iterator until its
  current wait is over; the waits double from 10 ms to 60 s as a pipeline
  runs. Destroying the infeed's iterator, when a session closes, waited for
  it: every train(), evaluate() and predict() paid up to a minute after its
  last loop (scripts/bench/end_of_train.py measured 0.5 s after 3 s of
  input). Without autotuning, AUTOTUNE parallelism is the host's core
  count, and the infeed's own queue is the prefetch buffer.
  """
  with warnings.catch_warnings():
    # In graph mode TF warns that options() is what Python set, which is
    # what is asked here.
    warnings.simplefilter("ignore", UserWarning)
    chosen = dataset.options().autotune.enabled
  if chosen is not None:
    return dataset  # The user's choice.
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def element_bytes(specs: List[tf.TensorSpec]) -> int:
  """Bytes of one element (one step of input)."""
  return sum(spec.shape.num_elements() * spec.dtype.size for spec in specs)


def check_memory(name: str, chunk: int, specs: List[tf.TensorSpec],
                 max_bytes: Optional[int], layout: str) -> None:
  """Raises InfeedMemoryError if three chunks exceed `max_bytes`."""
  step = element_bytes(specs)
  need = 3 * chunk * step
  if max_bytes is not None and need > max_bytes:
    raise InfeedMemoryError(
        f"The {name} infeed would hold up to 3 x {chunk} steps x "
        f"{size_text(step)} = {size_text(need)} of input in host memory "
        f"({layout}), over the limit of {size_text(max_bytes)} "
        f"(RunConfig.max_infeed_bytes). Lower `iterations_per_loop` or the "
        f"batch size, or raise max_infeed_bytes if the host has the memory.")


def size_text(count: int) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if count >= scale:
      return f"{count / scale:.1f} {unit}"
  return f"{count} B"


def leaf_paths(structure: Any, prefix: str = "element") -> list:
  """Readable names of a nested structure's leaves, in tf.nest.flatten order
  (dict keys sorted, sequences in order)."""
  if isinstance(structure, dict):
    return [path for key in sorted(structure)
            for path in leaf_paths(structure[key], f"{prefix}[{key!r}]")]
  if isinstance(structure, (list, tuple)):
    return [path for index, item in enumerate(structure)
            for path in leaf_paths(item, f"{prefix}[{index}]")]
  return [prefix]

"""The host infeed's graph ops: fill the queue from the iterator, a chunk at
a time or one element at a time, and read and drop elements.

Each runs in one host `Session.run` (see `tpu_harness._infeed.host`) and returns
how many elements it read: fewer than asked means the input ended.
"""

from __future__ import annotations

from typing import Callable, List

import tensorflow as tf


def enqueue_chunk(iterator, queue: tf.queue.FIFOQueue,
                  offset: tf.Tensor) -> tf.Tensor:
  """Reads the next chunk (an element of `iterator`, which batches the
  input) and enqueues its elements but the first `offset`; returns the
  chunk's size (0: the input ended)."""
  optional = iterator.get_next_as_optional()

  def enqueue():
    values = tf.nest.flatten(optional.get_value())
    kept = [value[offset:] for value in values]
    with tf.control_dependencies([queue.enqueue_many(kept)]):
      return tf.shape(values[0])[0]

  return tf.cond(optional.has_value(), enqueue, lambda: tf.constant(0))


def enqueue_elements(iterator, steps: tf.Tensor,
                     enqueue_fn: Callable[[List[tf.Tensor]], tf.Operation]
                     ) -> tf.Tensor:
  """Reads up to `steps` elements and enqueues each with `enqueue_fn(flat
  tensors)` as it is read; returns how many."""
  return _each(iterator, steps, enqueue_fn, "enqueue_loop")


def discard(iterator, count: tf.Tensor) -> tf.Tensor:
  """Reads and drops up to `count` of the iterator's elements; returns how
  many. (A loop of its own, without `_each`'s tf.cond: nothing is done
  with an element, and a cond's two branches are functions to trace.)"""

  def body(done, ended):
    del ended  # Unused: the loop's condition reads it.
    read = iterator.get_next_as_optional().has_value()
    return done + tf.cast(read, tf.int32), tf.logical_not(read)

  done, _ = tf.while_loop(
      lambda done, ended: tf.logical_and(done < count,
                                         tf.logical_not(ended)),
      body, [tf.constant(0), tf.constant(False)], name="discard_loop")
  return done


def _each(iterator, count: tf.Tensor,
          action: Callable[[List[tf.Tensor]], tf.Operation],
          name: str) -> tf.Tensor:
  """An in-graph loop: reads up to `count` elements, running `action` on
  each one's flat tensors; returns how many it read."""

  def body(done, ended):
    optional = iterator.get_next_as_optional()

    def act():
      values = tf.nest.flatten(optional.get_value())
      with tf.control_dependencies([action(values)]):
        return done + 1, tf.constant(False)

    return tf.cond(optional.has_value(), act,
                   lambda: (done, tf.constant(True)))

  done, _ = tf.while_loop(
      lambda done, ended: tf.logical_and(done < count,
                                         tf.logical_not(ended)),
      body, [tf.constant(0), tf.constant(False)], name=name)
  return done

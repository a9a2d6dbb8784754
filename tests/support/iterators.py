"""Reading a dataset's elements and iterator state in a graph-mode session."""

import tensorflow as tf


def session_values(dataset, count, rewrite=None, seeds=None, state=None):
  """The first `count` elements of `dataset` (a fresh iterator in its own
  session), restored to `state` first if given; and the state after them."""
  iterator = tf.compat.v1.data.make_initializable_iterator(dataset)
  element = iterator.get_next()
  resource = iterator._iterator_resource  # pylint: disable=protected-access
  serialize = tf.io.serialize_tensor(tf.raw_ops.SerializeIterator(
      resource_handle=resource, external_state_policy=1))
  state_in = tf.compat.v1.placeholder(tf.string, [])
  restore = tf.raw_ops.DeserializeIterator(
      resource_handle=resource,
      serialized=tf.io.parse_tensor(state_in, tf.variant))
  with tf.compat.v1.Session() as session:
    feed = rewrite.seed_feed(seeds) if rewrite is not None else None
    session.run(iterator.initializer, feed)
    if state is not None:
      session.run(restore, {state_in: state})
    values = [session.run(element) for _ in range(count)]
    return values, session.run(serialize)

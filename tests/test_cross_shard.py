"""CrossShardOptimizer: N replicas' mean gradient == one replica's."""

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness import CrossShardOptimizer
from tpu_harness.loops import cross_shard

X = np.arange(24, dtype=np.float32).reshape(8, 3) / 10.0
Y = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)


def _loss(x, y):
  w = tf.compat.v1.get_variable("w", [3, 1],
                                initializer=tf.ones_initializer())
  return tf.reduce_mean(tf.square(tf.matmul(x, w) - y))


def _step(replicas):
  """One SGD step on X, Y split across `replicas`; returns (w, step)."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  ops = []
  with cross_shard.replica_group(replicas) as replica:
    for index, (x, y) in enumerate(zip(np.split(X, replicas),
                                       np.split(Y, replicas))):
      reuse = tf.compat.v1.AUTO_REUSE if index else None
      with replica(index), tf.compat.v1.variable_scope("m", reuse=reuse):
        optimizer = CrossShardOptimizer(
            tf.compat.v1.train.GradientDescentOptimizer(0.5))
        ops.append(optimizer.minimize(_loss(x, y), global_step=global_step))
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(ops)
    with tf.compat.v1.variable_scope("m", reuse=True):
      return session.run([tf.compat.v1.get_variable("w"), global_step])


@pytest.mark.parametrize("replicas", [2, 4, 8])
def test_mean_of_replica_gradients_equals_full_batch_gradient(replicas):
  with tf.Graph().as_default():
    w_one, step_one = _step(1)
  with tf.Graph().as_default():
    w_many, step_many = _step(replicas)
  np.testing.assert_allclose(w_many, w_one, rtol=1e-5)
  assert step_one == step_many == 1  # Applied once, not per replica.
  assert not np.allclose(w_one, np.ones([3, 1]))


def test_outside_a_replica_group_it_is_the_wrapped_optimizer():
  loss = _loss(X, Y)
  op = CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.01)).minimize(loss)
  assert cross_shard.current_replica() is None
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    before = session.run(loss)
    session.run(op)
    assert session.run(loss) < before


def test_rejects_a_non_optimizer():
  with pytest.raises(TypeError, match=r"`optimizer` \('sgd'\) must be a "
                     "tf.compat.v1.train.Optimizer"):
    CrossShardOptimizer("sgd")

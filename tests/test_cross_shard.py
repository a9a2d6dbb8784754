"""CrossShardOptimizer: N replicas' mean gradient == one replica's."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.compat.v1.tpu import CrossShardOptimizer as TFCrossShardOptimizer  # pylint: disable=line-too-long

from support import estimator_programs as programs
from tpu_harness import CrossShardOptimizer
from tpu_harness import estimator as tf_estimator
from tpu_harness.loops import cross_shard

X = np.arange(24, dtype=np.float32).reshape(8, 3) / 10.0
Y = np.linspace(-1, 1, 8, dtype=np.float32).reshape(8, 1)


def _loss(x, y):
  w = tf.compat.v1.get_variable("w", [3, 1],
                                initializer=tf.ones_initializer())
  return tf.reduce_mean(tf.square(tf.matmul(x, w) - y))


def _step(replicas, learning_rate=0.5, callable_loss=False,
          reduction=tf.compat.v1.losses.Reduction.MEAN):
  """One SGD step on X, Y split across `replicas` (the loss given to
  minimize as a tensor, or as a callable); returns (w, step)."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  ops = []
  with cross_shard.replica_group(replicas) as replica:
    for index, (x, y) in enumerate(zip(np.split(X, replicas),
                                       np.split(Y, replicas))):
      reuse = tf.compat.v1.AUTO_REUSE if index else None
      with replica(index), tf.compat.v1.variable_scope("m", reuse=reuse):
        optimizer = CrossShardOptimizer(
            tf.compat.v1.train.GradientDescentOptimizer(learning_rate),
            reduction=reduction)
        ops.append(optimizer.minimize(
            (lambda x=x, y=y: _loss(x, y)) if callable_loss
            else _loss(x, y), global_step=global_step))
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


@pytest.mark.parametrize("replicas", [2, 4])
def test_a_callable_loss_is_averaged_too(replicas):
  with tf.Graph().as_default():
    w_one, _ = _step(1)
  with tf.Graph().as_default():
    w_many, _ = _step(replicas, callable_loss=True)
  np.testing.assert_allclose(w_many, w_one, rtol=1e-5)


def test_sum_reduction_adds_the_replicas_gradients():
  # Each replica's gradient of its mean loss, added: one replica's step at
  # twice the rate.
  with tf.Graph().as_default():
    w_one, _ = _step(1, learning_rate=1.0)
  with tf.Graph().as_default():
    w_two, _ = _step(2, reduction=tf.compat.v1.losses.Reduction.SUM)
  np.testing.assert_allclose(w_two, w_one, rtol=1e-5)


def _apply_step(replicas, learning_rate):
  """One SGD step on X, Y split across `replicas`, with gradients computed
  by tf.gradients and passed to apply_gradients, as BERT's optimizer does;
  returns w."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  ops = []
  with cross_shard.replica_group(replicas) as replica:
    for index, (x, y) in enumerate(zip(np.split(X, replicas),
                                       np.split(Y, replicas))):
      with replica(index), tf.compat.v1.variable_scope(
          "m", reuse=tf.compat.v1.AUTO_REUSE):
        loss = _loss(x, y)
        w = tf.compat.v1.get_variable("w")
        optimizer = CrossShardOptimizer(
            tf.compat.v1.train.GradientDescentOptimizer(learning_rate))
        ops.append(optimizer.apply_gradients(
            zip(tf.gradients(loss, [w]), [w]), global_step=global_step))
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(ops)
    return session.run(w)


@pytest.mark.parametrize("replicas", [2, 4])
def test_gradients_given_to_apply_gradients_are_summed_as_on_tpu_cores(
    replicas):
  # TF's TPU CrossShardOptimizer sums in apply_gradients; only its
  # compute_gradients divides the loss by the replicas. Each replica's
  # gradient of its mean loss, summed: one replica's step at N times the
  # rate.
  with tf.Graph().as_default():
    w_one = _apply_step(1, 0.5 * replicas)
  with tf.Graph().as_default():
    w_many = _apply_step(replicas, 0.5)
  np.testing.assert_allclose(w_many, w_one, rtol=1e-5)
  assert not np.allclose(w_one, np.ones([3, 1]))


def _two_optimizer_step(replicas):
  """One step of two optimizers on two variables (w by SGD, advancing the
  global step; b by Adam), X, Y split across `replicas`; returns (w, b,
  step, the names of the variables)."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  ops = []
  with cross_shard.replica_group(replicas) as replica:
    # The last replica built is the one that applies (as the runner does).
    for index, (x, y) in reversed(list(enumerate(zip(
        np.split(X, replicas), np.split(Y, replicas))))):
      with replica(index), tf.compat.v1.variable_scope(
          "m", reuse=tf.compat.v1.AUTO_REUSE):
        b = tf.compat.v1.get_variable("b", [1],
                                      initializer=tf.zeros_initializer())
        loss = _loss(x, y - b)
        w = tf.compat.v1.get_variable("w")
        first = CrossShardOptimizer(
            tf.compat.v1.train.GradientDescentOptimizer(0.5))
        second = CrossShardOptimizer(tf.compat.v1.train.AdamOptimizer(0.1))
        ops.append(tf.group(
            first.minimize(loss, global_step=global_step, var_list=[w]),
            second.minimize(loss, var_list=[b])))
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(ops)
    with tf.compat.v1.variable_scope("m", reuse=True):
      values = session.run([tf.compat.v1.get_variable("w"),
                            tf.compat.v1.get_variable("b"), global_step])
  return values + [sorted(v.op.name
                          for v in tf.compat.v1.global_variables())]


@pytest.mark.parametrize("replicas", [2, 4])
def test_two_optimizers_in_one_step_each_average_their_gradients(replicas):
  # A GAN's discriminator and generator, or an embedding's optimizer apart
  # from the rest's: each replica's k-th apply_gradients is the same
  # optimizer's.
  with tf.Graph().as_default():
    w_one, b_one, step_one, names_one = _two_optimizer_step(1)
  with tf.Graph().as_default():
    w_many, b_many, step_many, names_many = _two_optimizer_step(replicas)
  np.testing.assert_allclose(w_many, w_one, rtol=1e-5)
  np.testing.assert_allclose(b_many, b_one, rtol=1e-5)
  assert step_one == step_many == 1
  assert not np.allclose(b_one, 0)
  # Adam's variables made once, named as with one replica.
  assert names_many == names_one


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


# ----------------------------------------------------------------------------
# A TPUEstimator program's CrossShardOptimizer, however it was bound, on
# emulated TPU cores.

_OPTIMIZERS = {
    # cifar_keras / squeezenet: `from tensorflow.compat.v1.tpu import
    # CrossShardOptimizer` at the top of the program (above).
    "bound at import": lambda: TFCrossShardOptimizer,
    "tf.compat.v1.tpu": lambda: tf.compat.v1.tpu.CrossShardOptimizer,
    "tpu_harness": lambda: CrossShardOptimizer,
}


def _dense_model_fn(features, labels, mode, params):
  net = tf.compat.v1.layers.flatten(features)
  logits = tf.compat.v1.layers.dense(
      net, programs.CLASSES,
      kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1),
      name="logits")
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  optimizer = params["optimizer_class"]()(
      tf.compat.v1.train.GradientDescentOptimizer(0.5))
  train_op = optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return tf_estimator.tpu.TPUEstimatorSpec(mode=mode, loss=loss,
                                           train_op=train_op)


def _train(model_dir, binding, cores):
  config = tf_estimator.tpu.RunConfig(
      model_dir=model_dir, tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=2, num_shards=cores))
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=_dense_model_fn, config=config, use_tpu=True,
      train_batch_size=16, params={"optimizer_class": _OPTIMIZERS[binding]})
  estimator.train(lambda params: programs.input_fn(
      params, mode=tf_estimator.ModeKeys.TRAIN), max_steps=2)
  assert estimator.get_variable_value("global_step") == 2
  return estimator.get_variable_value("logits/kernel")


@pytest.mark.parametrize("cores", [1, 2], ids=["1 core", "2 cores"])
@pytest.mark.parametrize("binding", sorted(_OPTIMIZERS))
def test_any_binding_of_cross_shard_optimizer_averages_on_emulated_cores(
    tmp_path, binding, cores):
  methods = dict(vars(TFCrossShardOptimizer))
  kernel = _train(str(tmp_path / "model"), binding, cores)
  expected = _train(str(tmp_path / "harness"), "tpu_harness", cores)
  np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6)
  # TF's class is itself again once the replicas are built.
  assert TFCrossShardOptimizer is tf.compat.v1.tpu.CrossShardOptimizer
  assert dict(vars(TFCrossShardOptimizer)) == methods

"""replicas: N emulated replicas behave as N TPU cores would."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import NUM_FEATURES
from support.runner_models import data
from support.runner_models import train_input_fn
from support.runner_models import weights
from support.tf_fixtures import event_records


def _same_batch_input(batch):
  """Every step and every replica gets the same `batch` rows."""
  x, y = data(n=batch)

  def input_fn(params):
    assert params["batch_size"] == batch
    return tf.data.Dataset.from_tensors((x, y)).repeat()

  return input_fn


def _model_fn_with(dense, batch_norm, initializer):
  """Dense -> batch norm (momentum 0.9) -> Dense from the given layers,
  with TF's own tf.compat.v1.tpu.CrossShardOptimizer, as TPUEstimator
  programs write it."""

  def model_fn(features, labels, mode, params):
    hidden = dense(8, name="hidden",
                   kernel_initializer=initializer(seed=1))(features)
    hidden = batch_norm(momentum=0.9, name="bn")(
        hidden, training=mode == th.ModeKeys.TRAIN)
    output = dense(1, name="out", kernel_initializer=initializer(seed=2))(
        tf.nn.relu(hidden))
    loss = tf.reduce_mean(tf.square(output - labels))
    optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.05)
    if params["use_tpu"]:
      optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
    with tf.control_dependencies(
        tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
      train_op = optimizer.minimize(
          loss, global_step=tf.compat.v1.train.get_global_step())
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  return model_fn


_bn_model_fn = _model_fn_with(tf.compat.v1.layers.Dense,
                              tf.compat.v1.layers.BatchNormalization,
                              tf.compat.v1.glorot_uniform_initializer)
# Graph-mode tf.keras layers create new variables on every call: the
# replicas must share them all the same.
_keras_model_fn = _model_fn_with(tf.keras.layers.Dense,
                                 tf.keras.layers.BatchNormalization,
                                 tf.keras.initializers.GlorotUniform)


def _train(model_dir, shards, batch=16, steps=6, model_fn=_bn_model_fn,
           iterations_per_loop=3):
  runner = th.Runner(
      model_fn, th.RunConfig(str(model_dir),
                             iterations_per_loop=iterations_per_loop,
                             tpu=th.TPUConfig(num_shards=shards)),
      params={"use_tpu": shards > 1}, train_batch_size=batch * shards)
  runner.train(_same_batch_input(batch), max_steps=steps)
  return tf.train.load_checkpoint(runner.latest_checkpoint())


def test_batch_norm_statistics_match_one_replica_with_identical_data(
    tmp_path):
  one = _train(tmp_path / "one", shards=1)
  two = _train(tmp_path / "two", shards=2)
  for name in ("bn/moving_mean", "bn/moving_variance", "bn/gamma",
               "hidden/kernel", "out/kernel"):
    np.testing.assert_allclose(two.get_tensor(name), one.get_tensor(name),
                               rtol=1e-5, atol=1e-6, err_msg=name)
  # Six updates of momentum 0.9 from the initial zeros: 1 - 0.9**6 of the
  # way to the batch mean (compounding across 2 replicas would be 0.81**6).
  assert not np.allclose(one.get_tensor("bn/moving_mean"), 0)
  # Replica 1's own copies are never saved.
  assert not [n for n in two.get_variable_to_shape_map() if "replica_" in n]


def test_tf_cross_shard_optimizer_is_emulated_and_restored_afterwards(
    tmp_path):
  original = tf.compat.v1.tpu.CrossShardOptimizer
  _train(tmp_path / "two", shards=2, steps=3)
  assert tf.compat.v1.tpu.CrossShardOptimizer is original


def test_global_step_reads_in_model_fn_see_the_steps_start(tmp_path):
  seen = []

  def model_fn(features, labels, mode, params):
    spec = _bn_model_fn(features, labels, mode, params)
    # Built after the train op, read in the same step: still the start value.
    step = tf.compat.v1.train.get_global_step().read_value()
    record = tf.py_function(lambda s: seen.append(int(s)) or s, [step],
                            tf.int64)
    return th.ModelSpec(mode=mode, loss=spec.loss,
                        train_op=tf.group(spec.train_op, record))

  _train(tmp_path, shards=2, steps=6, model_fn=model_fn)
  # Two replicas, each reading steps 0..5.
  assert sorted(seen) == sorted(list(range(6)) * 2)


def test_per_host_input_splits_global_batches_among_replicas(tmp_path):
  sizes = []

  def input_fn(params):
    sizes.append(params["batch_size"])
    return train_input_fn()(params)

  def run(model_dir, shards, per_host):
    runner = th.Runner(
        _linear, th.RunConfig(
            str(model_dir), iterations_per_loop=4,
            tpu=th.TPUConfig(num_shards=shards)),
        train_batch_size=32,
        device_loop=th.CpuEmulationLoop(num_shards=shards,
                                        iterations_per_loop=4,
                                        per_host_input=per_host))
    runner.train(input_fn, max_steps=8)
    return weights(runner.latest_checkpoint())

  whole = run(tmp_path / "one", 1, False)
  split = run(tmp_path / "split", 2, True)
  # input_fn got the global batch (32) both times; the 2 replicas each took
  # 16 rows of it, so training equals one replica on the same batches.
  assert sizes == [32, 32]
  np.testing.assert_allclose(split, whole, rtol=1e-5)


def _linear(features, labels, mode, params):
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  loss = tf.reduce_mean(tf.square(features @ w - labels))
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.1))
  return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step()))


def test_group_assignment_is_refused_clearly(tmp_path):
  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1])
    loss = tf.reduce_mean(tf.square(features @ w - labels))
    optimizer = tf.compat.v1.tpu.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1),
        group_assignment=[[0, 1]])
    return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()))

  runner = th.Runner(model_fn, th.RunConfig(
      str(tmp_path), tpu=th.TPUConfig(num_shards=2)), train_batch_size=8)
  with pytest.raises(NotImplementedError, match="group_assignment"):
    runner.train(train_input_fn(), max_steps=2)


def test_keras_layers_are_shared_across_replicas(tmp_path):
  one = _train(tmp_path / "one", shards=1, model_fn=_keras_model_fn)
  two = _train(tmp_path / "two", shards=2, model_fn=_keras_model_fn)
  def model_variables(reader):  # Not the step, nor the input's position.
    return sorted(n for n in reader.get_variable_to_shape_map()
                  if n != "global_step"
                  and not n.startswith("tpu_harness_input/"))

  names = model_variables(two)
  # One set of variables, not one per replica.
  assert names == model_variables(one)
  assert len([n for n in names if "kernel" in n]) == 2
  for name in names:
    np.testing.assert_allclose(two.get_tensor(name), one.get_tensor(name),
                               rtol=1e-5, atol=1e-6, err_msg=name)


def _losses_model_fn(features, labels, mode, params):
  """mobilenet style: the loss through tf.compat.v1.losses and
  get_total_loss(), with an L2 term on a variable's regularizer."""
  w = tf.compat.v1.get_variable(
      "w", [NUM_FEATURES, 1], initializer=tf.zeros_initializer(),
      regularizer=lambda v: 0.01 * tf.reduce_sum(tf.square(v - 1.0)))
  tf.compat.v1.losses.mean_squared_error(labels, tf.matmul(features, w))
  loss = tf.compat.v1.losses.get_total_loss()
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.05)
  if params["use_tpu"]:
    optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
  train_op = optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)


def test_each_replicas_total_loss_is_its_own(tmp_path):
  """tf.compat.v1.losses.get_total_loss() in a replica sums that replica's
  losses (and the shared regularization), not every replica's built before
  it: the same weights as one replica on the same batch."""
  one = _train(tmp_path / "one", shards=1, model_fn=_losses_model_fn)
  two = _train(tmp_path / "two", shards=2, model_fn=_losses_model_fn)
  np.testing.assert_allclose(two.get_tensor("w"), one.get_tensor("w"),
                             rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# The optimizers TPUEstimator programs train with (issue 21): their slots,
# and Adam's beta1_power and beta2_power (tf.compat.v1.Variable, made when
# it first applies gradients), are created once and updated once per step
# with the averaged gradients, as on a TPU.

_OPTIMIZERS = {
    "adam": lambda rate: tf.compat.v1.train.AdamOptimizer(rate),
    "momentum": lambda rate: tf.compat.v1.train.MomentumOptimizer(
        rate, 0.9, use_nesterov=True),
    "rmsprop": lambda rate: tf.compat.v1.train.RMSPropOptimizer(
        rate, momentum=0.9),
    "adagrad": lambda rate: tf.compat.v1.train.AdagradOptimizer(rate),
}


def _optimizer_model_fn(name, shared=None):
  """A tf.compat.v1.layers layer then a tf.keras one, in a variable scope
  with AUTO_REUSE; the optimizer `name` on a learning-rate schedule, made
  in `model_fn`, or `shared` (made once, outside it)."""

  def model_fn(features, labels, mode, params):
    with tf.compat.v1.variable_scope("net", reuse=tf.compat.v1.AUTO_REUSE):
      hidden = tf.compat.v1.layers.dense(
          features, 8, activation=tf.nn.relu, name="hidden",
          kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
      output = tf.keras.layers.Dense(
          1, name="out",
          kernel_initializer=tf.keras.initializers.GlorotUniform(seed=2))(
              hidden)
      loss = tf.reduce_mean(tf.square(output - labels))
      optimizer = shared
      if optimizer is None:
        rate = tf.compat.v1.train.exponential_decay(
            0.05, tf.compat.v1.train.get_global_step(), decay_steps=2,
            decay_rate=0.5)
        optimizer = _OPTIMIZERS[name](rate)
        if params["use_tpu"]:
          optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
      train_op = optimizer.minimize(
          loss, global_step=tf.compat.v1.train.get_global_step())
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  return model_fn


def _all_variables(reader):
  """Every variable a checkpoint holds but the input's position."""
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith("tpu_harness_input/")}


def _assert_same_training(one, two):
  assert sorted(two) == sorted(one)
  for name, value in one.items():
    np.testing.assert_allclose(two[name], value, rtol=1e-5, atol=1e-6,
                               err_msg=name)


@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_optimizer_variables_are_made_once_and_shared(tmp_path, name,
                                                       step_graph):
  one = _all_variables(_train(
      tmp_path / "one", shards=1, steps=3, model_fn=_optimizer_model_fn(name),
      iterations_per_loop=step_graph))
  two = _all_variables(_train(
      tmp_path / "two", shards=2, steps=3, model_fn=_optimizer_model_fn(name),
      iterations_per_loop=step_graph))
  # The same variables (one set of slots, one beta1_power), trained alike.
  _assert_same_training(one, two)
  assert any("/out/kernel/" in n for n in two), sorted(two)  # Slots.
  if name == "adam":
    # Named in model_fn's scope as with one replica (not "net_1/...").
    assert {"net/beta1_power", "net/beta2_power"} <= set(two)
    # 0.9 at first, times 0.9 once per step: updated once, not per replica.
    np.testing.assert_allclose(two["net/beta1_power"], 0.9 ** 4, rtol=1e-6)


def test_an_optimizer_made_once_outside_model_fn_is_shared(tmp_path,
                                                           step_graph):
  def train(model_dir, shards):
    optimizer = tf.compat.v1.train.AdamOptimizer(0.05, name="Adam")
    if shards > 1:
      optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
    return _all_variables(_train(
        model_dir, shards=shards, steps=3,
        model_fn=_optimizer_model_fn("adam", shared=optimizer),
        iterations_per_loop=step_graph))

  _assert_same_training(train(tmp_path / "one", 1), train(tmp_path / "two", 2))


def test_a_variable_only_one_replica_makes_is_still_refused(tmp_path):
  """Not the optimizer's: `model_fn` itself builds a different model."""
  calls = []
  adam = _optimizer_model_fn("adam")

  def model_fn(features, labels, mode, params):
    calls.append(mode)
    if len(calls) == 2:  # Replica 0, built after replica 1.
      tf.Variable(lambda: tf.zeros([1]), name="extra")
    return adam(features, labels, mode, params)

  with pytest.raises(ValueError, match=r"Replica 0 creates more variables "
                     r"directly .*: `model_fn` must build the same variables "
                     r"for every replica"):
    _train(tmp_path, shards=2, steps=1, model_fn=model_fn,
           iterations_per_loop=1)


def _pretrained(directory):
  """A checkpoint holding `bert/w` (all 0.25) and `bert/b` (3), as a
  pretrained model's body; returns its path."""
  with tf.Graph().as_default():
    with tf.compat.v1.variable_scope("bert"):
      tf.compat.v1.get_variable(
          "w", initializer=np.full([NUM_FEATURES, 1], 0.25, np.float32))
      tf.compat.v1.get_variable("b", initializer=np.full([1], 3.0,
                                                         np.float32))
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return saver.save(session, os.path.join(directory, "bert_model.ckpt"))


def _fine_tuning_model_fn(pretrained, assignment_map):
  """BERT's fine-tuning off TPU: the body's variables initialized from
  `pretrained` by tf.compat.v1.train.init_from_checkpoint in `model_fn`
  itself, in every mode; a new head. EVAL's metric and PREDICT's
  predictions are `bert/w[0, 0]` as the model holds it."""

  def model_fn(features, labels, mode, params):
    with tf.compat.v1.variable_scope("bert"):
      w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1])
      b = tf.compat.v1.get_variable("b", [1])
    head = tf.compat.v1.get_variable("head", [1],
                                     initializer=tf.ones_initializer())
    tf.compat.v1.train.init_from_checkpoint(pretrained, assignment_map)
    prediction = (tf.matmul(features, w) + b) * head
    w00 = tf.fill(tf.shape(prediction)[:1], w[0, 0])
    if mode == th.ModeKeys.PREDICT:
      return th.ModelSpec(mode=mode, predictions={"w00": w00})
    loss = tf.reduce_mean(tf.square(prediction - labels))
    if mode == th.ModeKeys.EVAL:
      return th.ModelSpec(mode=mode, loss=loss, eval_metrics=(
          lambda w00: {"w00": tf.compat.v1.metrics.mean(w00)}, [w00]))
    optimizer = th.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1))
    return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()))

  return model_fn


@pytest.mark.parametrize("shards,assignment_map", [
    (1, {"bert/w": "bert/w", "bert/b": "bert/b"}),  # BERT's, by name.
    (2, {"bert/": "bert/"}),  # By scope, on emulated cores.
])
def test_init_from_checkpoint_in_model_fn_initializes_once_outside_the_loop(
    tmp_path, shards, assignment_map):
  pretrained = _pretrained(str(tmp_path))
  batch = 4 * shards
  runner = th.Runner(
      _fine_tuning_model_fn(pretrained, assignment_map),
      th.RunConfig(str(tmp_path / "model"), iterations_per_loop=2,
                   tpu=th.TPUConfig(num_shards=shards)),
      train_batch_size=batch, eval_batch_size=batch,
      predict_batch_size=batch)
  x, y = data(n=16)
  runner.train(train_input_fn(x, y), max_steps=4)
  # The save at the session's start: the body from the pretrained
  # checkpoint, the head as its own initializer made it.
  start = tf.train.load_checkpoint(str(tmp_path / "model" / "model.ckpt-0"))
  np.testing.assert_array_equal(start.get_tensor("bert/w"),
                                np.full([NUM_FEATURES, 1], 0.25))
  np.testing.assert_array_equal(start.get_tensor("bert/b"), [3.0])
  np.testing.assert_array_equal(start.get_tensor("head"), [1.0])
  # Then trained from there (not reset to the pretrained values each step).
  trained = tf.train.load_checkpoint(runner.latest_checkpoint())
  assert runner.latest_checkpoint().endswith("-4")
  w00 = trained.get_tensor("bert/w")[0, 0]
  assert abs(w00 - 0.25) > 1e-3
  # Evaluation and prediction restore the trained model, not the pretrained.
  metrics = runner.evaluate(train_input_fn(x, y, repeat=False), steps=2)
  np.testing.assert_allclose(metrics["w00"], w00, rtol=1e-6)
  predictions = list(runner.predict(train_input_fn(x, y, repeat=False)))
  assert len(predictions) == 16
  np.testing.assert_allclose([p["w00"] for p in predictions], w00, rtol=1e-6)


def _frozen_bn_model_fn(pretrained):
  """Dense -> batch norm in inference mode (frozen, as fine-tuning a
  detection backbone does) -> Dense; the batch norm's statistics from
  `pretrained` (init_from_checkpoint in model_fn)."""

  def model_fn(features, labels, mode, params):
    del params  # Unused.
    hidden = tf.compat.v1.layers.dense(
        features, 2, name="hidden",
        kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
    hidden = tf.compat.v1.layers.batch_normalization(hidden, training=False,
                                                     name="bn")
    output = tf.compat.v1.layers.dense(
        hidden, 1, name="out",
        kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=2))
    tf.compat.v1.train.init_from_checkpoint(pretrained, {"bn/": "bn/"})
    loss = tf.reduce_mean(tf.square(output - labels))
    optimizer = th.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.05))
    return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()))

  return model_fn


def _pretrained_bn(directory):
  """A checkpoint of a batch norm `bn` of width 2 whose statistics are far
  from the initial ones (mean 3, variance 4)."""
  with tf.Graph().as_default():
    for name, value in (("moving_mean", 3.0), ("moving_variance", 4.0),
                        ("gamma", 1.0), ("beta", 0.0)):
      tf.compat.v1.get_variable(f"bn/{name}",
                                initializer=np.full([2], value, np.float32))
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return saver.save(session, os.path.join(directory, "bn.ckpt"))


def test_each_replicas_state_starts_from_the_restored_value(tmp_path):
  # A frozen batch norm reads its statistics in every replica: replica 1's
  # copy must hold the checkpoint's, as every TPU core's copy does, for 2
  # replicas to train as one (every replica gets the same rows).
  model_fn = _frozen_bn_model_fn(_pretrained_bn(str(tmp_path)))
  one = _all_variables(_train(tmp_path / "one", shards=1, steps=3,
                              model_fn=model_fn))
  two = _all_variables(_train(tmp_path / "two", shards=2, steps=3,
                              model_fn=model_fn))
  _assert_same_training(one, two)
  np.testing.assert_array_equal(one["bn/moving_mean"], [3.0, 3.0])


# ----------------------------------------------------------------------------
# Collections (google/automl's EfficientDet, run by hand on emulated cores):
# each replica sees what one TPU trace would, not what the replicas built
# before it added.


def _ema_model_fn(features, labels, mode, params):
  """EfficientDet's EMA: every trainable variable and every global variable
  named `moving_mean` or `moving_variance`, found by name, averaged after
  the step."""
  del params  # Unused.
  hidden = tf.compat.v1.layers.dense(
      features, 8, name="hidden",
      kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=1))
  hidden = tf.compat.v1.layers.batch_normalization(
      hidden, momentum=0.9, training=mode == th.ModeKeys.TRAIN, name="bn")
  output = tf.compat.v1.layers.dense(
      hidden, 1, name="out",
      kernel_initializer=tf.compat.v1.glorot_uniform_initializer(seed=2))
  loss = tf.reduce_mean(tf.square(output - labels))
  global_step = tf.compat.v1.train.get_global_step()
  optimizer = tf.compat.v1.tpu.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.05))
  with tf.control_dependencies(
      tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.minimize(loss, global_step)
  averaged = set(tf.compat.v1.trainable_variables() + [
      v for v in tf.compat.v1.global_variables()
      if "moving_mean" in v.name or "moving_variance" in v.name])
  ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
  with tf.control_dependencies([train_op]):
    train_op = ema.apply(sorted(averaged, key=lambda v: v.name))
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)


def test_global_variables_in_model_fn_are_those_of_one_trace(tmp_path,
                                                            step_graph):
  """A replica built after another does not see the EMA shadows the other
  made (it would average them again, into variables one replica, or a
  TPU, never has, and a checkpoint of one replica would not restore)."""
  one = _all_variables(_train(tmp_path / "one", shards=1, steps=3,
                              model_fn=_ema_model_fn,
                              iterations_per_loop=step_graph))
  two = _all_variables(_train(tmp_path / "two", shards=2, steps=3,
                              model_fn=_ema_model_fn,
                              iterations_per_loop=step_graph))
  assert "bn/moving_mean/ExponentialMovingAverage" in one
  _assert_same_training(one, two)


def test_a_programs_own_collection_holds_each_replicas_own_entries(
    tmp_path):
  """EfficientDet gathers its host_call's tensors from a collection of its
  own, filled in `model_fn`: each replica must see its own entries only
  (else the replicas pass host_call different tensors)."""
  seen = []

  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                  initializer=tf.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    tf.compat.v1.add_to_collection("scalar_summaries", ("mine/loss", loss))
    pairs = tf.compat.v1.get_collection("scalar_summaries")
    seen.append(len(pairs))
    train_op = tf.compat.v1.tpu.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.05)).minimize(
            loss, tf.compat.v1.train.get_global_step())

    def host_call_fn(step, *values):
      with tf.compat.v2.summary.create_file_writer(
          params["log_dir"]).as_default():
        for (name, _), value in zip(pairs, values):
          tf.compat.v2.summary.scalar(name, value[0], step=step[0])
        return tf.compat.v1.summary.all_v2_summary_ops()

    step = tf.reshape(tf.compat.v1.train.get_global_step(), [1])
    return th.ModelSpec(
        mode=mode, loss=loss, train_op=train_op,
        host_call=(host_call_fn,
                   [step] + [tf.reshape(t, [1]) for _, t in pairs]))

  log_dir = tmp_path / "summaries"
  runner = th.Runner(model_fn, th.RunConfig(
      str(tmp_path / "model"), iterations_per_loop=2,
      tpu=th.TPUConfig(num_shards=2)), params={"log_dir": str(log_dir)},
                     train_batch_size=8)
  runner.train(train_input_fn(*data(n=64)), max_steps=4)
  assert seen == [1, 1]
  tf.compat.v1.summary.FileWriterCache.clear()
  steps = sorted(event.step for event in event_records(str(log_dir))
                 for value in event.summary.value if value.tag == "mine/loss")
  assert steps == [0, 1, 2, 3]


def _cross_replica_bn_model_fn(features, labels, mode, params):
  """A batch mean summed across replicas, as a cross-replica batch norm
  computes its statistics."""
  del params  # Unused.
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  mean = tf.compat.v1.tpu.cross_replica_sum(tf.reduce_mean(features, 0))
  loss = tf.reduce_mean(tf.square(tf.matmul(features - mean, w) - labels))
  train_op = tf.compat.v1.tpu.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.05)).minimize(
          loss, tf.compat.v1.train.get_global_step())
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)


def test_cross_replica_sum_is_the_identity_on_one_core(tmp_path):
  reader = _train(tmp_path, shards=1, steps=2,
                  model_fn=_cross_replica_bn_model_fn)
  assert reader.get_tensor("global_step") == 2


def test_cross_replica_sum_on_several_cores_is_refused_as_it_is_called(
    tmp_path):
  from tensorflow.python.ops import gen_tpu_ops  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
  original = gen_tpu_ops.cross_replica_sum
  with pytest.raises(NotImplementedError,
                     match=r"cross_replica_sum .* on 2 emulated TPU cores"):
    _train(tmp_path, shards=2, steps=2, model_fn=_cross_replica_bn_model_fn)
  assert gen_tpu_ops.cross_replica_sum is original


def test_each_replica_sees_the_collections_of_one_trace():
  """What `model_fn` reads from the graph's collections, replica by replica
  (built from the last to 0), with variables partitioned, an EMA, and a
  summary made before the step."""
  seen = []

  def model_fn(features, labels, mode, params):
    del labels, mode, params  # Unused.
    view = {}
    w = tf.compat.v1.get_variable(
        "w", [8, 1], partitioner=tf.compat.v1.fixed_size_partitioner(2))
    b = tf.compat.v1.get_variable("b", [1])
    view["trainable"] = [v.op.name for v in
                         tf.compat.v1.trainable_variables()]
    view["averaged before"] = len(tf.compat.v1.moving_average_variables())
    ema = tf.compat.v1.train.ExponentialMovingAverage(0.5)
    ema.apply([b])
    view["averaged after"] = [v.op.name for v in
                              tf.compat.v1.moving_average_variables()]
    tf.compat.v1.add_to_collection("mine", features)
    view["mine"] = len(tf.compat.v1.get_collection("mine"))
    view["summaries"] = len(tf.compat.v1.get_collection(
        tf.compat.v1.GraphKeys.SUMMARIES))
    seen.append(view)
    return th.ModelSpec(mode=th.ModeKeys.PREDICT,
                        predictions=tf.matmul(features, tf.concat(
                            list(w), 0)) + b)

  with tf.Graph().as_default():
    tf.compat.v1.summary.scalar("before", tf.constant(1.0))
    from tpu_harness.loops import replicas  # pylint: disable=g-import-not-at-top
    replicas.call_replicas(model_fn, tf.zeros([2, 4, 8]),
                           th.ModeKeys.PREDICT, {}, num_shards=2,
                           stacked=True, in_loop=False)
    assert seen[0] == seen[1], seen
    assert seen[0] == {
        "trainable": ["w/part_0", "w/part_1", "b"], "averaged before": 0,
        "averaged after": ["b"], "mine": 1, "summaries": 0}
    # Afterwards: each replica's own entries, the shared variables once.
    assert len(tf.compat.v1.get_collection("mine")) == 2
    assert [v.op.name for v in tf.compat.v1.trainable_variables()] == [
        "w/part_0", "w/part_1", "b"]
    # Added by each replica's EMA, kept once (a Saver of them would refuse
    # two of one name).
    assert [v.op.name for v in
            tf.compat.v1.moving_average_variables()] == ["b"]
    assert len(tf.compat.v1.get_collection(
        tf.compat.v1.GraphKeys.SUMMARIES)) == 1


def test_cross_replica_sum_of_a_dtype_a_tpu_does_not_sum_is_refused(
    tmp_path):
  def model_fn(features, labels, mode, params):
    tf.compat.v1.tpu.cross_replica_sum(tf.cast(features, tf.int64))
    return _cross_replica_bn_model_fn(features, labels, mode, params)

  with pytest.raises(TypeError, match="got a tensor of dtype int64; a TPU sums only "
                     "bfloat16, float16, float32, float64, int32, uint32"):
    _train(tmp_path, shards=1, steps=2, model_fn=model_fn)

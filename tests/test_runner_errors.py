"""Runner: bad input at the public API, and clear errors."""


import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

import hooks
import tpu_harness as th
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.runner_models import write_checkpoint
from support.tf_fixtures import RecordingListener
from support.runner_fixtures import KNOWN_W
from support.runner_fixtures import make_runner


# ----------------------------------------------------------------------------
# Bad input at the public API.


def _ok_model_fn(features, labels, mode, params):
  return linear_model_fn(features, labels, mode, params)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(model_fn="nope"), TypeError, "`model_fn` ('nope') must be callable"),
    (dict(model_fn=lambda features, labels: None), TypeError,
     "must accept (features, labels, mode, params); its signature is "
     "(features, labels)"),
    (dict(config="cfg"), TypeError, "`config` ('cfg') must be a "
     "tpu_harness.RunConfig"),
    (dict(params=[1]), TypeError, "`params` ([1]) must be a dict"),
    (dict(params={"batch_size": 3}), ValueError, "must not contain "
     "'batch_size'"),
    (dict(train_batch_size=0), ValueError, "`train_batch_size` (0)"),
    (dict(train_batch_size=10, shards=4), ValueError,
     "`train_batch_size` (10) must be a multiple of `num_shards` (4)"),
    (dict(eval_batch_size=2.0), TypeError, "`eval_batch_size` (2.0)"),
])
def test_bad_runner_arguments(tmp_path, kwargs, error, message):
  shards = kwargs.pop("shards", 1)
  args = dict(model_fn=_ok_model_fn,
              config=th.RunConfig(str(tmp_path),
                                  tpu=th.TPUConfig(num_shards=shards)))
  args.update(kwargs)
  model_fn, config = args.pop("model_fn"), args.pop("config")
  with pytest.raises(error) as info:
    th.Runner(model_fn, config, **args)
  assert message in str(info.value)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(), ValueError, "Exactly one of `max_steps` and `steps`"),
    (dict(max_steps=5, steps=5), ValueError, "max_steps=5, steps=5"),
    (dict(max_steps=0), ValueError, "`max_steps` (0) must be a positive"),
    (dict(steps=-1), ValueError, "`steps` (-1)"),
    (dict(max_steps=10**20), ValueError, "`max_steps` (100000000000000000000) "
     "must be at most 2**62 (4611686018427387904): global steps are int64"),
    (dict(steps=1, hooks=["h"]), TypeError, "`hooks[0]` ('h') must be a "
     "tf.compat.v1.train.SessionRunHook"),
    (dict(steps=1, saving_listeners=["l"]), TypeError,
     "`listeners[0]` ('l') must be a CheckpointSaverListener"),
])
def test_bad_train_arguments(tmp_path, kwargs, error, message):
  with pytest.raises(error) as info:
    make_runner(tmp_path).train(train_input_fn(), **kwargs)
  assert message in str(info.value)


def test_missing_batch_size_for_a_mode(tmp_path):
  runner = th.Runner(_ok_model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  write_checkpoint(str(tmp_path), KNOWN_W, 1)
  with pytest.raises(ValueError, match="`eval_batch_size` was not given"):
    runner.evaluate(train_input_fn(), steps=1)


@pytest.mark.parametrize("input_fn,error,message", [
    (lambda params: [1, 2], TypeError,
     "`input_fn` must return a tf.data.Dataset, or tensors: (features, labels) or features (a tensor or a dict of them); got list"),
    (lambda params: tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, 4)), np.zeros(8), np.zeros(8))),
     TypeError, "`input_fn` must return (features, labels) as a tuple of "
     "two, or features alone (a tensor or a dict of them), as TPUEstimator "
     "took; its elements are a tuple of 3"),
    (lambda params: tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, 4), np.float32), np.zeros((8, 1), np.float32))).batch(
            params["batch_size"]), th.InputShapeError,
     "(batch with drop_remainder=True); features has shape (None, 4)"),
])
def test_bad_input_fn(tmp_path, input_fn, error, message):
  with pytest.raises(error) as info:
    make_runner(tmp_path).train(input_fn, max_steps=1)
  assert message in str(info.value)


@pytest.mark.parametrize("returned,message", [
    ("loss", "`model_fn` must return a tpu_harness.ModelSpec (or "
     "TPUEstimatorSpec), got str"),
    ("wrong_mode", "returned a ModelSpec with mode 'eval' when called with "
     "mode 'train'"),
    ("no_train_op", "must return a `train_op` in mode 'train'"),
    ("vector_loss", "must return a scalar `loss` tensor"),
])
def test_model_fn_breaking_the_contract(tmp_path, returned, message):

  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [4, 1])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step())
    return {
        "loss": "loss",
        "wrong_mode": th.ModelSpec(mode=th.ModeKeys.EVAL, loss=loss),
        "no_train_op": th.ModelSpec(mode=mode, loss=loss),
        "vector_loss": th.ModelSpec(mode=mode, loss=tf.reshape(loss, [1]),
                                    train_op=op),
    }[returned]

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  with pytest.raises((TypeError, ValueError)) as info:
    runner.train(train_input_fn(), max_steps=1)
  assert message in str(info.value)


def test_runner_hooks_see_iterations_per_loop(tmp_path):
  # The runner's own CheckpointSaverHook is declared with steps_per_run =
  # iterations_per_loop, so it never needs to learn a larger increment.
  seen = []

  class Spy(hooks.CheckpointSaverListener):

    def after_save(self, session, global_step_value):
      seen.append(global_step_value)

  make_runner(tmp_path, ipl=25, save_steps=25).train(
      train_input_fn(), max_steps=100, saving_listeners=[Spy()])
  assert seen == [0, 25, 50, 75, 100]


# ----------------------------------------------------------------------------
# Clear errors.


def test_dtype_mismatch_is_listed(tmp_path):
  make_runner(tmp_path, ipl=5).train(train_input_fn(), max_steps=5)

  def float64_model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [4, 1], tf.float64)
    loss = tf.reduce_mean(tf.cast(features, tf.float64) @ w)
    return th.ModelSpec(mode=mode, loss=loss, train_op=tf.group(
        tf.compat.v1.train.get_global_step().assign_add(1)))

  runner = th.Runner(float64_model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=32)
  with pytest.raises(th.CheckpointMismatchError,
                     match=r"dtype differs: \['w: checkpoint float32 vs model "
                     r"float64'\]"):
    runner.train(train_input_fn(), max_steps=10)


def test_unwritable_eval_dir_fails_before_evaluating(tmp_path):
  runner = make_runner(tmp_path, ipl=5)
  runner.train(train_input_fn(), max_steps=5)
  (tmp_path / "eval").write_text("a file where the eval directory goes")
  read = []

  def input_fn(params):
    def record(x, y):
      read.append(True)
      return x, y
    return train_input_fn()(params).map(lambda x, y: tuple(
        tf.ensure_shape(t, s) for t, s in zip(
            tf.py_function(record, [x, y], [tf.float32, tf.float32]),
            [x.shape, y.shape])))

  with pytest.raises(ValueError, match=r"The eval directory .*eval' \(under "
                     r"`model_dir`, where evaluate writes its results\) is a "
                     r"file"):
    runner.evaluate(input_fn, steps=1)
  assert not read  # Failed before reading any input.
  assert (tmp_path / "eval").read_text().startswith("a file")


def test_tf_variable_in_model_fn_gets_a_clear_error(tmp_path):
  def model_fn(features, labels, mode, params):
    w = tf.Variable(tf.zeros([4, 1]), name="weights")
    loss = tf.reduce_mean(tf.square(features @ w - labels))
    return th.ModelSpec(mode=mode, loss=loss, train_op=(
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
            loss, global_step=tf.compat.v1.train.get_global_step())))

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path),
                                            iterations_per_loop=2),
                     train_batch_size=8)
  with pytest.raises(ValueError) as info:
    runner.train(train_input_fn(), max_steps=4)
  message = str(info.value)
  assert message.startswith("`model_fn` created the variable 'weights' with "
                            "tf.Variable from a tensor computed inside the "
                            "device loop")
  assert "tf.compat.v1.get_variable" in message


def test_no_periodic_saves_still_saves_at_start_and_end(tmp_path):
  listener = RecordingListener()
  make_runner(tmp_path, ipl=5, save_steps=None).train(
      train_input_fn(), max_steps=20, saving_listeners=[listener])
  assert listener.saved_steps() == [0, 20]


def test_session_config_is_merged_into_the_device_loops(tmp_path):
  config = tf.compat.v1.ConfigProto(allow_soft_placement=True,
                                    log_device_placement=True,
                                    device_count={"CPU": 1})
  runner = make_runner(tmp_path, ipl=5, shards=2, session_config=config)
  merged = runner._session_config()  # pylint: disable=protected-access
  assert merged.log_device_placement and merged.allow_soft_placement
  assert merged.device_count["CPU"] == 2  # The emulation's replicas win.
  # The emulation's Grappler options, which the user's config leaves.
  assert merged.graph_options.rewrite_options == (
      runner._device.session_config()  # pylint: disable=protected-access
      .graph_options.rewrite_options)
  runner.train(train_input_fn(), max_steps=5)


@pytest.mark.parametrize("set_options", [
    # Turning one optimizer off keeps TF's defaults for the rest: two
    # passes, the TFG, memory and layout passes.
    lambda options: setattr(options, "constant_folding",
                            rewriter_config_pb2.RewriterConfig.OFF),
    lambda options: setattr(options, "meta_optimizer_iterations",
                            rewriter_config_pb2.RewriterConfig.TWO),
])
def test_the_users_grappler_options_are_used_as_they_are(tmp_path,
                                                         set_options):
  config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
  set_options(config.graph_options.rewrite_options)
  runner = make_runner(tmp_path, ipl=5, session_config=config)
  merged = runner._session_config()  # pylint: disable=protected-access
  assert merged.graph_options.rewrite_options == (
      config.graph_options.rewrite_options)
  assert not merged.graph_options.rewrite_options.disable_tfg_optimizer


def test_predict_can_yield_whole_batches(tmp_path):
  runner = make_runner(tmp_path, ipl=2, batch=4, shards=2)
  runner.train(train_input_fn(), max_steps=2)
  x = np.arange(4 * 10, dtype=np.float32).reshape(10, 4)
  batches = list(runner.predict(
      lambda params: tf.data.Dataset.from_tensor_slices(x).batch(
          params["batch_size"]), yield_single_examples=False))
  # Batches of 2 per replica, 2 replicas per step: 4, 4, then 2.
  assert [b["y"].shape for b in batches] == [(4, 1), (4, 1), (2, 1)]
  rows = list(runner.predict(lambda params: tf.data.Dataset.from_tensor_slices(
      x).batch(params["batch_size"])))
  np.testing.assert_allclose(np.concatenate([b["y"] for b in batches]),
                             np.stack([r["y"] for r in rows]))


def _step_counting_model_fn(increments):
  """linear_model_fn's loss, SGD without the global step, and
  `increments` explicit assign_adds of it in model_fn (a GAN's way)."""
  def model_fn(features, labels, mode, params):
    del params  # Unused.
    w = tf.compat.v1.get_variable("w", [features.shape[1], 1],
                                  initializer=tf.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    step = th.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1)).minimize(loss)
    global_step = tf.compat.v1.train.get_global_step()
    increments_ops = [tf.compat.v1.assign_add(global_step, 1)
                      for _ in range(increments)]
    return th.ModelSpec(mode=mode, loss=loss,
                        train_op=tf.group([step] + increments_ops))
  return model_fn


@pytest.mark.parametrize("increments, shards, hint", [
    (0, 1, False),  # Never advanced.
    (2, 1, False),  # Twice per step.
    (1, 2, True),  # Once per replica.
])
def test_a_global_step_not_advanced_once_per_step_is_named(
    tmp_path, increments, shards, hint):
  runner = th.Runner(
      _step_counting_model_fn(increments),
      th.RunConfig(str(tmp_path), iterations_per_loop=2,
                   tpu=th.TPUConfig(num_shards=shards)),
      train_batch_size=8)
  with pytest.raises(RuntimeError) as info:
    runner.train(train_input_fn(), max_steps=4)
  message = str(info.value)
  assert (f"The global step went from 0 to {2 * increments * shards} in a "
          f"loop of 2 steps") in message
  assert ("With 2 replicas, an increment of the global step in `model_fn` "
          "itself (tf.compat.v1.assign_add) runs once per replica" in
          message) == hint

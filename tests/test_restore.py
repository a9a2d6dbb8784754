"""restore: choosing and restoring checkpoints; scaffold_fn and the spec's
hooks, where TPUEstimator used them."""

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import NUM_FEATURES
from support.runner_models import RecordingHook
from support.runner_models import train_input_fn
from support.runner_models import write_checkpoint
from tpu_harness._model_dir import restore_order
from tpu_harness._run import restore


def _ema_model_fn(features, labels, mode, params):
  """Linear model with an exponential moving average of w, restored in
  place of w for eval through scaffold_fn (as resnet_main.py does)."""
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  prediction = tf.matmul(features, w)
  if mode == th.ModeKeys.PREDICT:
    return th.ModelSpec(mode=mode, predictions=prediction,
                        prediction_hooks=[params["hook"]])
  loss = tf.reduce_mean(tf.square(prediction - labels))
  ema = tf.compat.v1.train.ExponentialMovingAverage(decay=0.5)
  if mode == th.ModeKeys.EVAL:
    restore = ema.variables_to_restore([w])

    def metric_fn(w_now):
      return {"w_mean": tf.compat.v1.metrics.mean(w_now)}

    return th.ModelSpec(
        mode=mode, loss=loss,
        eval_metrics=(metric_fn, [tf.reshape(tf.reduce_mean(w), [1])]),
        scaffold_fn=lambda: tf.compat.v1.train.Scaffold(
            saver=tf.compat.v1.train.Saver(restore)),
        evaluation_hooks=[params["hook"]])
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(0.1))
  train_op = optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  with tf.control_dependencies([train_op]):
    train_op = ema.apply([w])
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op,
                      training_hooks=[params["hook"]])


def _runner(model_dir, hook, shards=1):
  return th.Runner(_ema_model_fn, th.RunConfig(
      str(model_dir), iterations_per_loop=5,
      tpu=th.TPUConfig(num_shards=shards)), params={"hook": hook},
                   train_batch_size=8, eval_batch_size=8,
                   predict_batch_size=8)


@pytest.mark.parametrize("shards", [1, 2])
def test_eval_restores_moving_averages_through_scaffold_fn(tmp_path, shards):
  hook = RecordingHook()
  runner = _runner(tmp_path, hook, shards)
  runner.train(train_input_fn(), max_steps=10)
  assert hook.counts["before_run"] == 2  # training_hooks, once per loop.
  reader = tf.train.load_checkpoint(runner.latest_checkpoint())
  averaged = reader.get_tensor("w/ExponentialMovingAverage")
  assert not np.allclose(averaged, reader.get_tensor("w"))
  eval_hook = RecordingHook()
  results = _runner(tmp_path, eval_hook, shards).evaluate(
      train_input_fn(), steps=2)
  # Eval ran with w restored from its moving average.
  assert results["w_mean"] == pytest.approx(float(np.mean(averaged)),
                                            rel=1e-6)
  assert eval_hook.counts["begin"] == 1 and eval_hook.counts["end"] == 1


def test_prediction_hooks_run_and_a_single_tensor_is_yielded(tmp_path):
  _runner(tmp_path, RecordingHook()).train(train_input_fn(), max_steps=5)
  hook = RecordingHook()
  x = np.ones((3, NUM_FEATURES), np.float32)
  predictions = list(_runner(tmp_path, hook).predict(
      lambda params: tf.data.Dataset.from_tensor_slices(x).batch(
          params["batch_size"])))
  assert len(predictions) == 3 and predictions[0].shape == (1,)
  assert hook.counts["begin"] == 1


def test_scaffold_init_fn_initializes_a_fresh_run(tmp_path):
  called = []

  def model_fn(features, labels, mode, params):
    spec = _ema_model_fn(features, labels, mode, dict(params))

    def init_fn(scaffold, session):
      del scaffold  # Unused.
      called.append(True)
      (w,) = [v for v in tf.compat.v1.global_variables() if v.op.name == "w"]
      w.load(np.full((NUM_FEATURES, 1), 7.0, np.float32), session)

    return th.ModelSpec(mode=mode, loss=spec.loss, train_op=spec.train_op,
                        scaffold_fn=lambda: tf.compat.v1.train.Scaffold(
                            init_fn=init_fn))

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path),
                                            iterations_per_loop=1),
                     params={"hook": RecordingHook()}, train_batch_size=8)
  runner.train(train_input_fn(), max_steps=1)
  assert called == [True]
  # The step-0 checkpoint holds what init_fn set.
  reader = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-0"))
  np.testing.assert_array_equal(reader.get_tensor("w"), 7.0)


def test_choose_takes_the_newest_that_has_not_failed(tmp_path):
  prefixes = [write_checkpoint(str(tmp_path), [[float(s)]] * 4, s)
              for s in (1, 2)]

  def order(**broken):
    result = restore_order.RestoreOrder(str(tmp_path))
    result.broken.update(broken)
    return result

  assert restore.choose(str(tmp_path), None, order()) == prefixes[1]
  assert restore.choose(str(tmp_path), None,
                        order(**{prefixes[1]: "Checksum"})) == prefixes[0]
  with pytest.raises(th.NoRestorableCheckpointError,
                     match=r"holds 2 checkpoint\(s\)"):
    restore.choose(str(tmp_path), None, order(**{p: "bad" for p in prefixes}))
  # A named checkpoint is taken as it is, if it exists.
  assert restore.choose(str(tmp_path), prefixes[0], order()) == prefixes[0]
  with pytest.raises(ValueError, match="is not a checkpoint"):
    restore.choose(str(tmp_path), str(tmp_path / "model.ckpt-9"), order())
  with pytest.raises(ValueError, match="No checkpoint that reads back"):
    restore.choose(str(tmp_path / "empty"), None,
                   restore_order.RestoreOrder(str(tmp_path / "empty")))


# ----------------------------------------------------------------------------
# CheckedRestore's session: ChiefSessionCreator's, but for the readiness check
# before the local initialization unless one is asked for.


def _session_graph(init_all: bool, ask: str = ""):
  """Global variables `a` (= 1) and `b` (= 2), a local `twice_b` = 2 b; the
  Scaffold's init_op initializes both, or only `a` (`init_all` False). `ask`
  asks for a readiness check before the local initialization that never
  passes: through the Scaffold or the graph's collection."""
  a = tf.compat.v1.get_variable("a", initializer=1.0, use_resource=True)
  b = tf.compat.v1.get_variable("b", initializer=2.0, use_resource=True)
  twice_b = tf.compat.v1.get_variable(
      "twice_b", initializer=lambda: 2.0 * b.read_value(),
      collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES], use_resource=True)
  check = tf.constant(["never ready"])
  if ask == "collection":
    tf.compat.v1.add_to_collection(
        tf.compat.v1.GraphKeys.READY_FOR_LOCAL_INIT_OP, check)
  scaffold = tf.compat.v1.train.Scaffold(
      init_op=None if init_all else a.initializer,
      ready_for_local_init_op=check if ask == "scaffold" else None)
  return scaffold, twice_b


@pytest.mark.parametrize("init_all, ask, raised", [
    (True, "", None),
    # Left out and read by the local initialization: TF's error names it.
    (False, "", r"Could not find variable b\b"),
    # A check asked for runs, as TF's ChiefSessionCreator runs it.
    (True, "scaffold", "not make model ready for local_init"),
    (True, "collection", "not make model ready for local_init"),
])
def test_the_session_is_chief_sessions_less_the_default_local_init_check(
    init_all, ask, raised):
  scaffold, twice_b = _session_graph(init_all, ask)
  creator = restore.CheckedRestore(None, scaffold=scaffold)
  if raised is not None:
    with pytest.raises((RuntimeError, tf.errors.OpError), match=raised):
      creator.create_session()
    return
  session = creator.create_session()
  try:
    assert session.run(twice_b) == 4.0
  finally:
    session.close()


def test_a_global_variable_left_out_is_still_reported_ready_or_not():
  # Not read by the local initialization: the ready check after it names
  # it, as TF's does.
  a = tf.compat.v1.get_variable("a", initializer=1.0, use_resource=True)
  tf.compat.v1.get_variable("left_out", initializer=2.0, use_resource=True)
  creator = restore.CheckedRestore(
      None, scaffold=tf.compat.v1.train.Scaffold(init_op=a.initializer))
  with pytest.raises(RuntimeError,
                     match="(?s)did not make model ready.*left_out"):
    creator.create_session()

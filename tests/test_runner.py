"""Runner: loop accounting, hooks, checkpoints, resume, eval, predict, shards."""

import dataclasses
import logging as std_logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import hooks
import reliability_worker
import tpu_harness as th
from tpu_harness._infeed.layout import InfeedLayout
from runner_models import RecordingHook
from runner_models import data
from runner_models import linear_model_fn
from runner_models import train_input_fn
from runner_models import weights
from runner_models import write_checkpoint
from tf_fixtures import RecordingListener
from tf_fixtures import checkpoint_steps
from tf_fixtures import event_records
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _runner(model_dir, *, ipl=10, shards=1, save_steps=20, batch=32,
            params=None, infeed_layout=None, **config):
  config = th.RunConfig(str(model_dir), iterations_per_loop=ipl,
                        save_checkpoints_steps=save_steps,
                        tpu=th.TPUConfig(num_shards=shards), **config)
  device = None
  if infeed_layout is not None:
    device = th.CpuEmulationLoop(num_shards=shards, iterations_per_loop=ipl,
                                 max_infeed_bytes=config.max_infeed_bytes,
                                 infeed_layout=infeed_layout)
  return th.Runner(
      linear_model_fn, config, params=params, train_batch_size=batch,
      eval_batch_size=batch, predict_batch_size=batch, device_loop=device)


def _scalars(log_dir, tag):
  tf.compat.v1.summary.FileWriterCache.clear()
  return [(e.step, v.simple_value) for e in event_records(str(log_dir))
          if e.HasField("summary") for v in e.summary.value if v.tag == tag]


def _tensor_scalars(log_dir, tag):
  """(step, value) of tf2 summaries (stored as tensors) with `tag`."""
  return [(e.step, float(tf.make_ndarray(v.tensor)))
          for e in event_records(str(log_dir)) if e.HasField("summary")
          for v in e.summary.value if v.tag == tag]


# ----------------------------------------------------------------------------
# Loop accounting and hooks.


@pytest.mark.parametrize("ipl,max_steps,expected_steps", [
    (10, 45, [10, 20, 30, 40, 45]),
    (10, 40, [10, 20, 30, 40]),
    (1, 3, [1, 2, 3]),
    (100, 7, [7]),
])
def test_each_run_advances_iterations_per_loop_and_stops_exactly(
    tmp_path, ipl, max_steps, expected_steps):
  hook = RecordingHook()
  _runner(tmp_path, ipl=ipl).train(train_input_fn(), max_steps=max_steps,
                                   hooks=[hook])
  assert hook.steps == expected_steps
  runs = len(expected_steps)
  assert hook.counts == {"begin": 1, "after_create_session": 1,
                         "before_run": runs, "after_run": runs, "end": 1}


def test_a_device_loop_with_another_default_is_fed_every_count(tmp_path):
  # The runner feeds `iterations` only when the count differs from the
  # loop's own default, which need not be the runner's iterations_per_loop.
  hook = RecordingHook()
  th.Runner(linear_model_fn,
            th.RunConfig(str(tmp_path), iterations_per_loop=4),
            train_batch_size=32,
            device_loop=th.CpuEmulationLoop(num_shards=1,
                                            iterations_per_loop=8),
            ).train(train_input_fn(), max_steps=10, hooks=[hook])
  assert hook.steps == [4, 8, 10]


def test_checkpoints_at_expected_steps_with_listeners(tmp_path):
  listener = RecordingListener()
  _runner(tmp_path, ipl=10, save_steps=20).train(
      train_input_fn(), max_steps=45, saving_listeners=[listener])
  assert listener.saved_steps() == [0, 20, 40, 45]
  assert checkpoint_steps(str(tmp_path)) == [0, 20, 40, 45]
  assert listener.calls[-1] == ("end", 45)
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-45")


def test_keep_checkpoint_max_rotates_old_checkpoints(tmp_path):
  _runner(tmp_path, ipl=10, save_steps=10, keep_checkpoint_max=2).train(
      train_input_fn(), max_steps=50)
  assert checkpoint_steps(str(tmp_path)) == [40, 50]


def test_saving_listener_can_stop_training(tmp_path):
  listener = RecordingListener(stop_after_save_at=20)
  _runner(tmp_path).train(train_input_fn(), max_steps=100,
                          saving_listeners=[listener])
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-20")


def test_steps_counts_from_the_current_step(tmp_path):
  runner = _runner(tmp_path)
  runner.train(train_input_fn(), steps=15)
  runner.train(train_input_fn(), steps=15)
  assert runner.latest_checkpoint().endswith("model.ckpt-30")


def test_train_past_max_steps_does_nothing(tmp_path):
  runner = _runner(tmp_path)
  runner.train(train_input_fn(), max_steps=20)
  hook = RecordingHook()
  runner.train(train_input_fn(), max_steps=10, hooks=[hook])
  assert hook.counts["begin"] == 0
  assert runner.latest_checkpoint().endswith("model.ckpt-20")


def test_input_ending_mid_loop_stops_at_the_last_full_step(tmp_path):
  x, y = data(n=100)
  hook = RecordingHook()
  # 100 examples / 32 per step = 3 full steps; loops of 2: 2 + 1.
  _runner(tmp_path, ipl=2).train(train_input_fn(x, y, repeat=False),
                                 max_steps=50, hooks=[hook])
  assert hook.steps == [2, 3]
  assert checkpoint_steps(str(tmp_path)) == [0, 3]  # end() saves step 3.


# Every element counts as large: input of known length is streamed.
STREAMED = InfeedLayout(per_element_bytes=1)


def test_streamed_input_ending_mid_loop_stops_at_the_last_full_step(
    tmp_path):
  x, y = data(n=100)
  hook = RecordingHook()
  _runner(tmp_path, ipl=2, infeed_layout=STREAMED).train(
      train_input_fn(x, y, repeat=False), max_steps=50, hooks=[hook])
  assert hook.steps == [2, 3]
  assert checkpoint_steps(str(tmp_path)) == [0, 3]


def test_streamed_input_that_fails_mid_training_is_an_error(tmp_path):
  x, y = data()

  def input_fn(params):
    def check(index, element):
      with tf.control_dependencies([tf.debugging.assert_less(
          index, tf.constant(12, tf.int64), message="bad record")]):
        return tf.nest.map_structure(tf.identity, element)
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
        params["batch_size"], drop_remainder=True).enumerate().map(check)

  # Endless input, streamed; its 13th batch fails inside the third loop.
  # (A MonitoredSession would take the closed queue for the input's end
  # and stop quietly.)
  with pytest.raises(tf.errors.InvalidArgumentError, match="bad record"):
    _runner(tmp_path, ipl=5, save_steps=5, infeed_layout=STREAMED).train(
        input_fn, max_steps=40)
  assert max(checkpoint_steps(str(tmp_path))) == 10


# ----------------------------------------------------------------------------
# Learning, resume, warm start, sharding.


def test_trains_toward_true_weights(tmp_path):
  _runner(tmp_path, params={"lr": 0.1}).train(train_input_fn(),
                                              max_steps=200)
  np.testing.assert_allclose(weights(tf.train.latest_checkpoint(
      str(tmp_path))), [[1.0], [2.0], [-1.0], [0.5]], atol=0.05)


def test_resume_matches_uninterrupted_run(tmp_path):
  whole = _runner(tmp_path / "whole", ipl=7, save_steps=10)
  whole.train(train_input_fn(), max_steps=33)
  parts = _runner(tmp_path / "parts", ipl=7, save_steps=10)
  parts.train(train_input_fn(), max_steps=12)
  w12 = weights(parts.latest_checkpoint())
  # A new runner, as after a restart, continues from step 12.
  _runner(tmp_path / "parts", ipl=7, save_steps=10).train(train_input_fn(),
                                                          max_steps=33)
  np.testing.assert_allclose(weights(parts.latest_checkpoint()),
                             weights(whole.latest_checkpoint()), rtol=1e-6)
  # Had the resumed run restarted the input from its first batch (the same
  # 33 SGD steps, other batches), the weights would differ.
  restarted = _runner(tmp_path / "restarted", ipl=7, save_steps=10)
  write_checkpoint(str(tmp_path / "restarted"), w12, 0)
  restarted.train(train_input_fn(), max_steps=21)
  assert restarted.latest_checkpoint().endswith("model.ckpt-21")
  assert not np.allclose(weights(restarted.latest_checkpoint()),
                         weights(whole.latest_checkpoint()), rtol=1e-6)


def test_warm_start_from_initializes_trainable_variables(tmp_path):
  source = write_checkpoint(str(tmp_path), [[5.0], [6.0], [7.0], [8.0]], 99)
  listener = RecordingListener()
  runner = _runner(tmp_path / "new", params={"lr": 0.0},
                   warm_start_from=source)
  runner.train(train_input_fn(), max_steps=10, saving_listeners=[listener])
  step0 = os.path.join(str(tmp_path / "new"), "model.ckpt-0")
  np.testing.assert_allclose(weights(step0), [[5.0], [6.0], [7.0], [8.0]])
  # The global step is not warm-started: training starts at 0.
  assert listener.saved_steps()[0] == 0


@pytest.mark.parametrize("shards", [2, 4])
def test_sharded_training_matches_unsharded(tmp_path, shards):
  single = _runner(tmp_path / "one", ipl=5, batch=32)
  single.train(train_input_fn(), max_steps=23)
  sharded = _runner(tmp_path / "many", ipl=5, batch=32, shards=shards)
  sharded.train(train_input_fn(), max_steps=23)
  np.testing.assert_allclose(weights(sharded.latest_checkpoint()),
                             weights(single.latest_checkpoint()),
                             rtol=1e-5, atol=1e-6)


def test_sharding_without_cross_shard_optimizer_is_an_error(tmp_path):

  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [4, 1])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step())
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path),
                                            tpu=th.TPUConfig(num_shards=2)),
                     train_batch_size=8)
  with pytest.raises(ValueError, match="num_shards=2, `model_fn` must wrap "
                     "its optimizer in tpu_harness.CrossShardOptimizer"):
    runner.train(train_input_fn(), max_steps=1)


# ----------------------------------------------------------------------------
# Summaries and progress.


@pytest.mark.parametrize("shards", [1, 2])
def test_loss_and_host_call_scalars_land_at_their_steps(tmp_path, shards):
  host_dir = tmp_path / "host"
  _runner(tmp_path, ipl=10, save_summary_steps=5, log_step_count_steps=10,
          shards=shards, params={"host_call": str(host_dir)}).train(
              train_input_fn(), max_steps=22)
  losses = dict(_scalars(tmp_path, "loss"))
  assert sorted(losses) == [5, 10, 15, 20, 22]
  # tf2 summaries written by the host_call's own ops, once per step.
  host_losses = dict(_tensor_scalars(host_dir, "host/loss"))
  assert sorted(host_losses) == list(range(1, 23))
  # The host_call saw the same per-step loss the runner recorded (the mean
  # over the replicas' losses, concatenated on axis 0).
  for step, loss in losses.items():
    np.testing.assert_allclose(host_losses[step], loss, rtol=1e-6)
  w0 = [v for _, v in sorted(_tensor_scalars(host_dir, "host/w0"))]
  assert len(w0) == 22 and w0 == sorted(w0)  # w[0] climbs toward 1.0.
  assert [s for s, _ in _scalars(tmp_path, "global_step/sec")]
  assert [s for s, _ in _scalars(tmp_path, "examples/sec")]


def test_one_progress_line_per_loop(tmp_path, caplog):
  with caplog.at_level(std_logging.INFO, logger="absl"):
    _runner(tmp_path, ipl=10).train(train_input_fn(), max_steps=25)
  lines = [r.getMessage() for r in caplog.records
           if "steps/sec" in r.getMessage() and "loss" in r.getMessage()]
  assert [line.split(":")[0] for line in lines] == ["step 10", "step 20",
                                                    "step 25"]
  assert all("examples/sec" in line for line in lines)


def test_train_op_not_advancing_global_step_is_an_error(tmp_path):

  def model_fn(features, labels, mode, params):
    w = tf.compat.v1.get_variable("w", [4, 1])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) - labels))
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  runner = th.Runner(model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  with pytest.raises(RuntimeError, match="must advance it by exactly one"):
    runner.train(train_input_fn(), max_steps=5)


# ----------------------------------------------------------------------------
# Evaluation and prediction.

KNOWN_W = [[1.0], [0.0], [-2.0], [3.0]]


@pytest.mark.parametrize("shards", [1, 2])
def test_evaluate_known_model(tmp_path, shards):
  checkpoint = write_checkpoint(str(tmp_path), KNOWN_W, 7)
  x, y = data(n=96, seed=3)
  error = x @ np.array(KNOWN_W, np.float32) - y
  runner = _runner(tmp_path, ipl=2, batch=16, shards=shards)
  results = runner.evaluate(train_input_fn(x, y, repeat=False), steps=5)
  used = 5 * 16
  assert results["global_step"] == 7
  np.testing.assert_allclose(results["mse"], np.mean(error[:used] ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(results["mae"], np.mean(np.abs(error[:used])),
                             rtol=1e-5)
  np.testing.assert_allclose(results["loss"], results["mse"], rtol=1e-5)
  # Without `steps`, until the input ends: 96 / 16 = 6 steps.
  all_results = runner.evaluate(train_input_fn(x, y, repeat=False),
                                checkpoint_path=checkpoint, name="all")
  np.testing.assert_allclose(all_results["mse"], np.mean(error ** 2),
                             rtol=1e-5)
  assert _scalars(tmp_path / "eval_all", "mse") == [
      (7, pytest.approx(all_results["mse"], rel=1e-6))]
  assert [s for s, _ in _scalars(tmp_path / "eval", "mae")] == [7]


@pytest.mark.parametrize("n,batch,shards,ipl", [
    (23, 8, 1, 2), (23, 8, 2, 2), (32, 8, 2, 1), (5, 8, 4, 3), (1, 4, 1, 1)])
def test_predict_returns_every_example_once_in_order(tmp_path, n, batch,
                                                     shards, ipl):
  write_checkpoint(str(tmp_path), KNOWN_W, 3)
  x, _ = data(n=n, seed=4)

  def input_fn(params):
    return tf.data.Dataset.from_tensor_slices(x).batch(params["batch_size"])

  runner = _runner(tmp_path, ipl=ipl, batch=batch, shards=shards)
  predictions = list(runner.predict(input_fn))
  expected = x @ np.array(KNOWN_W, np.float32)
  assert len(predictions) == n
  np.testing.assert_allclose([p["y"] for p in predictions], expected,
                             rtol=1e-5)
  np.testing.assert_allclose([p["doubled"] for p in predictions],
                             2 * expected, rtol=1e-5)


def test_predict_accepts_features_and_labels(tmp_path):
  write_checkpoint(str(tmp_path), KNOWN_W, 3)
  x, y = data(n=10)
  runner = _runner(tmp_path, batch=4)
  predictions = list(runner.predict(
      lambda params: tf.data.Dataset.from_tensor_slices((x, y)).batch(4)))
  assert len(predictions) == 10


def test_eval_and_predict_need_a_checkpoint(tmp_path):
  runner = _runner(tmp_path)
  with pytest.raises(ValueError, match="No checkpoint that reads back in "
                     "`model_dir`"):
    runner.evaluate(train_input_fn(), steps=1)
  with pytest.raises(ValueError, match="No checkpoint that reads back in "
                     "`model_dir`"):
    next(runner.predict(train_input_fn()))
  with pytest.raises(ValueError, match=r"`checkpoint_path` \('/nope'\) is "
                     "not a checkpoint"):
    runner.evaluate(train_input_fn(), steps=1, checkpoint_path="/nope")


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
    (dict(steps=1, hooks=["h"]), TypeError, "`hooks[0]` ('h') must be a "
     "tf.compat.v1.train.SessionRunHook"),
    (dict(steps=1, saving_listeners=["l"]), TypeError,
     "`listeners[0]` ('l') must be a CheckpointSaverListener"),
])
def test_bad_train_arguments(tmp_path, kwargs, error, message):
  with pytest.raises(error) as info:
    _runner(tmp_path).train(train_input_fn(), **kwargs)
  assert message in str(info.value)


def test_missing_batch_size_for_a_mode(tmp_path):
  runner = th.Runner(_ok_model_fn, th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  write_checkpoint(str(tmp_path), KNOWN_W, 1)
  with pytest.raises(ValueError, match="`eval_batch_size` was not given"):
    runner.evaluate(train_input_fn(), steps=1)


@pytest.mark.parametrize("input_fn,error,message", [
    (lambda params: [1, 2], TypeError,
     "`input_fn` must return a tf.data.Dataset, got list"),
    (lambda params: tf.data.Dataset.from_tensor_slices(np.zeros((8, 4))),
     TypeError, "must return a Dataset of (features, labels) pairs"),
    (lambda params: tf.data.Dataset.from_tensor_slices(
        (np.zeros((8, 4), np.float32), np.zeros((8, 1), np.float32))).batch(
            params["batch_size"]), th.InputShapeError,
     "(batch with drop_remainder=True); features has shape (None, 4)"),
])
def test_bad_input_fn(tmp_path, input_fn, error, message):
  with pytest.raises(error) as info:
    _runner(tmp_path).train(input_fn, max_steps=1)
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

  _runner(tmp_path, ipl=25, save_steps=25).train(
      train_input_fn(), max_steps=100, saving_listeners=[Spy()])
  assert seen == [0, 25, 50, 75, 100]


# ----------------------------------------------------------------------------
# Faults: a clear error and nothing lost (tests/FAULTS.md lists them all).


def test_model_dir_that_is_a_file(tmp_path):
  path = tmp_path / "model"
  path.write_text("precious")
  with pytest.raises(ValueError, match=r"is a file, not a directory"):
    _runner(path).train(train_input_fn(), max_steps=5)
  assert path.read_text() == "precious"


def test_unwritable_model_dir(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is not a writable directory"):
    _runner(tmp_path / "file" / "model").train(train_input_fn(), max_steps=5)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path,
                                                              caplog):
  runner = _runner(tmp_path, ipl=10, save_steps=10)
  runner.train(train_input_fn(), max_steps=30)
  data_file = tf.io.gfile.glob(str(tmp_path / "model.ckpt-30.data-*"))[0]
  with open(data_file, "r+b") as f:
    f.truncate(10)
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert runner.latest_checkpoint().endswith("model.ckpt-20")
    results = runner.evaluate(train_input_fn(), steps=1)
  assert results["global_step"] == 20
  assert any("Skipping checkpoint" in r.getMessage() for r in caplog.records)
  listener = RecordingListener()
  runner.train(train_input_fn(), max_steps=40, saving_listeners=[listener])
  # Resumed at 20 (re-saved there first), re-did 30 and went on to 40.
  assert listener.saved_steps() == [20, 30, 40]
  assert checkpoint_steps(str(tmp_path))[-3:] == [20, 30, 40]


def test_a_checkpoint_that_fails_only_on_restore_is_skipped(tmp_path, caplog):
  # Its index and global step read back; a weight's bytes do not (the last
  # tensor in the data file is `w`): only the restore finds out.
  runner = _runner(tmp_path, ipl=10, save_steps=10)
  runner.train(train_input_fn(), max_steps=30)
  data_file = tf.io.gfile.glob(str(tmp_path / "model.ckpt-30.data-*"))[0]
  with open(data_file, "r+b") as f:
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(-1, os.SEEK_END)
    f.write(bytes([last[0] ^ 0xFF]))
  assert restore_order.checkpoint_global_step(
      str(tmp_path / "model.ckpt-30")) == 30
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert runner.evaluate(train_input_fn(), steps=1)["global_step"] == 20
    listener = RecordingListener()
    runner.train(train_input_fn(), max_steps=40, saving_listeners=[listener])
  assert listener.saved_steps() == [20, 30, 40]
  messages = [r.getMessage() for r in caplog.records]
  # Once when evaluate restores, once when train does: both skip it.
  skipped = [m for m in messages if "model.ckpt-30, which does not restore"
             in m and "Checksum does not match" in m]
  assert len(skipped) == 2, messages


def test_a_good_checkpoint_is_read_once_by_restoring_it(tmp_path,
                                                        monkeypatch):
  runner = _runner(tmp_path, ipl=10, save_steps=10)
  runner.train(train_input_fn(), max_steps=10)

  def full_read(*args, **kwargs):
    raise AssertionError(f"read through before restoring: {args}")

  # The full read is only for a restore that failed.
  monkeypatch.setattr(restore_order, "unreadable_reason", full_read)
  runner.train(train_input_fn(), max_steps=20)
  assert runner.evaluate(train_input_fn(), steps=1)["global_step"] == 20
  assert len(list(runner.predict(train_input_fn(repeat=False)))) == 256


def test_checkpoint_of_another_model_is_refused_and_untouched(tmp_path):
  with tf.Graph().as_default():
    tf.compat.v1.train.get_or_create_global_step()
    tf.compat.v1.get_variable("w", [3, 1])
    tf.compat.v1.get_variable("embedding", [10, 2])
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      saver.save(session, str(tmp_path / "model.ckpt"), global_step=9)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(th.CheckpointMismatchError) as info:
    _runner(tmp_path).train(train_input_fn(), max_steps=20)
  assert "shape differs: ['w: checkpoint (3, 1) vs model (4, 1)']" in str(
      info.value)
  assert sorted(os.listdir(tmp_path)) == before
  with pytest.raises(th.CheckpointMismatchError):
    _runner(tmp_path).evaluate(train_input_fn(), steps=1)


def _nan_at_step(nan_step):
  """linear_model_fn whose loss is NaN from global step `nan_step` on."""

  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode != th.ModeKeys.TRAIN:
      return spec
    step = tf.compat.v1.train.get_global_step().read_value()
    # Multiplied in, so the gradients and then the weights become NaN too.
    poison = tf.where(step >= nan_step - 1, float("nan"), 1.0)
    loss = spec.loss * poison
    train_op = th.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1)).minimize(
            loss, global_step=tf.compat.v1.train.get_global_step())
    return th.ModelSpec(mode=mode, loss=loss, train_op=train_op)

  return model_fn


def test_nan_loss_stops_before_saving_nan_weights(tmp_path):
  runner = th.Runner(_nan_at_step(8), th.RunConfig(
      str(tmp_path), iterations_per_loop=5, save_checkpoints_steps=5),
                     train_batch_size=8)
  with pytest.raises(th.NanLossError, match="Loss is nan at step 8"):
    runner.train(train_input_fn(), max_steps=20)
  latest = runner.latest_checkpoint()
  assert latest.endswith("model.ckpt-5")
  assert np.all(np.isfinite(weights(latest)))
  assert checkpoint_steps(str(tmp_path)) == [0, 5]


def test_nan_loss_check_can_be_turned_off(tmp_path):
  runner = th.Runner(_nan_at_step(8), th.RunConfig(
      str(tmp_path), iterations_per_loop=5, save_checkpoints_steps=5,
      stop_on_nan_loss=False), train_batch_size=8)
  runner.train(train_input_fn(), max_steps=10)
  assert runner.latest_checkpoint().endswith("model.ckpt-10")
  assert np.all(np.isnan(weights(runner.latest_checkpoint())))


def test_sparse_input_is_refused(tmp_path):

  def input_fn(params):
    sparse = tf.sparse.from_dense(np.eye(4, dtype=np.float32))
    return tf.data.Dataset.from_tensors(
        (sparse, np.zeros((4, 1), np.float32))).repeat()

  with pytest.raises(TypeError, match="must return a Dataset of dense "
                     "tensors; features is a SparseTensorSpec"):
    _runner(tmp_path, batch=4).train(input_fn, max_steps=1)


def test_async_checkpoints_give_the_same_checkpoints(tmp_path):
  sync = _runner(tmp_path / "sync", ipl=5, save_steps=10)
  sync.train(train_input_fn(), max_steps=33)
  listener = RecordingListener()
  background = _runner(tmp_path / "async", ipl=5, save_steps=10,
                       async_checkpoints=True)
  background.train(train_input_fn(), max_steps=33,
                   saving_listeners=[listener])
  assert listener.saved_steps() == [0, 10, 20, 30, 33]
  assert checkpoint_steps(str(tmp_path / "async")) == checkpoint_steps(
      str(tmp_path / "sync"))
  np.testing.assert_array_equal(weights(background.latest_checkpoint()),
                                weights(sync.latest_checkpoint()))
  # And it resumes from its own checkpoints.
  background.train(train_input_fn(), max_steps=40)
  assert background.latest_checkpoint().endswith("model.ckpt-40")


def test_weights_made_nan_by_a_loops_last_update_are_not_saved(tmp_path):
  # Every loss of the loop is finite; its last update makes w NaN.
  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode != th.ModeKeys.TRAIN:
      return spec
    with tf.control_dependencies([spec.train_op]):
      step = tf.compat.v1.train.get_global_step().read_value()
      (w,) = [v for v in tf.compat.v1.trainable_variables()
              if v.op.name == "w"]
      poison = tf.cond(tf.equal(step, 5),
                       lambda: tf.group(w.assign(w * float("nan"))),
                       tf.no_op)
    return th.ModelSpec(mode=mode, loss=spec.loss,
                        train_op=tf.group(spec.train_op, poison))

  runner = th.Runner(model_fn, th.RunConfig(
      str(tmp_path), iterations_per_loop=5, save_checkpoints_steps=5),
                     train_batch_size=8)
  with pytest.raises(hooks.NonFiniteWeightsError) as info:
    runner.train(train_input_fn(), max_steps=20)
  assert str(info.value).startswith("Variables ['w'] hold NaN or Inf at step "
                                    "5; their checkpoint was not saved, and "
                                    "the newest checkpoint is still "
                                    f"{tmp_path}/model.ckpt-0")
  assert checkpoint_steps(str(tmp_path)) == [0]
  assert np.all(np.isfinite(weights(runner.latest_checkpoint())))


def test_nan_loss_message_names_the_checkpoint_training_resumes_from(
    tmp_path):
  runner = th.Runner(_nan_at_step(8), th.RunConfig(
      str(tmp_path), iterations_per_loop=5, save_checkpoints_steps=5),
                     train_batch_size=8)
  with pytest.raises(th.NanLossError) as info:
    runner.train(train_input_fn(), max_steps=20)
  assert (f"it resumes from {tmp_path}/model.ckpt-5, saved before the NaN "
          f"with its weights checked finite") in str(info.value)


def test_stop_iteration_from_host_call_is_an_error_not_success(tmp_path):
  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode != th.ModeKeys.TRAIN:
      return spec

    def host_fn(w0):
      raise StopIteration("from a user's iterator")

    return dataclasses.replace(spec, host_call=(
        host_fn, {"w0": tf.reshape(spec.loss, [1])}))

  runner = th.Runner(model_fn, th.RunConfig(
      str(tmp_path), iterations_per_loop=5, save_checkpoints_steps=5,
      save_summary_steps=5), train_batch_size=8)
  with pytest.raises(RuntimeError, match="The `host_call` function raised "
                     "StopIteration while building its ops"):
    runner.train(train_input_fn(), max_steps=20)
  assert checkpoint_steps(str(tmp_path)) == []


# ----------------------------------------------------------------------------
# What belongs to a run: it never adopts, rotates or deletes anything else.


def test_training_a_copied_model_dir_leaves_the_original_alone(tmp_path):
  original = tmp_path / "A"
  original.mkdir()
  prefixes = [write_checkpoint(str(original), [[float(s)]] * 4, s)
              for s in (1, 2, 3)]
  # A plain tf.compat.v1.train.Saver() writes absolute paths.
  tf.compat.v1.train.update_checkpoint_state(
      str(original), prefixes[-1], all_model_checkpoint_paths=prefixes)
  before = sorted(os.listdir(original))
  shutil.copytree(original, tmp_path / "B")
  _runner(tmp_path / "B", ipl=5, save_steps=5, keep_checkpoint_max=2).train(
      train_input_fn(), max_steps=13)
  assert sorted(os.listdir(original)) == before
  assert [contents.checkpoint_step(p) for p in contents.scan(
      str(original)).checkpoints] == [3, 2, 1]
  # Resumed from B's copy of step 3: saves at 3, 8, 13; keeps two.
  assert checkpoint_steps(str(tmp_path / "B")) == [8, 13]


def test_checkpoints_of_other_names_are_never_restored_or_deleted(tmp_path):
  other = tmp_path / "other"
  other.mkdir()
  for name, step in (("best.ckpt", 20), ("pretrained", 50)):
    with tf.Graph().as_default():
      global_step = tf.compat.v1.train.get_or_create_global_step()
      tf.compat.v1.get_variable("w", initializer=np.full((4, 1), 9.0,
                                                         np.float32))
      saver = tf.compat.v1.train.Saver()
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        session.run(global_step.assign(step))
        saver.save(session, str(tmp_path / name), global_step=step)
  theirs = sorted(n for n in os.listdir(tmp_path)
                  if n.startswith(("best", "pretrained")))
  listener = RecordingListener()
  _runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=1).train(
      train_input_fn(), max_steps=15, saving_listeners=[listener])
  # Started from scratch (not from pretrained-50's step and weights).
  assert listener.saved_steps() == [0, 5, 10, 15]
  assert sorted(n for n in os.listdir(tmp_path)
                if n.startswith(("best", "pretrained"))) == theirs
  assert np.all(weights(str(tmp_path / "pretrained-50")) == 9.0)


def test_user_temp_files_and_eval_temp_output_survive_training(tmp_path):
  runner = _runner(tmp_path, ipl=5, save_steps=5)
  runner.train(train_input_fn(), max_steps=5)
  runner.evaluate(train_input_fn(), steps=1, name="temp")
  (tmp_path / "notes_temp").mkdir()
  (tmp_path / "notes_temp" / "todo").write_text("mine")
  (tmp_path / "data.tempstate1").write_text("mine too")
  (tmp_path / "model.ckpt-7.index.tempstate99").write_text("partial save")
  eval_files = sorted(os.listdir(tmp_path / "eval_temp"))
  runner.train(train_input_fn(), max_steps=10)
  assert sorted(os.listdir(tmp_path / "eval_temp")) == eval_files
  assert (tmp_path / "notes_temp" / "todo").read_text() == "mine"
  assert (tmp_path / "data.tempstate1").read_text() == "mine too"
  assert not (tmp_path / "model.ckpt-7.index.tempstate99").exists()


def test_lowering_keep_checkpoint_max_between_runs_is_enforced(tmp_path):
  _runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=0).train(
      train_input_fn(), max_steps=50)
  assert len(checkpoint_steps(str(tmp_path))) == 11
  _runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=2).train(
      train_input_fn(), max_steps=55)
  assert checkpoint_steps(str(tmp_path)) == [50, 55]


def test_all_checkpoints_unreadable_refuses_to_start_over(tmp_path):
  runner = _runner(tmp_path, ipl=5, save_steps=5)
  runner.train(train_input_fn(), max_steps=10)
  for data_file in tf.io.gfile.glob(str(tmp_path / "model.ckpt-*.data-*")):
    with open(data_file, "r+b") as f:
      f.truncate(3)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(th.NoRestorableCheckpointError,
                     match="holds 3 checkpoint"):
    runner.train(train_input_fn(), max_steps=20)
  with pytest.raises(th.NoRestorableCheckpointError):
    runner.evaluate(train_input_fn(), steps=1)
  assert sorted(os.listdir(tmp_path)) == before


def test_a_second_trainer_is_refused_and_evaluation_runs_beside(tmp_path):
  model_dir = str(tmp_path / "model")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  # Keeps every checkpoint, so the one evaluated is not rotated away while
  # it is read (that case: test_evaluate_rechooses_a_rotated_checkpoint).
  worker = subprocess.Popen(
      [sys.executable, os.path.join(TESTS, "reliability_worker.py"),
       model_dir, "100000", "--keep_checkpoint_max", "0"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  try:
    deadline = time.monotonic() + 120
    while not contents.scan(model_dir).checkpoints:
      assert worker.poll() is None, worker.communicate()
      assert time.monotonic() < deadline
      time.sleep(0.05)
    second = th.Runner(reliability_worker.model_fn, th.RunConfig(
        model_dir, iterations_per_loop=2, save_checkpoints_steps=2),
                       params={"lr": 0.05}, train_batch_size=8,
                       eval_batch_size=8)
    with pytest.raises(th.ModelDirBusyError) as info:
      second.train(train_input_fn(), max_steps=100000)
    assert f"process {worker.pid} on host" in str(info.value)
    assert second.evaluate(train_input_fn(), steps=1)["global_step"] >= 0
  finally:
    worker.send_signal(signal.SIGTERM)
    worker.communicate(timeout=120)
  assert worker.returncode == 0


class _RotateNewestAway(tf.compat.v1.train.SessionRunHook):
  """Deletes the newest checkpoint once, after the evaluation chose it and
  before the session restores it, as a trainer's rotation beside would."""

  def __init__(self, model_dir):
    self._model_dir = model_dir
    self.deleted = []

  def begin(self):
    if not self.deleted:
      newest = contents.scan(self._model_dir).checkpoints[0]
      for path in tf.io.gfile.glob(newest + ".*"):
        os.remove(path)
      self.deleted.append(newest)


def test_evaluate_rechooses_a_rotated_checkpoint(tmp_path):
  runner = _runner(tmp_path, ipl=5, save_steps=5)
  runner.train(train_input_fn(), max_steps=10)
  rotate = _RotateNewestAway(str(tmp_path))
  results = runner.evaluate(train_input_fn(), steps=1, hooks=[rotate])
  assert rotate.deleted == [str(tmp_path / "model.ckpt-10")]
  assert results["global_step"] == 5


def test_an_exception_right_after_an_async_save_finishes_the_write(tmp_path):
  # The process dies of the NaN error while the save of step 6 (8 MB) is
  # being written in the background; the write must still complete.
  model_dir = str(tmp_path / "model")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  result = subprocess.run(
      [sys.executable, os.path.join(TESTS, "reliability_worker.py"),
       model_dir, "100", "--async_checkpoints", "--nan_at", "7"],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert result.returncode != 0 and "NanLossError: Loss is nan" in (
      result.stderr)
  # The message names the checkpoint the write in flight completed, the
  # state file names it too, and it reads back.
  latest = tf.train.latest_checkpoint(model_dir)
  assert contents.checkpoint_step(latest) >= 4
  assert f"it resumes from {latest}, saved before the NaN" in result.stderr
  assert restore_order.unreadable_reason(latest) is None


# ----------------------------------------------------------------------------
# Input never read beyond need; host memory for it bounded.


def test_a_huge_iterations_per_loop_reads_only_the_steps_needed(tmp_path):
  read = []

  def record(i, features, labels):
    read.append(int(i))
    return features, labels

  def input_fn(params):
    batch = params["batch_size"]
    # The recording map comes last: tf.data does not parallelize (and so
    # read ahead through) a py_function.
    return tf.data.Dataset.range(10**6).map(
        lambda i: (i, tf.fill([batch, 4], 0.5), tf.fill([batch, 1], 1.0))
    ).map(lambda i, x, y: tuple(
        tf.ensure_shape(t, s) for t, s in zip(
            tf.py_function(record, [i, x, y], [tf.float32, tf.float32]),
            [[batch, 4], [batch, 1]])))

  hook = RecordingHook()
  _runner(tmp_path, ipl=10**9, save_steps=100).train(input_fn, max_steps=10,
                                                     hooks=[hook])
  assert hook.steps == [10]
  assert sorted(read) == list(range(10))


def test_infeed_memory_limit_names_iterations_per_loop_and_batch(tmp_path):
  with pytest.raises(th.InfeedMemoryError) as info:
    _runner(tmp_path, ipl=1000, batch=32,
            max_infeed_bytes=2**20).train(train_input_fn(), max_steps=5000)
  message = str(info.value)
  assert "3 x 1000 steps x 640 B = 1.8 MiB" in message
  assert "iterations_per_loop=1000, train_batch_size=32" in message
  assert "over the limit of 1.0 MiB (RunConfig.max_infeed_bytes)" in message
  assert not checkpoint_steps(str(tmp_path))


# ----------------------------------------------------------------------------
# Clear errors.


def test_dtype_mismatch_is_listed(tmp_path):
  _runner(tmp_path, ipl=5).train(train_input_fn(), max_steps=5)

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
  runner = _runner(tmp_path, ipl=5)
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
  _runner(tmp_path, ipl=5, save_steps=None).train(
      train_input_fn(), max_steps=20, saving_listeners=[listener])
  assert listener.saved_steps() == [0, 20]


def test_session_config_is_merged_into_the_device_loops(tmp_path):
  config = tf.compat.v1.ConfigProto(allow_soft_placement=True,
                                    log_device_placement=True,
                                    device_count={"CPU": 1})
  runner = _runner(tmp_path, ipl=5, shards=2, session_config=config)
  merged = runner._session_config()  # pylint: disable=protected-access
  assert merged.log_device_placement and merged.allow_soft_placement
  assert merged.device_count["CPU"] == 2  # The emulation's replicas win.
  runner.train(train_input_fn(), max_steps=5)


def test_predict_can_yield_whole_batches(tmp_path):
  runner = _runner(tmp_path, ipl=2, batch=4, shards=2)
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

"""Runner: learning, resume, warm start, sharding."""

import os
import threading

import numpy as np
import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_models import train_input_fn
from support.runner_models import weights
from support.runner_models import write_checkpoint
from support.tf_fixtures import RecordingListener
from support.runner_fixtures import make_runner


# ----------------------------------------------------------------------------
# Learning, resume, warm start, sharding.


def test_trains_toward_true_weights(tmp_path):
  make_runner(tmp_path, params={"lr": 0.1}).train(train_input_fn(),
                                                  max_steps=200)
  np.testing.assert_allclose(weights(tf.train.latest_checkpoint(
      str(tmp_path))), [[1.0], [2.0], [-1.0], [0.5]], atol=0.05)


def test_resume_matches_uninterrupted_run(tmp_path):
  whole = make_runner(tmp_path / "whole", ipl=7, save_steps=10)
  whole.train(train_input_fn(), max_steps=33)
  parts = make_runner(tmp_path / "parts", ipl=7, save_steps=10)
  parts.train(train_input_fn(), max_steps=12)
  w12 = weights(parts.latest_checkpoint())
  # A new runner, as after a restart, continues from step 12.
  make_runner(tmp_path / "parts", ipl=7, save_steps=10).train(train_input_fn(),
                                                              max_steps=33)
  np.testing.assert_allclose(weights(parts.latest_checkpoint()),
                             weights(whole.latest_checkpoint()), rtol=1e-6)
  # Had the resumed run restarted the input from its first batch (the same
  # 33 SGD steps, other batches), the weights would differ.
  restarted = make_runner(tmp_path / "restarted", ipl=7, save_steps=10)
  write_checkpoint(str(tmp_path / "restarted"), w12, 0)
  restarted.train(train_input_fn(), max_steps=21)
  assert restarted.latest_checkpoint().endswith("model.ckpt-21")
  assert not np.allclose(weights(restarted.latest_checkpoint()),
                         weights(whole.latest_checkpoint()), rtol=1e-6)


class _SaverCount(tf.compat.v1.train.SessionRunHook):
  """The Savers in each session's graph (one SaveV2 op each)."""

  def __init__(self):
    self.counts = []

  def after_create_session(self, session, coord):
    del coord  # Unused.
    self.counts.append(sum(op.type == "SaveV2"
                           for op in session.graph.get_operations()))


def test_one_saver_restores_and_saves_where_the_checkpoint_has_a_position(
    tmp_path):
  whole = make_runner(tmp_path / "whole", ipl=5, save_steps=10)
  whole.train(train_input_fn(), max_steps=20)
  savers = _SaverCount()
  make_runner(tmp_path / "parts", ipl=5, save_steps=10).train(
      train_input_fn(), max_steps=10, hooks=[savers])
  parts = make_runner(tmp_path / "parts", ipl=5, save_steps=10)
  parts.train(train_input_fn(), max_steps=20, hooks=[savers])
  # The saver that saves the position restored it too: still exact.
  np.testing.assert_allclose(weights(parts.latest_checkpoint()),
                             weights(whole.latest_checkpoint()), rtol=1e-6)
  # A checkpoint without a position: restored by a Saver of the model.
  make_runner(tmp_path / "restart", ipl=5, save_steps=10,
              resume_input="restart").train(train_input_fn(), max_steps=10)
  restarted = make_runner(tmp_path / "restart", ipl=5, save_steps=10)
  restarted.train(train_input_fn(), max_steps=20, hooks=[savers])
  assert restarted.latest_checkpoint().endswith("model.ckpt-20")
  assert savers.counts == [1, 1, 2]


class _SetOnSessionStart(tf.compat.v1.train.SessionRunHook):

  def __init__(self, event):
    self._event = event

  def after_create_session(self, session, coord):
    del session, coord  # Unused.
    self._event.set()


def test_the_hooks_after_the_infeed_start_while_it_starts(tmp_path):
  # Resuming by skipping reads the 10 steps trained on as the infeed
  # starts; here each read waits for a hook's after_create_session, which
  # comes after the infeed's: it runs while the infeed starts.
  runner = make_runner(tmp_path, ipl=5, save_steps=10, resume_input="skip")
  runner.train(train_input_fn(), max_steps=10)
  hook_ran = threading.Event()

  def wait_for_the_hook():
    if not hook_ran.wait(60):
      raise RuntimeError("the hooks waited for the infeed's start")
    return True

  def input_fn(params):
    def gate(features, labels):
      with tf.control_dependencies(
          [tf.py_function(wait_for_the_hook, [], tf.bool)]):
        return tf.identity(features), tf.identity(labels)
    return train_input_fn()(params).map(gate)

  runner.train(input_fn, max_steps=20, hooks=[_SetOnSessionStart(hook_ran)])
  assert runner.latest_checkpoint().endswith("model.ckpt-20")


def test_warm_start_from_initializes_trainable_variables(tmp_path):
  source = write_checkpoint(str(tmp_path), [[5.0], [6.0], [7.0], [8.0]], 99)
  listener = RecordingListener()
  runner = make_runner(tmp_path / "new", params={"lr": 0.0},
                       warm_start_from=source)
  runner.train(train_input_fn(), max_steps=10, saving_listeners=[listener])
  step0 = os.path.join(str(tmp_path / "new"), "model.ckpt-0")
  np.testing.assert_allclose(weights(step0), [[5.0], [6.0], [7.0], [8.0]])
  # The global step is not warm-started: training starts at 0.
  assert listener.saved_steps()[0] == 0


@pytest.mark.parametrize("shards", [2, 4])
def test_sharded_training_matches_unsharded(tmp_path, shards):
  single = make_runner(tmp_path / "one", ipl=5, batch=32)
  single.train(train_input_fn(), max_steps=23)
  sharded = make_runner(tmp_path / "many", ipl=5, batch=32, shards=shards)
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


def test_checkpoints_kept_every_n_hours_stay_across_runs(tmp_path):
  """keep_checkpoint_every_n_hours (EfficientNetV2's default is 5): TF's
  Saver keeps the checkpoints it rotates out past each mark for good, and a
  resumed run's start-up rotation leaves them. A mark a fraction of a
  microsecond long keeps every one."""

  def train(max_steps):
    make_runner(tmp_path, ipl=1, save_steps=1, keep_checkpoint_max=1,
                keep_checkpoint_every_n_hours=1e-10).train(
                    train_input_fn(), max_steps=max_steps)

  def on_disk():
    return sorted(int(name[len("model.ckpt-"):-len(".index")])
                  for name in os.listdir(tmp_path)
                  if name.startswith("model.ckpt-")
                  and name.endswith(".index"))

  train(3)
  assert on_disk() == [0, 1, 2, 3]
  train(5)
  assert on_disk() == [0, 1, 2, 3, 4, 5]
  state = tf.train.get_checkpoint_state(str(tmp_path))
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      "model.ckpt-5"]

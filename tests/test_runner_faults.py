"""Runner: faults (a clear error and nothing lost), and what belongs to a
run."""

import dataclasses
import json
import logging as std_logging
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf

import hooks
from support import reliability_worker
import tpu_harness as th
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn
from support.runner_models import weights
from support.runner_models import write_checkpoint
from support.tf_fixtures import RecordingListener
from support.tf_fixtures import checkpoint_steps
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from support.runner_fixtures import make_runner

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


# ----------------------------------------------------------------------------
# Faults: a clear error and nothing lost (tests/FAULTS.md lists them all).


def test_model_dir_that_is_a_file(tmp_path):
  path = tmp_path / "model"
  path.write_text("precious")
  with pytest.raises(ValueError, match=r"is a file, not a directory"):
    make_runner(path).train(train_input_fn(), max_steps=5)
  assert path.read_text() == "precious"


def test_unwritable_model_dir(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match="is not a writable directory"):
    make_runner(tmp_path / "file" / "model").train(train_input_fn(),
                                                   max_steps=5)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path,
                                                              caplog):
  runner = make_runner(tmp_path, ipl=10, save_steps=10)
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
  runner = make_runner(tmp_path, ipl=10, save_steps=10)
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
  runner = make_runner(tmp_path, ipl=10, save_steps=10)
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
    make_runner(tmp_path).train(train_input_fn(), max_steps=20)
  assert "shape differs: ['w: checkpoint (3, 1) vs model (4, 1)']" in str(
      info.value)
  assert sorted(os.listdir(tmp_path)) == before
  with pytest.raises(th.CheckpointMismatchError):
    make_runner(tmp_path).evaluate(train_input_fn(), steps=1)


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
    make_runner(tmp_path, batch=4).train(input_fn, max_steps=1)


def test_async_checkpoints_give_the_same_checkpoints(tmp_path):
  sync = make_runner(tmp_path / "sync", ipl=5, save_steps=10)
  sync.train(train_input_fn(), max_steps=33)
  listener = RecordingListener()
  background = make_runner(tmp_path / "async", ipl=5, save_steps=10,
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
  make_runner(tmp_path / "B", ipl=5, save_steps=5, keep_checkpoint_max=2).train(
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
  make_runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=1).train(
      train_input_fn(), max_steps=15, saving_listeners=[listener])
  # Started from scratch (not from pretrained-50's step and weights).
  assert listener.saved_steps() == [0, 5, 10, 15]
  assert sorted(n for n in os.listdir(tmp_path)
                if n.startswith(("best", "pretrained"))) == theirs
  assert np.all(weights(str(tmp_path / "pretrained-50")) == 9.0)


def test_user_temp_files_and_eval_temp_output_survive_training(tmp_path):
  runner = make_runner(tmp_path, ipl=5, save_steps=5)
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
  make_runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=0).train(
      train_input_fn(), max_steps=50)
  assert len(checkpoint_steps(str(tmp_path))) == 11
  make_runner(tmp_path, ipl=5, save_steps=5, keep_checkpoint_max=2).train(
      train_input_fn(), max_steps=55)
  assert checkpoint_steps(str(tmp_path)) == [50, 55]


def test_all_checkpoints_unreadable_refuses_to_start_over(tmp_path):
  runner = make_runner(tmp_path, ipl=5, save_steps=5)
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


@pytest.mark.system
def test_a_second_trainer_is_refused_and_evaluation_runs_beside(tmp_path):
  model_dir = str(tmp_path / "model")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  # Keeps every checkpoint, so the one evaluated is not rotated away while
  # it is read (that case: test_evaluate_rechooses_a_rotated_checkpoint).
  worker = subprocess.Popen(
      [sys.executable, os.path.join(TESTS, "support", "reliability_worker.py"),
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


def test_the_lease_is_read_back_after_the_graph_is_built(tmp_path):
  # The lease's read-back waits out its settle time while the graph is
  # built: another trainer that wrote the lease meanwhile (here, while
  # input_fn runs) wins, and this one stops before writing anything.
  model_dir = str(tmp_path)

  def input_fn(params):
    with open(os.path.join(model_dir, contents.LEASE_NAME), "w") as f:
      json.dump({"token": "other", "host": "another-host", "pid": 1,
                 "heartbeat": time.time()}, f)
    return train_input_fn()(params)

  runner = th.Runner(reliability_worker.model_fn, th.RunConfig(
      model_dir, iterations_per_loop=2, save_checkpoints_steps=2),
                     params={"lr": 0.05}, train_batch_size=8)
  with pytest.raises(th.ModelDirBusyError) as info:
    runner.train(input_fn, max_steps=4)
  assert "process 1 on host another-host" in str(info.value)
  assert _files(model_dir) == {}


def _files(model_dir):
  """{name: (size, mtime)} of the files in `model_dir`, but the lease."""
  found = {}
  for name in os.listdir(model_dir):
    if not name.startswith(contents.LEASE_NAME):
      stat = os.stat(os.path.join(model_dir, name))
      found[name] = (stat.st_size, stat.st_mtime_ns)
  return found


def _wait_for(path, process, secs=180):
  deadline = time.monotonic() + secs
  while not os.path.exists(path):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, f"no {path} after {secs} s"
    time.sleep(0.02)


@pytest.mark.system
@pytest.mark.parametrize("saves", ["sync", "async"])
def test_a_trainer_stalled_past_its_lease_writes_nothing_more(tmp_path,
                                                              saves):
  # Trainer A is stopped (SIGSTOP: a frozen VM) between a loop and its
  # save; B takes the stale lease over, resumes and saves. When A continues,
  # it must stop with LeaseLostError before writing anything into B's
  # model_dir: no checkpoint, no state file, no events.
  model_dir = str(tmp_path / "model")
  marks_a, marks_b = str(tmp_path / "a"), str(tmp_path / "b")
  os.makedirs(marks_a)
  os.makedirs(marks_b)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  worker = [sys.executable,
            os.path.join(TESTS, "support", "reliability_worker.py"),
            model_dir, "--lease_secs", "0.5,2"] + (
                ["--async_checkpoints"] if saves == "async" else [])

  def start(max_steps, *args):
    return subprocess.Popen(worker[:3] + [str(max_steps)] + worker[3:]
                            + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)

  first = start(100000, "--markers", marks_a, "--pause_at", "6")
  second = None
  try:
    _wait_for(os.path.join(marks_a, "paused"), first)
    stopped = time.time()
    first.send_signal(signal.SIGSTOP)
    time.sleep(2.5)  # Its lease is stale now.
    second = start(12, "--markers", marks_b, "--hold_in_end")
    _wait_for(os.path.join(marks_b, "in_end"), second)
    before = _files(model_dir)
    with open(os.path.join(marks_a, "go"), "w"):
      pass
    first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=180)
    assert first.returncode != 0
    assert "LeaseLostError" in stderr
    assert "stopped without writing there again" in stderr
    after = _files(model_dir)
    # Only A's own events file may have grown, as it exited, with events
    # made before it was stopped.
    grown = [name for name in after if after[name] != before.get(name)]
    assert set(after) == set(before)
    assert all(name.startswith("events.out.tfevents.") for name in grown)
    for name in grown:
      assert max(event.wall_time for event in tf.compat.v1.train
                 .summary_iterator(os.path.join(model_dir, name))) < stopped
    with open(os.path.join(marks_b, "release"), "w"):
      pass
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr
    assert "FINAL_STEP=12" in stdout
  finally:
    for process in (first, second):
      if process is not None and process.poll() is None:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.communicate()
  assert restore_order.unreadable_reason(
      tf.train.latest_checkpoint(model_dir)) is None


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
  runner = make_runner(tmp_path, ipl=5, save_steps=5)
  runner.train(train_input_fn(), max_steps=10)
  rotate = _RotateNewestAway(str(tmp_path))
  results = runner.evaluate(train_input_fn(), steps=1, hooks=[rotate])
  assert rotate.deleted == [str(tmp_path / "model.ckpt-10")]
  assert results["global_step"] == 5


def test_a_start_that_fails_writing_leaves_no_files_behind(tmp_path):
  """Start-up fails writing graph.pbtxt (a directory in its place here; a
  full disk in life): no temporary file and no events file of the failed
  start stay to eat the space the user frees; the next start trains."""
  os.makedirs(tmp_path / "graph.pbtxt" / "taken")
  runner = make_runner(tmp_path, ipl=5, save_steps=5)
  with warnings.catch_warnings(record=True) as warned:
    warnings.simplefilter("always")
    with pytest.raises(hooks.CheckpointSaveError, match=r"graph\.pbtxt"):
      runner.train(train_input_fn(), max_steps=10)
  # The events writer closed to remove its file is not flushed after.
  assert not [w for w in warned if "closed FileWriter" in str(w.message)]
  left = sorted(os.listdir(tmp_path))
  assert not [name for name in left if ".tmp" in name
              or name.startswith("events.out.tfevents.")], left
  shutil.rmtree(tmp_path / "graph.pbtxt")
  runner.train(train_input_fn(), max_steps=10)
  assert contents.checkpoint_step(runner.latest_checkpoint()) == 10


@pytest.mark.system
def test_evaluate_beside_a_trainer_keeping_one_checkpoint(tmp_path):
  """A real trainer saves every 2 steps and keeps 1 checkpoint: each
  evaluation beside it restores one of them (choosing the newest again
  when the one chosen is rotated away), or, after too many rotations in a
  row, says so; never a broken-checkpoint error."""
  model_dir = str(tmp_path / "model")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  trainer = subprocess.Popen(
      [sys.executable, os.path.join(TESTS, "support", "reliability_worker.py"),
       model_dir, "100000000", "--keep_checkpoint_max", "1"],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 180
    while tf.train.latest_checkpoint(model_dir) is None:
      assert trainer.poll() is None and time.monotonic() < deadline
      time.sleep(0.1)
    runner = th.Runner(reliability_worker.model_fn,
                       th.RunConfig(model_dir, keep_checkpoint_max=1),
                       params={"lr": 0.05}, eval_batch_size=8)
    outcomes = []
    for _ in range(3):
      try:
        results = runner.evaluate(reliability_worker.train_input_fn(),
                                  steps=1)
        outcomes.append(results["global_step"])
      except th.CheckpointRotatedError as error:
        outcomes.append(str(error))
    assert trainer.poll() is None
  finally:
    trainer.kill()
    trainer.wait()
  assert all(isinstance(o, int) or "rotated away" in o for o in outcomes)
  assert any(isinstance(o, int) for o in outcomes), outcomes


@pytest.mark.system
def test_an_exception_right_after_an_async_save_finishes_the_write(tmp_path):
  # The process dies of the NaN error while the save of step 6 (8 MB) is
  # being written in the background; the write must still complete.
  model_dir = str(tmp_path / "model")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  result = subprocess.run(
      [sys.executable, os.path.join(TESTS, "support", "reliability_worker.py"),
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

"""CheckpointSaverHook: real sessions, real checkpoints, TF's hook as oracle."""

import os
import random
import re

import numpy as np
import pytest
import tensorflow as tf

import hooks
from support.tf_fixtures import RecordingListener
from support.tf_fixtures import build_loop_graph
from support.tf_fixtures import checkpoint_log_steps
from support.tf_fixtures import checkpoint_steps
from support.tf_fixtures import event_records
from support.tf_fixtures import run_loops


class FakeClock:
  """A clock the test moves by hand."""

  def __init__(self, now=0.0):
    self.now = now

  def __call__(self):
    return self.now


def _dir(tmp_path, name):
  path = tmp_path / name
  return str(path)


def _file_names(directory):
  """Sorted file names, with each event file's creation second masked.

  An event file is named `events.out.tfevents.<unix seconds>.<host>`, so two
  writers opened a moment apart may differ only in that second.
  """
  return sorted(re.sub(r"^(events\.out\.tfevents\.)\d+\.", r"\1<time>.", f)
                for f in os.listdir(directory))


# ----------------------------------------------------------------------------
# What after_create_session, after_run and end do, on disk.


def test_saves_on_schedule_and_files_are_real_checkpoints(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=25, steps_per_run=10,
                                   listeners=[listener])
  final = run_loops([hook], graph, [10] * 7)

  assert final == 70
  # 0 at session creation; 30 and 60 are the first run boundaries >= 25 and
  # >= 30 + 25; 70 is the final save in end().
  assert listener.calls == [
      ("begin", None),
      ("before_save", 0), ("after_save", 0),
      ("before_save", 30), ("after_save", 30),
      ("before_save", 60), ("after_save", 60),
      ("before_save", 70), ("after_save", 70),
      ("end", 70)]
  assert checkpoint_steps(ckpt_dir) == [0, 30, 60, 70]
  latest = tf.train.latest_checkpoint(ckpt_dir)
  assert latest == os.path.join(ckpt_dir, "model.ckpt-70")
  reader = tf.train.load_checkpoint(latest)
  assert reader.get_tensor("global_step") == 70
  # 70 SGD steps on (w - 3)^2 from 0 with lr 0.1: w = 3 * (1 - 0.8**70).
  np.testing.assert_allclose(reader.get_tensor("w"), 3 * (1 - 0.8**70),
                             rtol=1e-5)
  assert checkpoint_log_steps(ckpt_dir) == [0, 30, 60, 70]


def test_after_create_session_writes_graph_and_step0_checkpoint(tmp_path,
                                                               caplog):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=5)
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=1000,
                                   steps_per_run=5, listeners=[listener])
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None):
    # No run yet: the session's creation alone saved step 0.
    assert listener.calls == [("begin", None), ("before_save", 0),
                              ("after_save", 0)]
    assert checkpoint_steps(ckpt_dir) == [0]
    assert tf.io.gfile.exists(os.path.join(ckpt_dir, "graph.pbtxt"))
    assert tf.io.gfile.exists(os.path.join(ckpt_dir, "model.ckpt-0.meta"))
  del graph
  tf.compat.v1.summary.FileWriterCache.clear()
  events = event_records(ckpt_dir)
  # The last graph is the hook's: the graph that ran.
  graph_event = [e for e in events if e.HasField("graph_def")][-1]
  written = tf.compat.v1.GraphDef.FromString(graph_event.graph_def)
  assert ({node.name for node in written.node} == {
      op.name for op in tf.compat.v1.get_default_graph().get_operations()})
  assert graph_event.wall_time > 0
  assert "deprecated" not in caplog.text
  assert any(e.HasField("meta_graph_def") for e in events)
  # end() found step 0 just saved and did not save again.
  assert listener.saved_steps() == [0]
  assert listener.calls[-1] == ("end", 0)


def test_graph_pbtxt_is_the_text_tf_write_graph_writes(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  build_loop_graph(steps_per_run=5)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=1000,
                                   steps_per_run=5)
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None):
    graph_def = tf.compat.v1.get_default_graph().as_graph_def(add_shapes=True)
  tf.io.write_graph(graph_def, str(tmp_path), "reference.pbtxt")
  with open(os.path.join(ckpt_dir, "graph.pbtxt")) as ours, open(
      tmp_path / "reference.pbtxt") as reference:
    assert ours.read() == reference.read()


def test_a_failed_graph_write_leaves_nothing_and_says_so(tmp_path):
  """The write of graph.pbtxt fails (here: a directory is in its place; a
  full disk in life): its temporary file is removed, the error names it."""
  ckpt_dir = _dir(tmp_path, "ckpt")
  os.makedirs(os.path.join(ckpt_dir, "graph.pbtxt", "taken"))
  build_loop_graph(steps_per_run=5)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=1000,
                                   steps_per_run=5)
  with pytest.raises(hooks.CheckpointSaveError,
                     match=r"Writing .*graph\.pbtxt failed: .*Nothing was "
                     r"left of it"):
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None):
      pass
  assert not [name for name in os.listdir(ckpt_dir) if ".tmp" in name]


def test_a_failed_first_save_is_the_error_raised_not_the_graphs(tmp_path):
  """The session's first save and the graph's text both fail: the save's
  error is the one raised (the graph's export, on its thread, does not
  replace it)."""
  ckpt_dir = _dir(tmp_path, "ckpt")
  os.makedirs(os.path.join(ckpt_dir, "graph.pbtxt", "taken"))
  os.makedirs(os.path.join(ckpt_dir, "model.ckpt-0.meta"))
  build_loop_graph(steps_per_run=5)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=1000,
                                   steps_per_run=5)
  with pytest.raises(hooks.CheckpointSaveError,
                     match=r"^Saving the checkpoint for step 0 "):
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None):
      pass
  assert not [name for name in os.listdir(ckpt_dir) if ".tmp" in name]


@pytest.mark.parametrize("save_graph_def", [True, False])
def test_the_graphs_events_come_before_the_first_checkpoints(
    tmp_path, save_graph_def):
  ckpt_dir = _dir(tmp_path, "ckpt")
  build_loop_graph(steps_per_run=5)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=1000,
                                   steps_per_run=5,
                                   save_graph_def=save_graph_def)
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None):
    pass
  tf.compat.v1.summary.FileWriterCache.clear()
  kinds = [("graph" if e.HasField("graph_def") else
            "meta" if e.HasField("meta_graph_def") else
            "checkpoint" if e.session_log.status
            == tf.compat.v1.SessionLog.CHECKPOINT else None)
           for e in event_records(ckpt_dir)]
  # The writer's own first (FileWriterCache's, with the default graph),
  # then the hook's, then the first save's.
  assert [kind for kind in kinds if kind] == [
      "graph", "meta", "graph", "meta", "checkpoint"]
  assert os.path.exists(os.path.join(ckpt_dir, "graph.pbtxt")) == (
      save_graph_def)


def test_end_does_not_save_twice_when_last_run_saved(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=20, steps_per_run=10,
                                   listeners=[listener])
  run_loops([hook], graph, [10] * 4)
  assert listener.saved_steps() == [0, 20, 40]
  assert listener.calls[-1] == ("end", 40)


def test_save_graph_def_false_writes_no_graph_and_no_meta(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10,
                                   save_graph_def=False)
  run_loops([hook], graph, [10] * 3)
  files = os.listdir(ckpt_dir)
  assert "graph.pbtxt" not in files
  assert not [f for f in files if f.endswith(".meta")]
  assert checkpoint_steps(ckpt_dir) == [0, 10, 20, 30]


def test_every_meta_file_is_the_graph_saver_would_export(tmp_path):
  # The hook exports the finalized graph once and writes those bytes for
  # every checkpoint: each .meta must be what Saver.save itself writes.
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10)
  run_loops([hook], graph, [10] * 2)
  saver = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVERS)[0]
  expected = saver.export_meta_graph()
  for step in (0, 10, 20):
    path = os.path.join(ckpt_dir, f"model.ckpt-{step}.meta")
    written = tf.compat.v1.MetaGraphDef()
    with tf.io.gfile.GFile(path, "rb") as f:
      written.ParseFromString(f.read())
    assert written == expected
    with tf.Graph().as_default():
      restored = tf.compat.v1.train.import_meta_graph(path)
      with tf.compat.v1.Session() as session:
        restored.restore(session, path[:-len(".meta")])
        assert session.run(tf.compat.v1.train.get_global_step()) == step


class _CountingSaver(tf.compat.v1.train.Saver):
  """A real Saver that counts how often it exports the graph."""

  exports = 0

  def export_meta_graph(self, *args, **kwargs):
    type(self).exports += 1
    return super().export_meta_graph(*args, **kwargs)


def test_saves_do_not_export_the_finalized_graph_again(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  saver = _CountingSaver()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10,
                                   saver=saver)
  run_loops([hook], graph, [10] * 3)
  assert checkpoint_steps(ckpt_dir) == [0, 10, 20, 30]
  assert all(os.path.exists(os.path.join(ckpt_dir, f"model.ckpt-{s}.meta"))
             for s in (0, 10, 20, 30))
  assert _CountingSaver.exports == 0


def test_a_meta_file_that_cannot_be_written_fails_the_save(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  os.makedirs(os.path.join(ckpt_dir, "model.ckpt-10.meta"))  # Unwritable.
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10)
  with pytest.raises(hooks.CheckpointSaveError,
                     match="checkpoint for step 10 .* failed"):
    run_loops([hook], graph, [10] * 2)


def test_listener_after_save_true_stops_training(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  stopper = RecordingListener(stop_after_save_at=30)
  other = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=15, steps_per_run=10,
                                   listeners=[stopper, other])
  final = run_loops([hook], graph, [10] * 100)
  # Saves at 0, 20 (>= 15), 40 (>= 35); the save at 40 asks to stop.
  assert final == 40
  # Both listeners saw every save, including the one that asked to stop,
  # and end() did not save step 40 twice.
  assert stopper.saved_steps() == other.saved_steps() == [0, 20, 40]
  assert other.calls[-1] == ("end", 40)


def test_tf_listener_subclass_works(tmp_path):

  class TfListener(tf.compat.v1.train.CheckpointSaverListener):

    def __init__(self):
      self.saves = []

    def after_save(self, session, global_step_value):
      self.saves.append(int(global_step_value))

  listener = TfListener()
  graph = build_loop_graph(steps_per_run=4)
  hook = hooks.CheckpointSaverHook(_dir(tmp_path, "ckpt"), save_steps=8,
                                   steps_per_run=4, listeners=[listener])
  run_loops([hook], graph, [4] * 5)
  assert listener.saves == [0, 8, 16, 20]


def test_our_listener_works_with_tf_hook(tmp_path):
  listener = RecordingListener()
  graph = build_loop_graph(steps_per_run=1)
  tf_hook = tf.compat.v1.train.CheckpointSaverHook(
      _dir(tmp_path, "ckpt"), save_steps=2, listeners=[listener])
  run_loops([tf_hook], graph, [1] * 3)
  assert listener.saved_steps() == [0, 2, 3]


def test_resume_continues_from_latest_checkpoint(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=10)
    hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=20,
                                     steps_per_run=10)
    assert run_loops([hook], graph, [10] * 5) == 50
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=10)
    listener = RecordingListener()
    hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=20,
                                     steps_per_run=10, listeners=[listener])
    # The session restores step 50 from ckpt_dir, then runs 3 more loops.
    assert run_loops([hook], graph, [10] * 3, checkpoint_dir=ckpt_dir) == 80
  assert listener.saved_steps() == [50, 70, 80]
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
  np.testing.assert_allclose(reader.get_tensor("w"), 3 * (1 - 0.8**80),
                             rtol=1e-5)


def test_save_secs_with_fake_clock(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  clock = FakeClock()
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_secs=10, steps_per_run=10,
                                   listeners=[listener], clock=clock)
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None) as session:
    for _ in range(6):
      clock.now += 4.0  # Each loop "takes" 4 seconds.
      session.run(graph.train_op)
  # t=0 step 0; t=12 step 30 (first >= 10 s); t=24 step 60; end at 60 saved.
  assert listener.saved_steps() == [0, 30, 60]
  assert checkpoint_steps(ckpt_dir) == [0, 30, 60]


# ----------------------------------------------------------------------------
# Differential test: TF 2.21's hook (its private steps_per_run setter) decides
# the same saves whenever steps_per_run is the true per-run increment.


def _schedules():
  cases = [
      # (start_step, save_steps, steps_per_run, increments)
      (0, 1, 1, [1] * 5),
      (0, 3, 1, [1] * 10),
      (0, 10, 10, [10] * 5),
      (0, 25, 10, [10] * 7),
      (0, 5, 10, [10] * 4),
      (0, 100, 10, [10] * 9 + [3]),
      (0, 7, 3, [3] * 8 + [2]),
      (0, 1000, 10, [10] * 3),
      (17, 10, 5, [5] * 6),
      (100, 30, 20, [20] * 5 + [7]),
  ]
  rng = random.Random(2026)
  for _ in range(14):
    spr = rng.choice([1, 2, 3, 5, 8, 13, 100])
    save_steps = rng.randint(1, 4 * spr + 3)
    runs = rng.randint(1, 12)
    increments = [spr] * runs
    if rng.random() < 0.5:
      increments[-1] = rng.randint(1, spr)  # shortened last loop
    start = rng.choice([0, 0, rng.randint(1, 300)])
    cases.append((start, save_steps, spr, increments))
  return cases


def _set_start_step(restore_dir, start_step):
  """Writes a checkpoint at `start_step` to resume from (a fresh graph)."""
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=1)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(graph.global_step.assign(start_step))
      saver.save(session, os.path.join(restore_dir, "model.ckpt"),
                 global_step=start_step)


def _run_both(tmp_path, start, increments, ours_kwargs, tf_kwargs,
              tf_steps_per_run, stop_at=None):
  """Runs our hook and TF's side by side in one session; returns outcomes."""
  with tf.Graph().as_default():
    return _run_both_in_graph(tmp_path, start, increments, ours_kwargs,
                              tf_kwargs, tf_steps_per_run, stop_at)


def _run_both_in_graph(tmp_path, start, increments, ours_kwargs, tf_kwargs,
                       tf_steps_per_run, stop_at):
  restore_dir = None
  if start:
    restore_dir = _dir(tmp_path, "restore")
    _set_start_step(restore_dir, start)
  ours_dir, tf_dir = _dir(tmp_path, "ours"), _dir(tmp_path, "tf")
  graph = build_loop_graph(steps_per_run=max(increments))
  ours_listener = RecordingListener(stop_after_save_at=stop_at)
  tf_listener = RecordingListener(stop_after_save_at=stop_at)
  ours = hooks.CheckpointSaverHook(
      ours_dir, saver=tf.compat.v1.train.Saver(max_to_keep=None),
      listeners=[ours_listener], **ours_kwargs)
  theirs = tf.compat.v1.train.CheckpointSaverHook(
      tf_dir, saver=tf.compat.v1.train.Saver(max_to_keep=None),
      listeners=[tf_listener], **tf_kwargs)
  if tf_steps_per_run is not None:
    theirs._set_steps_per_run(tf_steps_per_run)  # pylint: disable=protected-access
  final = run_loops([ours, theirs], graph, increments,
                    checkpoint_dir=restore_dir)
  tf.compat.v1.summary.FileWriterCache.clear()
  return final, (ours_listener, ours_dir), (tf_listener, tf_dir)


@pytest.mark.parametrize("start,save_steps,spr,increments", _schedules())
def test_matches_tf_hook_when_steps_per_run_is_true(tmp_path, start,
                                                    save_steps, spr,
                                                    increments):
  final, (ours, ours_dir), (theirs, tf_dir) = _run_both(
      tmp_path, start, increments,
      dict(save_steps=save_steps, steps_per_run=spr),
      dict(save_steps=save_steps), tf_steps_per_run=spr)
  assert final == start + sum(increments)
  assert ours.calls == theirs.calls
  assert checkpoint_steps(ours_dir) == checkpoint_steps(tf_dir)
  assert checkpoint_log_steps(ours_dir) == checkpoint_log_steps(tf_dir)
  assert _file_names(ours_dir) == _file_names(tf_dir)


@pytest.mark.parametrize("stop_at", [0, 13, 40])
def test_matches_tf_hook_on_listener_stop(tmp_path, stop_at):
  final, (ours, _), (theirs, _) = _run_both(
      tmp_path, 0, [5] * 20, dict(save_steps=13, steps_per_run=5),
      dict(save_steps=13), tf_steps_per_run=5, stop_at=stop_at)
  assert ours.calls == theirs.calls
  assert final == ours.saved_steps()[-1]


def test_matches_tf_hook_for_save_secs_without_time_trigger(tmp_path):
  _, (ours, ours_dir), (theirs, tf_dir) = _run_both(
      tmp_path, 0, [10] * 5, dict(save_secs=3600, steps_per_run=10),
      dict(save_secs=3600), tf_steps_per_run=10)
  assert ours.calls == theirs.calls == [
      ("begin", None), ("before_save", 0), ("after_save", 0),
      ("before_save", 50), ("after_save", 50), ("end", 50)]
  assert checkpoint_steps(ours_dir) == checkpoint_steps(tf_dir) == [0, 50]


# ----------------------------------------------------------------------------
# Beyond TF: a wrong steps_per_run is learned, so no save is missed.


@pytest.mark.parametrize("declared", [1, 7, 30])
@pytest.mark.parametrize("save_steps", [50, 150, 250])
def test_wrong_steps_per_run_saves_like_the_true_one(tmp_path, declared,
                                                     save_steps):
  increments = [100] * 6
  # Oracle: TF's hook with the true steps_per_run. Against it: ours declared
  # wrong. TF's hook with the same wrong value is the counter-example.
  _, (ours, _), (oracle, _) = _run_both(
      tmp_path / "a", 0, increments,
      dict(save_steps=save_steps, steps_per_run=declared),
      dict(save_steps=save_steps), tf_steps_per_run=100)
  assert ours.calls == oracle.calls
  _, _, (tf_wrong, _) = _run_both(
      tmp_path / "b", 0, increments,
      dict(save_steps=save_steps, steps_per_run=declared),
      dict(save_steps=save_steps), tf_steps_per_run=declared)
  assert tf_wrong.calls != oracle.calls  # TF itself is late here.


def _late_boundaries(start, increments, saved, save_steps):
  """Indexes j of runs after which a save was due but not made."""
  late, last_save, step = [], start, start
  for j, increment in enumerate(increments):
    step += increment
    if step in saved:
      last_save = step
    elif step >= last_save + save_steps:
      late.append(j)
  return late


@pytest.mark.parametrize("seed", range(6))
def test_varying_increments_delay_at_most_one_run(tmp_path, seed):
  rng = random.Random(seed)
  increments = [rng.choice([1, 2, 5, 20, 40]) for _ in range(25)]
  save_steps = rng.choice([3, 10, 30])
  listener = RecordingListener()
  graph = build_loop_graph(steps_per_run=1)
  hook = hooks.CheckpointSaverHook(_dir(tmp_path, "c"), save_steps=save_steps,
                                   steps_per_run=1, listeners=[listener])
  run_loops([hook], graph, increments)
  saved = set(listener.saved_steps())
  late = _late_boundaries(0, increments, saved, save_steps)
  for j in late:
    # A due save is missed only by a run that advanced further than any run
    # before it (the first run is always checked), and never two in a row.
    assert j > 0 and increments[j] > max(increments[:j])
    assert j + 1 not in late


# ----------------------------------------------------------------------------
# Bad input: clear errors naming the caller's argument.

BAD = [
    (dict(), ValueError, "Exactly one of `save_steps` and `save_secs`"),
    (dict(save_secs=10, save_steps=10), ValueError,
     "Exactly one of `save_steps` and `save_secs` must be set; got "
     "save_steps=10, save_secs=10"),
    (dict(save_steps=0), ValueError,
     "`save_steps` (0) must be a positive integer"),
    (dict(save_steps=-5), ValueError, "`save_steps` (-5)"),
    (dict(save_steps=2.5), TypeError, "`save_steps` (2.5) must be a positive"),
    (dict(save_steps=True), TypeError, "`save_steps` (True)"),
    (dict(save_secs=0), ValueError, "`save_secs` (0) must be a positive"),
    (dict(save_secs="60"), TypeError, "`save_secs` ('60')"),
    (dict(save_steps=1, steps_per_run=0), ValueError,
     "`steps_per_run` (0) must be a positive integer"),
    (dict(save_steps=1, steps_per_run=1.0), TypeError, "`steps_per_run` (1.0)"),
    (dict(save_steps=1, saver="SAVER", scaffold="SCAFFOLD"), ValueError,
     "At most one of `saver` and `scaffold`"),
    (dict(save_steps=1, saver="not a saver"), TypeError,
     "`saver` ('not a saver') must be a tf.compat.v1.train.Saver"),
    (dict(save_steps=1, scaffold=object()), TypeError,
     "`scaffold` (<object object"),
    (dict(save_steps=1, listeners=RecordingListener()), TypeError,
     "`listeners` (<support.tf_fixtures.RecordingListener"),
    (dict(save_steps=1, listeners=[RecordingListener(), "x"]), TypeError,
     "`listeners[1]` ('x') must be a CheckpointSaverListener"),
    (dict(save_steps=1, listeners=5), TypeError,
     "`listeners` (5) must be a list of CheckpointSaverListeners"),
    # The class, not an instance: its methods exist, unbound.
    (dict(save_steps=1, listeners=[hooks.CheckpointSaverListener]), TypeError,
     "`listeners[0]` (<class 'hooks.checkpoint_saver_listener."
     "CheckpointSaverListener'>) must be an instance, not a class; pass "
     "CheckpointSaverListener()"),
    (dict(save_steps=1, checkpoint_basename=""), ValueError,
     "`checkpoint_basename` ('') must be a non-empty string"),
    (dict(save_steps=1, write_guard="lease"), TypeError,
     "`write_guard` ('lease') must be callable with no arguments"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_arguments(tmp_path, kwargs, error, message):
  with pytest.raises(error) as info:
    hooks.CheckpointSaverHook(str(tmp_path), **kwargs)
  assert message in str(info.value)


@pytest.mark.parametrize("checkpoint_dir,error,message", [
    ("", ValueError, "`checkpoint_dir` ('') must be a non-empty path"),
    ("  ", ValueError, "`checkpoint_dir` ('  ')"),
    (None, TypeError, "`checkpoint_dir` (None) must be a directory path"),
    (3, TypeError, "`checkpoint_dir` (3)"),
])
def test_bad_checkpoint_dir(checkpoint_dir, error, message):
  with pytest.raises(error) as info:
    hooks.CheckpointSaverHook(checkpoint_dir, save_steps=1)
  assert message in str(info.value)


def test_no_global_step_is_a_clear_runtime_error(tmp_path):
  tf.compat.v1.get_variable("w", initializer=1.0)
  hook = hooks.CheckpointSaverHook(str(tmp_path), save_steps=1)
  with pytest.raises(RuntimeError, match="needs a global step.*"
                     "get_or_create_global_step"):
    with tf.compat.v1.train.MonitoredTrainingSession(hooks=[hook]):
      pass


def test_no_saver_is_a_clear_runtime_error(tmp_path):
  tf.compat.v1.train.get_or_create_global_step()
  hook = hooks.CheckpointSaverHook(str(tmp_path), save_steps=1)
  hook.begin()
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    with pytest.raises(RuntimeError, match="found no saver: pass `saver=`"):
      hook.after_create_session(session, None)


def test_two_savers_is_a_clear_runtime_error(tmp_path):
  tf.compat.v1.train.get_or_create_global_step()
  for _ in range(2):
    tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SAVERS,
                                   tf.compat.v1.train.Saver())
  hook = hooks.CheckpointSaverHook(str(tmp_path), save_steps=1)
  hook.begin()
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    with pytest.raises(RuntimeError, match="found 2 savers"):
      hook.after_create_session(session, None)


def test_properties_report_declared_and_observed(tmp_path):
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(str(tmp_path), save_steps=1000,
                                   steps_per_run=3)
  assert (hook.steps_per_run, hook.observed_steps_per_run) == (3, 0)
  run_loops([hook], graph, [10] * 2)
  assert (hook.steps_per_run, hook.observed_steps_per_run) == (3, 10)


# ----------------------------------------------------------------------------
# async_save: snapshot on the training thread, write in the background.


def _train_with(tmp_path, name, async_save, runs=7, save_steps=20,
                listener=None, **kwargs):
  ckpt_dir = _dir(tmp_path, name)
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=10)
    listener = listener or RecordingListener()
    hook = hooks.CheckpointSaverHook(
        ckpt_dir, save_steps=save_steps, steps_per_run=10,
        listeners=[listener], async_save=async_save, **kwargs)
    final = run_loops([hook], graph, [10] * runs)
  tf.compat.v1.summary.FileWriterCache.clear()
  return ckpt_dir, listener, final


def test_async_saves_the_same_checkpoints_as_sync(tmp_path):
  sync_dir, sync_listener, _ = _train_with(tmp_path, "sync", False)
  async_dir, async_listener, final = _train_with(tmp_path, "async", True)
  assert final == 70
  # end() waited: every checkpoint is complete the moment the session ends.
  assert checkpoint_steps(async_dir) == checkpoint_steps(sync_dir) == [
      0, 20, 40, 60, 70]
  assert async_listener.saved_steps() == sync_listener.saved_steps()
  for step in (0, 20, 40, 60, 70):
    ours = tf.train.load_checkpoint(os.path.join(async_dir,
                                                 f"model.ckpt-{step}"))
    theirs = tf.train.load_checkpoint(os.path.join(sync_dir,
                                                   f"model.ckpt-{step}"))
    assert ours.get_tensor("w") == theirs.get_tensor("w")
    assert ours.get_tensor("global_step") == step
  assert tf.train.latest_checkpoint(async_dir).endswith("model.ckpt-70")
  assert checkpoint_log_steps(async_dir) == checkpoint_log_steps(sync_dir)
  assert tf.io.gfile.exists(os.path.join(async_dir, "model.ckpt-70.meta"))


def test_async_after_save_follows_before_save_and_never_overlaps(tmp_path):
  # A save every run: each save waits for the previous write; none dropped.
  _, listener, _ = _train_with(tmp_path, "every", True, runs=6, save_steps=1)
  saves = [(name, step) for name, step in listener.calls
           if name in ("before_save", "after_save")]
  steps = [0, 10, 20, 30, 40, 50, 60]
  assert saves == [(name, step) for step in steps
                   for name in ("before_save", "after_save")]


def test_async_rotation_and_state_file(tmp_path):
  ckpt_dir = _dir(tmp_path, "rotate")
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=10)
    hook = hooks.CheckpointSaverHook(
        ckpt_dir, save_steps=10, steps_per_run=10, async_save=True,
        saver=tf.compat.v1.train.Saver(max_to_keep=2))
    run_loops([hook], graph, [10] * 5)
  assert checkpoint_steps(ckpt_dir) == [40, 50]
  state = tf.train.get_checkpoint_state(ckpt_dir)
  assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
      "model.ckpt-40", "model.ckpt-50"]


def test_async_listener_stop_request_stops_training(tmp_path):
  stopper = RecordingListener(stop_after_save_at=20)
  _, listener, final = _train_with(tmp_path, "stop", True, runs=50,
                                   listener=stopper)
  # after_save(20) comes at the first hook call after the write of 20 is
  # complete: after the next run (30) if it was done by then, else at the
  # save of 40, which waits for it. Either way training stops there.
  assert final in (30, 40)
  assert listener.saved_steps()[:2] == [0, 20]
  assert listener.saved_steps()[-1] == final


def test_async_failed_write_surfaces_and_keeps_the_previous(tmp_path):
  ckpt_dir = _dir(tmp_path, "fail")
  os.makedirs(os.path.join(ckpt_dir, "model.ckpt-20.meta"))  # Unwritable.
  with pytest.raises(hooks.CheckpointSaveError,
                     match="for step 20 .* failed in the background"):
    _train_with(tmp_path, "fail", True)
  # The data of step 20 was written, its .meta was not: the state file was
  # never pointed at it.
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("model.ckpt-0")
  assert checkpoints_read_back(ckpt_dir)


class _Refused(Exception):
  pass


class _Guard:
  """A write guard that refuses from its `refuse_from`-th call on."""

  def __init__(self, refuse_from):
    self.calls = 0
    self._refuse_from = refuse_from

  def __call__(self):
    self.calls += 1
    if self.calls >= self._refuse_from:
      raise _Refused(f"refused at call {self.calls}")


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_a_write_guard_that_refuses_stops_the_write_and_propagates(
    tmp_path, async_save):
  # Calls: graph.pbtxt; the save of 0, its commit (async), its after_save;
  # then the save of 20 (sync: refused there) and its commit (async:
  # refused there).
  refuse_from = 6 if async_save else 4
  guard = _Guard(refuse_from)
  with pytest.raises(_Refused, match=f"refused at call {refuse_from}"):
    _train_with(tmp_path, "guarded", async_save, write_guard=guard)
  ckpt_dir = _dir(tmp_path, "guarded")
  # Step 20 never became the latest, and nothing after it was written.
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("model.ckpt-0")
  assert sorted(p for p in os.listdir(ckpt_dir)
                if p.startswith("model.ckpt-") and not p.startswith(
                    "model.ckpt-0.")) == (
                  # Async: the data files were written before the commit.
                  sorted(p for p in os.listdir(ckpt_dir)
                         if p.startswith("model.ckpt-20."))
                  if async_save else [])
  assert checkpoints_read_back(ckpt_dir)


def test_the_write_guard_is_called_before_every_write(tmp_path):
  listener = RecordingListener()

  def guard():
    listener.calls.append(("guard", None))

  _train_with(tmp_path, "every", False, write_guard=guard, listener=listener)
  # graph.pbtxt; then each save after its listeners' before_save, and again
  # before the listeners' after_save (and the event).
  expected = [("begin", None), ("guard", None)]
  for step in (0, 20, 40, 60, 70):
    expected += [("before_save", step), ("guard", None), ("guard", None),
                 ("after_save", step)]
  assert listener.calls == expected + [("end", 70)]


def checkpoints_read_back(ckpt_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
  return all(reader.get_tensor(name) is not None
             for name in reader.get_variable_to_shape_map())


def test_async_refuses_other_saveables(tmp_path):
  tf.compat.v1.train.get_or_create_global_step()
  tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS,
                                 "something")
  hook = hooks.CheckpointSaverHook(str(tmp_path), save_steps=1,
                                   async_save=True)
  with pytest.raises(ValueError, match="`async_save` saves variables only"):
    hook.begin()


# ----------------------------------------------------------------------------
# What TF's hook accepts, ours accepts: fractional seconds, duck-typed
# listeners.


class DuckListener:
  """Has the four listener methods but subclasses nothing."""

  def __init__(self):
    self.calls = []

  def begin(self):
    self.calls.append(("begin", None))

  def before_save(self, session, global_step_value):
    self.calls.append(("before_save", int(global_step_value)))

  def after_save(self, session, global_step_value):
    self.calls.append(("after_save", int(global_step_value)))

  def end(self, session, global_step_value):
    self.calls.append(("end", int(global_step_value)))


def test_duck_typed_listeners_and_fractional_secs_match_tf(tmp_path):
  ours_listener, tf_listener = DuckListener(), DuckListener()
  with tf.Graph().as_default():
    graph = build_loop_graph(steps_per_run=10)
    ours = hooks.CheckpointSaverHook(
        _dir(tmp_path, "ours"), save_secs=1800.5, steps_per_run=10,
        listeners=[ours_listener])
    theirs = tf.compat.v1.train.CheckpointSaverHook(
        _dir(tmp_path, "tf"), save_secs=1800.5, listeners=[tf_listener])
    theirs._set_steps_per_run(10)  # pylint: disable=protected-access
    run_loops([ours, theirs], graph, [10] * 3)
  assert ours_listener.calls == tf_listener.calls == [
      ("begin", None), ("before_save", 0), ("after_save", 0),
      ("before_save", 30), ("after_save", 30), ("end", 30)]


def test_fractional_save_secs_with_fake_clock(tmp_path):
  graph = build_loop_graph(steps_per_run=10)
  clock = FakeClock()
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(_dir(tmp_path, "ckpt"), save_secs=0.5,
                                   steps_per_run=10, listeners=[listener],
                                   clock=clock)
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None) as session:
    for _ in range(4):
      clock.now += 0.3
      session.run(graph.train_op)
  # t=0 step 0; t=0.6 step 20; t=1.2 step 40 (end: already saved).
  assert listener.saved_steps() == [0, 20, 40]


def test_listener_missing_a_method_is_named(tmp_path):
  class NoEnd:
    def begin(self): pass
    def before_save(self, session, step): pass
    def after_save(self, session, step): pass
  with pytest.raises(TypeError, match=r"`listeners\[0\]` .* lacks end\(\)"):
    hooks.CheckpointSaverHook(str(tmp_path), save_steps=1,
                              listeners=[NoEnd()])


def test_glob_characters_in_the_directory_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"`checkpoint_dir` \(.*sweep\[1\]'\) "
                     r"contains \["):
    hooks.CheckpointSaverHook(str(tmp_path / "sweep[1]"), save_steps=1)
  with pytest.raises(ValueError, match=r"`checkpoint_basename` \('m\*'\)"):
    hooks.CheckpointSaverHook(str(tmp_path), save_steps=1,
                              checkpoint_basename="m*")


# ----------------------------------------------------------------------------
# check_finite: a NaN weight never reaches a checkpoint.


def _poisonable_graph():
  """w += delta per run (delta fed, default 1); the global step += 10."""
  global_step = tf.compat.v1.train.get_or_create_global_step()
  weight = tf.compat.v1.get_variable("w", initializer=tf.constant(0.0),
                                     use_resource=True)
  delta = tf.compat.v1.placeholder_with_default(1.0, [], name="delta")
  read = hooks.global_step_read()
  with tf.control_dependencies([read]):
    update = weight.assign_add(delta)
  with tf.control_dependencies([update]):
    train_op = global_step.assign_add(10)
  return train_op, delta


@pytest.mark.parametrize("async_save", [False, True])
def test_non_finite_weights_are_not_saved(tmp_path, async_save):
  ckpt_dir = _dir(tmp_path, "ckpt")
  train_op, delta = _poisonable_graph()
  listener = RecordingListener()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=20, steps_per_run=10,
                                   listeners=[listener], check_finite=True,
                                   async_save=async_save)
  with pytest.raises(hooks.NonFiniteWeightsError) as info:
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None) as session:
      for run in range(6):
        # The run to step 30 makes w NaN; the save at step 40 is refused.
        session.run(train_op, {delta: np.nan if run == 2 else 1.0})
  hook.finish_pending_save()
  message = str(info.value)
  assert message.startswith("Variables ['w'] hold NaN or Inf at step 40")
  assert f"the newest checkpoint is still {ckpt_dir}/model.ckpt-20" in message
  assert checkpoint_steps(ckpt_dir) == [0, 20]
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("model.ckpt-20")
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
  assert np.isfinite(reader.get_tensor("w"))
  assert listener.saved_steps() == [0, 20]



@pytest.mark.parametrize("async_save", [False, True])
def test_the_save_at_session_creation_is_not_checked(tmp_path, async_save):
  # It holds what was restored or initialized, before any step: here a NaN
  # initial value, saved as it is at step 0 (no read of the variables spent
  # on it); the first save after a step is checked and refused.
  ckpt_dir = _dir(tmp_path, "ckpt")
  global_step = tf.compat.v1.train.get_or_create_global_step()
  weight = tf.compat.v1.get_variable(
      "w", initializer=tf.constant(np.nan, tf.float32), use_resource=True)
  with tf.control_dependencies([weight.assign_add(1.0)]):
    train_op = global_step.assign_add(10)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10,
                                   check_finite=True, async_save=async_save)
  with pytest.raises(hooks.NonFiniteWeightsError,
                     match=r"Variables \['w'\] hold NaN or Inf at step 10"):
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None) as session:
      session.run(train_op)
  hook.finish_pending_save()
  assert checkpoint_steps(ckpt_dir) == [0]

def test_without_check_finite_nan_weights_are_saved(tmp_path):
  # The contrast: the check is what keeps the NaN out.
  ckpt_dir = _dir(tmp_path, "ckpt")
  train_op, delta = _poisonable_graph()
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=20, steps_per_run=10)
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None) as session:
    for run in range(4):
      session.run(train_op, {delta: np.nan if run == 2 else 1.0})
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
  assert np.isnan(reader.get_tensor("w"))


def test_finish_pending_save_completes_a_write_after_an_error(tmp_path):
  ckpt_dir = _dir(tmp_path, "ckpt")
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10, steps_per_run=10,
                                   async_save=True)
  with pytest.raises(RuntimeError, match="user error"):
    with tf.compat.v1.train.MonitoredTrainingSession(
        hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
        log_step_count_steps=None) as session:
      session.run(graph.train_op)  # Starts the write of step 10.
      raise RuntimeError("user error")
  # end() was not called; the write of step 10 may still be in flight.
  assert hook.finish_pending_save() in (10, None)
  assert hook.latest_saved == f"{ckpt_dir}/model.ckpt-10"
  assert tf.train.latest_checkpoint(ckpt_dir).endswith("model.ckpt-10")
  assert checkpoints_read_back(ckpt_dir)


def test_async_state_file_is_relative_with_a_relative_directory(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  graph = build_loop_graph(steps_per_run=10)
  hook = hooks.CheckpointSaverHook(
      "runs/m", save_steps=10, steps_per_run=10, async_save=True,
      saver=tf.compat.v1.train.Saver(max_to_keep=2))
  run_loops([hook], graph, [10] * 3)
  assert tf.train.latest_checkpoint("runs/m") == "runs/m/model.ckpt-30"
  state = tf.train.get_checkpoint_state("runs/m")
  assert list(state.all_model_checkpoint_paths) == [
      "runs/m/model.ckpt-20", "runs/m/model.ckpt-30"]

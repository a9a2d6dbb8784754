"""StopAtStepHook: exact stops when each Session.run advances N steps."""

import numpy as np
import pytest
import tensorflow as tf

import hooks
from support.tf_fixtures import build_loop_graph


def _train(hook_list, graph, max_runs=100, checkpoint_dir=None):
  """Runs the loop without feeding until a hook stops; returns (step, runs).

  `checkpoint_dir` restores the latest checkpoint there first.
  """
  runs = 0
  with tf.compat.v1.train.MonitoredTrainingSession(
      checkpoint_dir=checkpoint_dir, hooks=hook_list,
      save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None) as session:
    while not session.should_stop() and runs < max_runs:
      session.run(graph.train_op)
      runs += 1
    step = session.run_step_fn(
        lambda step_context: step_context.session.run(graph.global_step))
  return int(step), runs


def _checkpoint_at(ckpt_dir, step):
  """Trains to `step` in loops of 10 and leaves a checkpoint there."""
  with tf.Graph().as_default():
    graph = build_loop_graph(10)
    saver_hook = hooks.CheckpointSaverHook(ckpt_dir, save_steps=10,
                                           steps_per_run=10)
    hook = hooks.StopAtStepHook(last_step=step, steps_per_run=10,
                                iterations_per_run=graph.iterations)
    assert _train([hook, saver_hook], graph)[0] == step


@pytest.mark.parametrize("steps_per_run,last_step,runs", [
    (10, 35, 4), (10, 40, 4), (1, 3, 3), (7, 1, 1), (100, 250, 3)])
def test_fed_loop_stops_exactly_at_last_step(steps_per_run, last_step, runs):
  graph = build_loop_graph(steps_per_run)
  hook = hooks.StopAtStepHook(last_step=last_step, steps_per_run=steps_per_run,
                              iterations_per_run=graph.iterations)
  assert _train([hook], graph) == (last_step, runs)


def test_unfed_loop_stops_after_first_run_reaching_last_step():
  graph = build_loop_graph(10)
  ours = hooks.StopAtStepHook(last_step=35, steps_per_run=10)
  assert _train([ours], graph) == (40, 4)


def test_tf_stop_hook_overshoots_a_run_where_ours_does_not():
  # The reason this hook exists: TF's pre-checks stale_step + 1.
  graph = build_loop_graph(10)
  theirs = tf.compat.v1.train.StopAtStepHook(last_step=35)
  assert _train([theirs], graph) == (50, 5)


def test_wrong_steps_per_run_is_learned():
  graph = build_loop_graph(10)
  hook = hooks.StopAtStepHook(last_step=35, steps_per_run=1)
  assert _train([hook], graph) == (40, 4)


def test_num_steps_counts_from_restored_step(tmp_path):
  _checkpoint_at(str(tmp_path), 20)
  graph = build_loop_graph(10)
  hook = hooks.StopAtStepHook(num_steps=15, steps_per_run=10,
                              iterations_per_run=graph.iterations)
  assert _train([hook], graph, checkpoint_dir=str(tmp_path)) == (35, 2)
  assert hook.last_step == 35


def test_resumed_past_last_step_runs_no_steps(tmp_path):
  _checkpoint_at(str(tmp_path), 30)
  graph = build_loop_graph(10)
  late = hooks.StopAtStepHook(last_step=12, steps_per_run=10,
                              iterations_per_run=graph.iterations)
  # Restored at 30 with last_step 12: the caller's one run is fed 0
  # iterations and the session stops.
  assert _train([late], graph, checkpoint_dir=str(tmp_path)) == (30, 1)


def test_steps_for_next_run():
  hook = hooks.StopAtStepHook(last_step=25, steps_per_run=10)
  assert [hook.steps_for_next_run(s) for s in (0, 10, 20, 25, 30)] == [
      10, 10, 5, 0, 0]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(), ValueError, "Exactly one of `num_steps` and `last_step`"),
    (dict(num_steps=1, last_step=1), ValueError, "num_steps=1, last_step=1"),
    (dict(num_steps=0), ValueError, "`num_steps` (0) must be a positive"),
    (dict(last_step=-1), ValueError,
     "`last_step` (-1) must be an integer >= 0."),
    (dict(last_step=2.0), TypeError,
     "`last_step` (2.0) must be an integer >= 0, got float."),
    (dict(last_step=True), TypeError, "`last_step` (True) must be an"),
    (dict(last_step=5, steps_per_run=0), ValueError, "`steps_per_run` (0)"),
])
def test_bad_arguments(kwargs, error, message):
  with pytest.raises(error) as info:
    hooks.StopAtStepHook(**kwargs)
  assert message in str(info.value)


def test_a_numpy_integer_last_step_is_an_integer():
  # resnet_main.py's max_steps: a step read with tf.train.load_variable.
  hook = hooks.StopAtStepHook(last_step=np.int64(25), steps_per_run=10)
  steps = [hook.steps_for_next_run(s) for s in (0, 20, 25)]
  assert steps == [10, 5, 0]
  assert all(type(step) is int for step in steps)  # pylint: disable=unidiomatic-typecheck


def test_iterations_per_run_must_be_integer_placeholder():
  not_placeholder = tf.constant(3)
  float_placeholder = tf.compat.v1.placeholder(tf.float32, [])
  for bad in (not_placeholder, float_placeholder, 3):
    with pytest.raises(ValueError, match="`iterations_per_run` .* must be a "
                       "scalar integer"):
      hooks.StopAtStepHook(last_step=3, iterations_per_run=bad)


def test_no_global_step_is_a_clear_runtime_error():
  hook = hooks.StopAtStepHook(last_step=3)
  with pytest.raises(RuntimeError, match="StopAtStepHook needs a global step"):
    hook.begin()

"""StepCounterHook: steps/sec and examples/sec with N steps per run."""

import pytest
import tensorflow as tf

import hooks
from support.tf_fixtures import build_loop_graph
from support.tf_fixtures import event_records


class FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def _scalars(log_dir, tag):
  tf.compat.v1.summary.FileWriterCache.clear()  # Flush and close.
  return [(e.step, v.simple_value) for e in event_records(log_dir)
          if e.HasField("summary") for v in e.summary.value if v.tag == tag]


def _train(hook, graph, clock, runs, secs_per_run):
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[hook], save_checkpoint_secs=None, save_summaries_steps=None,
      log_step_count_steps=None) as session:
    for _ in range(runs):
      clock.now += secs_per_run
      session.run(graph.train_op)


@pytest.mark.parametrize("declared", [10, 1])
def test_rates_count_every_step_of_a_run(tmp_path, declared):
  graph = build_loop_graph(10)
  clock = FakeClock()
  hook = hooks.StepCounterHook(every_n_steps=20, output_dir=str(tmp_path),
                               steps_per_run=declared, batch_size=8,
                               clock=clock)
  _train(hook, graph, clock, runs=6, secs_per_run=2.0)
  # The first read (step 10, t=2) starts the clock; then every 20 steps:
  # 10 steps per 2 s = 5 steps/s, 40 examples/s. With a wrong declared
  # steps_per_run the hook learns 10 and reports the same.
  assert _scalars(str(tmp_path), hooks.step_counter_hook.STEPS_PER_SEC_TAG) == [
      (30, 5.0), (50, 5.0)]
  assert _scalars(str(tmp_path),
                  hooks.step_counter_hook.EXAMPLES_PER_SEC_TAG) == [
                      (30, 40.0), (50, 40.0)]


def test_every_n_secs_without_batch_size(tmp_path):
  graph = build_loop_graph(4)
  clock = FakeClock()
  hook = hooks.StepCounterHook(every_n_steps=None, every_n_secs=3,
                               output_dir=str(tmp_path), steps_per_run=4,
                               clock=clock)
  _train(hook, graph, clock, runs=7, secs_per_run=1.0)
  # Triggers at t=1 (step 4), t=4 (16), t=7 (28): 12 steps per 3 s.
  assert _scalars(str(tmp_path), "global_step/sec") == [(16, 4.0), (28, 4.0)]
  assert _scalars(str(tmp_path), "examples/sec") == []


def test_explicit_summary_writer(tmp_path):
  graph = build_loop_graph(5)
  clock = FakeClock()
  writer = tf.compat.v1.summary.FileWriter(str(tmp_path))
  hook = hooks.StepCounterHook(every_n_steps=5, summary_writer=writer,
                               steps_per_run=5, clock=clock)
  _train(hook, graph, clock, runs=3, secs_per_run=0.5)
  writer.close()
  assert _scalars(str(tmp_path), "global_step/sec") == [(10, 10.0),
                                                        (15, 10.0)]


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(every_n_steps=None), ValueError,
     "Exactly one of `every_n_steps` and `every_n_secs`"),
    (dict(every_n_secs=5), ValueError, "every_n_steps=100, every_n_secs=5"),
    (dict(every_n_steps=0), ValueError, "`every_n_steps` (0) must be"),
    (dict(steps_per_run=-2), ValueError, "`steps_per_run` (-2)"),
    (dict(batch_size=0), ValueError, "`batch_size` (0)"),
    (dict(batch_size=1.5), TypeError, "`batch_size` (1.5)"),
    (dict(output_dir=""), ValueError, "`output_dir` ('')"),
    (dict(output_dir="/tmp/x", summary_writer="w"), ValueError,
     "At most one of `output_dir` and `summary_writer`"),
])
def test_bad_arguments(kwargs, error, message):
  with pytest.raises(error) as info:
    hooks.StepCounterHook(**kwargs)
  assert message in str(info.value)


def test_no_global_step_is_a_clear_runtime_error():
  hook = hooks.StepCounterHook()
  with pytest.raises(RuntimeError, match="StepCounterHook needs a global"):
    hook.begin()


def test_fractional_every_n_secs(tmp_path):
  graph = build_loop_graph(steps_per_run=10)
  clock = FakeClock()
  hook = hooks.StepCounterHook(every_n_steps=None, every_n_secs=0.5,
                               output_dir=str(tmp_path), steps_per_run=10,
                               clock=clock)
  _train(hook, graph, clock, runs=6, secs_per_run=0.3)
  # The first run marks the start (t=0.3, step 10); then reports at t=0.9
  # (step 30) and t=1.5 (step 50): 20 steps in 0.6 s each time.
  assert _scalars(str(tmp_path), "global_step/sec") == [
      (30, pytest.approx(20 / 0.6)), (50, pytest.approx(20 / 0.6))]


def test_tag_is_named_after_the_global_step_like_tf(tmp_path):
  with tf.compat.v1.variable_scope("trainer"):
    tf.compat.v1.train.get_or_create_global_step()
  assert tf.compat.v1.train.get_global_step().op.name == "trainer/global_step"
  graph = build_loop_graph(steps_per_run=10)
  ours = hooks.StepCounterHook(every_n_steps=10, output_dir=str(
      tmp_path / "ours"), steps_per_run=10)
  theirs = tf.compat.v1.train.StepCounterHook(every_n_steps=10,
                                              output_dir=str(tmp_path / "tf"))
  theirs._set_steps_per_run(10)  # pylint: disable=protected-access
  with tf.compat.v1.train.MonitoredTrainingSession(
      hooks=[ours, theirs], save_checkpoint_secs=None,
      save_summaries_steps=None, log_step_count_steps=None) as session:
    for _ in range(3):
      session.run(graph.train_op)
  tf.compat.v1.summary.FileWriterCache.clear()

  def tags(directory):
    return {v.tag for e in event_records(str(directory))
            if e.HasField("summary") for v in e.summary.value}
  assert tags(tmp_path / "ours") == tags(tmp_path / "tf") == {
      "trainer/global_step/sec"}

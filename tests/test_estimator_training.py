"""tpu_harness.estimator.train_and_evaluate / TrainSpec / EvalSpec: TF's
local train-and-evaluate loop, with an Estimator and a TPUEstimator."""

import pytest
import tensorflow as tf

from support import estimator_base_program as program
from tpu_harness import estimator as tf_estimator
from tpu_harness.estimator import _training


class _Exporter:
  """A tf.estimator.Exporter in duck type: records its calls."""
  name = "recorder"

  def __init__(self):
    self.calls = []

  def export(self, estimator, export_path, checkpoint_path, eval_result,
             is_the_final_export):
    del estimator  # Unused.
    self.calls.append((export_path, checkpoint_path,
                       eval_result["global_step"], is_the_final_export))
    return f"exported-{eval_result['global_step']}"


class _Evaluations(tf.compat.v1.train.SessionRunHook):
  """Counts evaluations (one `begin` per evaluate)."""

  def __init__(self):
    self.count = 0

  def begin(self):
    self.count += 1


def test_estimator_evaluates_after_each_save_and_at_the_end(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"),
                                save_checkpoints_steps=10)
  exporter, evaluations = _Exporter(), _Evaluations()
  metrics, exports = tf_estimator.train_and_evaluate(
      estimator,
      tf_estimator.TrainSpec(program.train_input_fn, max_steps=25),
      tf_estimator.EvalSpec(program.eval_input_fn, steps=2,
                            exporters=exporter, hooks=[evaluations],
                            throttle_secs=0))
  # Saves at 0 (not evaluated: the session's start), 10, 20 and 25 (the
  # end).
  assert [call[2] for call in exporter.calls] == [10, 20, 25]
  assert [call[3] for call in exporter.calls] == [False, False, True]
  assert exporter.calls[-1][0] == str(tmp_path / "model" / "export" /
                                      "recorder")
  assert exporter.calls[-1][1].endswith("model.ckpt-25")
  assert evaluations.count == 3
  assert metrics["global_step"] == 25
  assert set(metrics) == {"accuracy", "mean_probability", "loss",
                          "global_step"}
  assert exports == ["exported-25"]


def test_throttle_secs_skips_saves_but_not_the_end(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"),
                                save_checkpoints_steps=5)
  evaluations = _Evaluations()
  metrics, exports = tf_estimator.train_and_evaluate(
      estimator, tf_estimator.TrainSpec(program.train_input_fn, max_steps=20),
      tf_estimator.EvalSpec(program.eval_input_fn, steps=1,
                            hooks=[evaluations], throttle_secs=3600))
  # The first save after the start, then nothing for an hour, then the end.
  assert evaluations.count == 2
  assert metrics["global_step"] == 20
  assert exports == []


def test_tpu_estimator(tmp_path):
  estimator = tf_estimator.tpu.TPUEstimator(
      program.tpu_model_fn, config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path / "model"), save_checkpoints_steps=8,
          tpu_config=tf_estimator.tpu.TPUConfig(iterations_per_loop=4,
                                                num_shards=2)),
      use_tpu=True, train_batch_size=16, eval_batch_size=16)
  exporter = _Exporter()
  metrics, exports = tf_estimator.train_and_evaluate(
      estimator, tf_estimator.TrainSpec(program.train_input_fn, max_steps=16),
      tf_estimator.EvalSpec(program.eval_input_fn, steps=2,
                            exporters=[exporter], throttle_secs=0))
  assert [call[2] for call in exporter.calls] == [8, 16]
  assert metrics["global_step"] == 16 and "accuracy" in metrics
  assert exports == ["exported-16"]


def test_listener_throttles_by_time():
  """TF's timer: the first save after the session's start evaluates; later
  ones only `throttle_secs` after the last evaluation; the end evaluates
  unless its step was just evaluated."""
  now = [0.0]
  evaluated_at = []

  class Evaluator:
    def evaluate_and_export(self):
      evaluated_at.append(now[0])
      return {"global_step": None}, ["export"]

  listener = _training._EvaluateAfterSaves(  # pylint: disable=protected-access
      Evaluator(), 10, clock=lambda: now[0])
  listener.begin()
  for step, time in ((0, 0), (5, 1), (10, 5), (15, 12), (20, 13)):
    now[0] = time
    listener.after_save(None, step)
  assert evaluated_at == [1, 12]
  now[0] = 14
  listener.end(None, 20)
  assert evaluated_at == [1, 12, 14]
  assert listener.export_results == ["export"]
  listener.end(None, 20)  # Already evaluated.
  assert evaluated_at == [1, 12, 14]


@pytest.mark.parametrize("make,error,message", [
    (lambda: tf_estimator.TrainSpec(3), TypeError,
     r"`input_fn` \(3\) must be callable"),
    (lambda: tf_estimator.TrainSpec(program.train_input_fn, max_steps=0),
     ValueError, r"`max_steps` \(0\) must be None or a positive integer"),
    (lambda: tf_estimator.TrainSpec(program.train_input_fn, hooks=[1]),
     TypeError, r"`hooks\[0\]` \(1\) must be a tf.compat.v1.train."
     r"SessionRunHook"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn, steps=-1),
     ValueError, r"`steps` \(-1\) must be None or a positive integer"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn, name=3),
     TypeError, r"`name` \(3\) must be None or a string"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn, throttle_secs=-1),
     ValueError, r"`throttle_secs` \(-1\) must be a number >= 0"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn,
                                   start_delay_secs="x"),
     ValueError, r"`start_delay_secs` \('x'\) must be a number >= 0"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn, exporters=[1]),
     TypeError, r"`exporters\[0\]` \(1\) must have a `name`"),
    (lambda: tf_estimator.EvalSpec(program.eval_input_fn,
                                   exporters=[_Exporter(), _Exporter()]),
     ValueError, r"two named 'recorder'; names must be unique"),
])
def test_bad_specs(make, error, message):
  with pytest.raises(error, match=message):
    make()


def test_bad_train_and_evaluate_arguments(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"))
  train = tf_estimator.TrainSpec(program.train_input_fn, max_steps=1)
  evaluation = tf_estimator.EvalSpec(program.eval_input_fn)
  with pytest.raises(TypeError, match=r"`estimator` \('e'\) must be a "
                     r"tpu_harness.estimator.Estimator"):
    tf_estimator.train_and_evaluate("e", train, evaluation)
  with pytest.raises(TypeError, match=r"`train_spec` .* must be a "
                     r"tpu_harness.estimator.TrainSpec"):
    tf_estimator.train_and_evaluate(estimator, evaluation, evaluation)
  with pytest.raises(TypeError, match=r"`eval_spec` .* must be a "
                     r"tpu_harness.estimator.EvalSpec"):
    tf_estimator.train_and_evaluate(estimator, train, train)

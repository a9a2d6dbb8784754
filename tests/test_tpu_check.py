"""tpu_check: one replica's step compiled with XLA on CPU; each reason a
TPU could not run it named with the op and the user's line."""

import logging as std_logging
import os

import pytest
import tensorflow as tf

from support import estimator_programs
from support import tpu_check_models as models
import tpu_harness as th
from tpu_harness.examples.digits import model as digits
from tpu_harness.tpu import check as tpu_check

MODELS_FILE = os.path.basename(models.__file__)


def _runner(model_fn, tmp_path, shards=1, check=True, device_loop=None):
  config = th.RunConfig(str(tmp_path / "model"), iterations_per_loop=2,
                        tpu=th.TPUConfig(num_shards=shards),
                        check_tpu_compatibility=check)
  return th.Runner(model_fn, config, train_batch_size=8, eval_batch_size=8,
                   predict_batch_size=8, device_loop=device_loop)


@pytest.mark.parametrize("case, input_fn, kind, subject", [
    ("unique", models.input_fn, "dynamic shape", "Unique ('Unique')"),
    ("boolean_mask", models.input_fn, "dynamic shape",
     "Where ('boolean_mask/Where')"),
    ("py_function", models.input_fn, "unsupported op",
     "EagerPyFunc ('EagerPyFunc')"),
    ("string", models.input_fn, "unsupported op", "AsString ('AsString')"),
    ("batch", models.no_static_batch_input_fn, "input", "features"),
])
def test_each_incompatibility_names_the_op_and_the_line(
    tmp_path, case, input_fn, kind, subject):
  runner = _runner(models.model_fn(case if case != "batch" else "ok"),
                   tmp_path)
  problems = runner.check_tpu_compatibility(train_input_fn=input_fn)
  first = problems[0]
  assert (first.mode, first.kind, first.subject) == ("train", kind, subject)
  assert f"{MODELS_FILE}:{models.line_of(case)} in " in first.where, first
  assert f"# TPU: {case}" in first.where  # The line's code.
  # As the error the runner raises before building a TPU loop.
  with pytest.raises(th.TPUCompatibilityError) as raised:
    tpu_check.check_or_raise(problems)
  message = str(raised.value)
  assert f"[train] {kind}: {subject}: " in message
  assert f"{MODELS_FILE}:{models.line_of(case)}" in message
  assert "check_tpu_compatibility=False" in message
  assert not (tmp_path / "model").exists()  # The check writes nothing.


def test_every_unsupported_op_is_reported_not_only_the_first(tmp_path):
  problems = _runner(models.model_fn("string"), tmp_path
                     ).check_tpu_compatibility(train_input_fn=models.input_fn)
  assert [(p.kind, p.subject) for p in problems] == [
      ("unsupported op", "AsString ('AsString')"),
      ("unsupported op", "StringToNumber ('StringToNumber')"),
      ("unsupported dtype", "AsString ('AsString')"),
  ]
  assert "TPUs have no string type" in problems[2].detail


def test_only_the_cause_of_a_dynamic_shape_is_reported(tmp_path):
  # Everything downstream of tf.unique has data-dependent shapes too.
  problems = _runner(models.model_fn("unique"), tmp_path
                     ).check_tpu_compatibility(train_input_fn=models.input_fn)
  assert [p.subject for p in problems] == ["Unique ('Unique')"]


def test_all_three_modes_are_checked(tmp_path):
  runner = _runner(models.model_fn("boolean_mask"), tmp_path)
  problems = runner.check_tpu_compatibility(
      train_input_fn=models.input_fn, eval_input_fn=models.input_fn,
      predict_input_fn=models.input_fn)
  assert [(p.mode, p.kind) for p in problems] == [
      ("train", "dynamic shape"), ("eval", "dynamic shape"),
      ("infer", "dynamic shape")]
  ok = _runner(models.model_fn("ok"), tmp_path)
  assert ok.check_tpu_compatibility(
      train_input_fn=models.input_fn, eval_input_fn=models.input_fn,
      predict_input_fn=models.input_fn) == []


def test_input_the_infeed_cannot_carry(tmp_path):
  problems = _runner(models.model_fn("ok"), tmp_path).check_tpu_compatibility(
      train_input_fn=models.string_input_fn)
  assert [(p.kind, p.subject) for p in problems] == [("input", "features")]
  assert "is string; a TPU's infeed carries numbers" in problems[0].detail


def test_features_alone_are_checked_with_labels_none(tmp_path):
  def model_fn(features, labels, mode, params):
    assert labels is None, labels  # The labels are among the features.
    return models.model_fn("ok")(features["x"], features["y"], mode, params)

  def input_fn(params):
    return models.input_fn(params).map(lambda x, y: {"x": x, "y": y})

  assert _runner(model_fn, tmp_path, shards=2).check_tpu_compatibility(
      train_input_fn=input_fn, eval_input_fn=input_fn,
      predict_input_fn=input_fn) == []


def test_the_digits_model_passes_on_two_replicas(tmp_path):
  runner = th.Runner(
      digits.model_fn,
      th.RunConfig(str(tmp_path), tpu=th.TPUConfig(num_shards=2)),
      params={"model_dir": str(tmp_path)}, train_batch_size=64,
      eval_batch_size=32, predict_batch_size=32)
  assert runner.check_tpu_compatibility(
      train_input_fn=digits.train_input_fn,
      eval_input_fn=digits.eval_input_fn,
      predict_input_fn=digits.predict_input_fn) == []


def test_the_tpu_estimator_conv_net_passes(tmp_path):
  estimator = estimator_programs.estimator(str(tmp_path), cores=2)
  modes = th.ModeKeys
  assert estimator.check_tpu_compatibility(
      lambda params: estimator_programs.input_fn(params, modes.TRAIN)) == []
  assert estimator.check_tpu_compatibility(
      lambda params: estimator_programs.input_fn(params, modes.EVAL),
      modes.EVAL) == []
  assert estimator.check_tpu_compatibility(
      estimator_programs.predict_input_fn, modes.PREDICT) == []
  with pytest.raises(ValueError, match=r"`mode` \('training'\) must be"):
    estimator.check_tpu_compatibility(estimator_programs.predict_input_fn,
                                      "training")


class _TpuBoundLoop(th.CpuEmulationLoop):
  """A loop that says it runs on a TPU (so the runner checks first) and
  runs on CPU (so the test can train with the check turned off)."""

  @property
  def compiles_for_tpu(self) -> bool:
    return True


@pytest.mark.parametrize("method", ["train", "evaluate", "predict"])
def test_the_runner_checks_before_building_a_tpu_loop(tmp_path, method):
  loop = _TpuBoundLoop(num_shards=1, iterations_per_loop=2)
  runner = _runner(models.model_fn("py_function"), tmp_path,
                   device_loop=loop)
  call = {"train": lambda: runner.train(models.input_fn, max_steps=2),
          "evaluate": lambda: runner.evaluate(models.input_fn, steps=1),
          "predict": lambda: list(runner.predict(models.input_fn))}[method]
  with pytest.raises(th.TPUCompatibilityError, match=r"EagerPyFunc"):
    call()
  assert not (tmp_path / "model").exists()


def test_the_check_can_be_turned_off(tmp_path):
  loop = _TpuBoundLoop(num_shards=1, iterations_per_loop=2)
  # tf.unique runs on CPU; with the check off the runner does not object.
  runner = _runner(models.model_fn("unique"), tmp_path, check=False,
                   device_loop=loop)
  runner.train(models.input_fn, max_steps=2)
  assert tf.train.latest_checkpoint(str(tmp_path / "model")).endswith("-2")


def test_bad_requests_are_clear(tmp_path):
  runner = th.Runner(models.model_fn("ok"), th.RunConfig(str(tmp_path)),
                     train_batch_size=8)
  with pytest.raises(ValueError, match="Pass at least one of"):
    runner.check_tpu_compatibility()
  with pytest.raises(ValueError, match="`eval_batch_size` was not given"):
    runner.check_tpu_compatibility(eval_input_fn=models.input_fn)


def _collective_model_fn(collective):
  def model_fn(features, labels, mode, params):
    del params
    # Normalizes across cores, as cross-replica batch norm does.
    total = collective(tf.reduce_sum(features))
    w = tf.compat.v1.get_variable("w", [models.FEATURES, 1])
    loss = tf.reduce_mean(tf.square(tf.matmul(features, w) * total - labels))
    optimizer = tf.compat.v1.train.GradientDescentOptimizer(0.1)
    return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()))

  return model_fn


def test_cross_replica_sum_is_compiled_as_on_one_core(tmp_path, caplog):
  """The check builds one replica, where cross_replica_sum is the sum over
  one core: the rest of the step is compiled."""
  model_fn = _collective_model_fn(tf.compat.v1.tpu.cross_replica_sum)
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert _runner(model_fn, tmp_path).check_tpu_compatibility(
        train_input_fn=models.input_fn) == []
  assert not any("was not compiled" in r.getMessage()
                 for r in caplog.records)


def test_tpu_collectives_are_not_taken_for_unsupported_ops(tmp_path, caplog):
  model_fn = _collective_model_fn(
      lambda x: tf.raw_ops.CollectivePermute(
          input=x, source_target_pairs=[[0, 0]]))
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert _runner(model_fn, tmp_path).check_tpu_compatibility(
        train_input_fn=models.input_fn) == []
  assert any("uses TPU-only ops ['CollectivePermute']" in r.getMessage()
             and "was not compiled" in r.getMessage()
             for r in caplog.records)
  # The static checks still run on such a step.
  def broken(features, labels, mode, params):
    features = tf.boolean_mask(features, features > 0)[:4]
    return model_fn(tf.reshape(features, [-1, models.FEATURES]), labels,
                    mode, params)

  problems = _runner(broken, tmp_path).check_tpu_compatibility(
      train_input_fn=models.input_fn)
  assert [p.subject for p in problems] == ["Where ('boolean_mask/Where')"]


@pytest.mark.parametrize("message, detail", [
    # As a session words XLA's error of an op defined in a function.
    ("Graph execution error:\n\nDetected at node 'x' defined at (most "
     "recent call last):\n  File \"model.py\", line 3, in model_fn\n\n"
     "Node: 'x'\nUnsupported op Foo in cluster_0 {{node x}}\n"
     "\t [[{{node x}}]]", "Unsupported op Foo in cluster_0"),
    ("Graph execution error:\n\nno kernel for Bar\n\t [[{{node y}}]]",
     "no kernel for Bar"),
    ("one line", "one line"),
])
def test_an_xla_error_gives_its_reason_in_one_line(message, detail):
  problem = tpu_check._xla_error(  # pylint: disable=protected-access
      tf.errors.InvalidArgumentError(None, None, message), "train")
  assert (problem.kind, problem.subject, problem.detail) == (
      "XLA cannot compile", "the step", detail)

"""tpu_harness.estimator.Estimator: a model_fn program's Estimator on the
runner, one replica, one step per Session.run."""

import numpy as np
import pytest
import tensorflow as tf

from support import estimator_base_program as program
from tpu_harness import estimator as tf_estimator


def _eval_accuracy(estimator):
  """The accuracy on the 64 eval examples, from the checkpoint's weights."""
  x, y = program.data(64, seed=1)
  kernel = estimator.get_variable_value("logits/kernel")
  bias = estimator.get_variable_value("logits/bias")
  return float(np.mean(np.argmax(x @ kernel + bias, axis=1) == y))


def test_train_evaluate_predict_with_eval_metric_ops(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"))
  assert isinstance(estimator.config, tf_estimator.RunConfig)
  estimator.train(program.train_input_fn, max_steps=40)
  assert estimator.latest_checkpoint().endswith("model.ckpt-40")
  assert estimator.get_variable_value("global_step") == 40
  metrics = estimator.evaluate(program.eval_input_fn, steps=4)
  assert metrics["global_step"] == 40
  assert set(metrics) == {"accuracy", "mean_probability", "loss",
                          "global_step"}
  # Each of the 4 steps updated the metrics, as TF's Estimator did: the
  # accuracy over all 64 examples.
  assert metrics["accuracy"] == pytest.approx(_eval_accuracy(estimator))
  assert metrics["accuracy"] > 0.8
  assert 0.5 < metrics["mean_probability"] <= 1
  predictions = list(estimator.predict(program.predict_input_fn))
  assert len(predictions) == 10
  assert set(predictions[0]) == {"classes", "probabilities"}
  classes = list(estimator.predict(program.predict_input_fn,
                                   predict_keys="classes"))
  assert [p["classes"] for p in classes] == [
      p["classes"] for p in predictions]
  # train() continues from the checkpoint.
  estimator.train(program.train_input_fn, steps=5)
  assert estimator.get_variable_value("global_step") == 45


def test_every_step_runs_its_own_session_run(tmp_path):
  """Hooks see each step, as with TF's Estimator."""
  class Count(tf.compat.v1.train.SessionRunHook):
    runs = 0

    def after_run(self, run_context, run_values):
      Count.runs += 1

  estimator = program.estimator(str(tmp_path / "model"))
  estimator.train(program.train_input_fn, max_steps=7, hooks=[Count()])
  assert Count.runs == 7


def test_export_saved_model(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"))
  estimator.train(program.train_input_fn, max_steps=5)

  def serving_input_receiver_fn():
    x = tf.compat.v1.placeholder(tf.float32, [None, program.FEATURES])
    return tf_estimator.export.ServingInputReceiver({"x": x}, {"x": x})

  path = estimator.export_saved_model(str(tmp_path / "export"),
                                      serving_input_receiver_fn)
  loaded = tf.saved_model.load(path.decode(), tags=["serve"])
  assert "serving_default" in loaded.signatures


def test_default_config_and_params_passed_as_given(tmp_path):
  seen = {}

  def model_fn(features, labels, mode, params):
    seen["params"] = dict(params)
    return program.model_fn(features, labels, mode, params, None)

  def input_fn(params, mode, config):
    seen["input"] = (dict(params), mode, type(config).__name__)
    return program.train_input_fn(params)

  estimator = tf_estimator.Estimator(
      model_fn, model_dir=str(tmp_path / "model"),
      params={"batch_size": 8, "learning_rate": 0.1})
  assert estimator.config.save_checkpoints_secs == 600
  assert estimator.config.keep_checkpoint_max == 5
  estimator.train(input_fn, steps=2)
  assert seen["params"] == {"batch_size": 8, "learning_rate": 0.1}
  assert seen["input"] == ({"batch_size": 8, "learning_rate": 0.1},
                           tf_estimator.ModeKeys.TRAIN, "RunConfig")


def test_bad_arguments(tmp_path):
  def no_params(features, labels, mode):
    del features, labels, mode

  with pytest.raises(ValueError, match=r"`model_fn` .* does not take a "
                     r"`params` argument, but `params` \(\{'a': 1\}\)"):
    tf_estimator.Estimator(no_params, params={"a": 1})
  with pytest.raises(ValueError, match=r"`model_fn` \(3\) must be callable"):
    tf_estimator.Estimator(3)
  with pytest.raises(ValueError, match=r"`config` \('x'\) must be a "
                     r"tpu_harness.estimator.RunConfig"):
    tf_estimator.Estimator(program.model_fn, config="x")
  with pytest.raises(ValueError, match=r"`model_dir` \('/a'\) and "
                     r"config.model_dir \('/b'\) differ"):
    tf_estimator.Estimator(program.model_fn, model_dir="/a",
                           config=tf_estimator.RunConfig(model_dir="/b"))
  with pytest.raises(NotImplementedError, match="`warm_start_from`"):
    tf_estimator.Estimator(program.model_fn, warm_start_from=object())
  estimator = program.estimator(str(tmp_path / "model"))
  with pytest.raises(ValueError, match="Can not provide both `steps` and "
                     "`max_steps`"):
    estimator.train(program.train_input_fn, steps=1, max_steps=1)


def test_a_partial_last_batch_trains_as_on_estimator(tmp_path):
  def one_pass_input_fn(params):
    x, y = program.data(20, seed=0)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(
        params["batch_size"])

  estimator = program.estimator(str(tmp_path / "model"))
  # One pass of 20 examples in batches of 16: 2 steps, the second of 4.
  estimator.train(one_pass_input_fn)
  assert estimator.get_variable_value("global_step") == 2
  estimator.train(one_pass_input_fn)
  assert estimator.get_variable_value("global_step") == 4


def test_eval_metric_ops_named_loss_or_not_pairs_are_refused(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"))
  estimator.train(program.train_input_fn, max_steps=1)

  def metric_ops_model_fn(metric_ops):
    def model_fn(features, labels, mode, params):
      spec = program.model_fn(features, labels, mode, params, None)
      if mode != tf_estimator.ModeKeys.EVAL:
        return spec
      return tf_estimator.EstimatorSpec(
          mode, loss=spec.loss,
          eval_metric_ops=metric_ops(spec.loss))
    return model_fn

  for ops, error, message in (
      (lambda loss: {"loss": tf.compat.v1.metrics.mean(loss)}, ValueError,
       "Metric with name 'loss' is not allowed"),
      (lambda loss: {"m": loss}, TypeError,
       r"`eval_metric_ops\['m'\]` .* must be a \(value tensor, update_op\) "
       r"pair")):
    other = tf_estimator.Estimator(
        metric_ops_model_fn(ops), config=estimator.config,
        params=estimator.params)
    with pytest.raises(error, match=message):
      other.evaluate(program.eval_input_fn, steps=1)


def test_tpu_estimator_still_refuses_eval_metric_ops(tmp_path):
  """Inside TPUEstimator's device loop metric ops cannot be read; the error
  names the alternatives."""
  def model_fn(features, labels, mode, params):
    params = dict(params, learning_rate=0.5)
    return program.model_fn(features, labels, mode, params, None)

  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn, config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path / "model")),
      use_tpu=False, train_batch_size=16, eval_batch_size=16)
  estimator.train(program.train_input_fn, max_steps=2)
  with pytest.raises(ValueError, match=r"eval_metrics=\(metric_fn, "
                     r"tensors\).*tpu_harness.estimator.Estimator"):
    estimator.evaluate(program.eval_input_fn, steps=1)


def test_as_estimator_spec_off_tpu(tmp_path):
  """A TPU model's CPU branch (detection's): Estimator with a model_fn
  returning TPUEstimatorSpec(...).as_estimator_spec(); its metric_fn
  computes the metrics."""
  def model_fn(features, labels, mode, params):
    spec = program.tpu_model_fn(features, labels, mode,
                                dict(params, use_tpu=False))
    return spec.as_estimator_spec()

  estimator = tf_estimator.Estimator(
      model_fn, model_dir=str(tmp_path / "model"),
      params={"batch_size": 16})
  estimator.train(program.train_input_fn, max_steps=20)
  metrics = estimator.evaluate(program.eval_input_fn, steps=4)
  assert metrics["accuracy"] == pytest.approx(_eval_accuracy(estimator))
  assert metrics["global_step"] == 20
  assert len(list(estimator.predict(program.predict_input_fn))) == 10


def test_a_gpu_branchs_one_replica_strategy_trains(tmp_path):
  # detection's executor off TPU: MirroredStrategy over the machine's GPUs
  # as RunConfig's train_distribute; with no GPU, `devices=[]`, it mirrors
  # onto the CPU alone: one replica, which is what the harness runs.
  strategy = tf.distribute.MirroredStrategy(devices=[])
  assert strategy.num_replicas_in_sync == 1
  config = tf_estimator.RunConfig(model_dir=str(tmp_path / "model"),
                                  train_distribute=strategy)
  assert config.train_distribute is strategy
  estimator = tf_estimator.Estimator(program.model_fn, config=config,
                                     params={"batch_size": 8,
                                             "learning_rate": 0.1})
  estimator.train(program.train_input_fn, max_steps=3)
  assert estimator.get_variable_value("global_step") == 3


def _features_alone(input_fn, as_tensors):
  """`input_fn`'s labels moved into its features ('y'), as BERT's input
  returns them; as a Dataset or its iterator's tensors."""
  def features_input_fn(params):
    dataset = input_fn(params).map(lambda features, labels: dict(
        features, y=labels))
    if as_tensors:
      return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    return dataset
  return features_input_fn


def _labels_from_features(features, labels, mode, params, config):
  assert labels is None, labels  # Estimator's labels for features alone.
  return program.model_fn(features, features.get("y"), mode, params, config)


def _no_labels_argument(features, mode, params, config):
  return program.model_fn(features, features.get("y"), mode, params, config)


@pytest.mark.parametrize("model_fn", [_labels_from_features,
                                      _no_labels_argument])
@pytest.mark.parametrize("as_tensors", [False, True],
                         ids=["dataset", "iterator tensors"])
def test_features_alone_train_and_evaluate(tmp_path, model_fn, as_tensors):
  estimator = tf_estimator.Estimator(
      model_fn, config=tf_estimator.RunConfig(
          model_dir=str(tmp_path / "model"), tf_random_seed=1),
      params={"batch_size": 16, "learning_rate": 0.1})
  estimator.train(_features_alone(program.train_input_fn, as_tensors),
                  max_steps=20)
  assert estimator.get_variable_value("global_step") == 20
  metrics = estimator.evaluate(
      _features_alone(program.eval_input_fn, as_tensors))
  assert metrics["global_step"] == 20
  assert metrics["accuracy"] == pytest.approx(_eval_accuracy(estimator))
  assert len(list(estimator.predict(program.predict_input_fn))) == 10


def _partial_eval_input_fn():
  """10 examples in batches of 4 (4, 4, 2), as an input_fn that batches
  with drop_remainder=False gives them."""
  x, y = program.data(10, seed=3)
  return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(4)


def _batch_metrics(estimator, batches):
  """(accuracy, mean probability over the examples of the first `batches`
  batches of 4, the unweighted mean of their batch losses, as TF's
  Estimator's `loss`), from the checkpoint's weights."""
  x, y = program.data(10, seed=3)
  logits = (x @ estimator.get_variable_value("logits/kernel")
            + estimator.get_variable_value("logits/bias")).astype(np.float64)
  shifted = logits - logits.max(1, keepdims=True)
  probabilities = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
  losses = -np.log(probabilities[np.arange(len(y)), y])
  rows = min(10, 4 * batches)
  return (np.mean(np.argmax(logits, 1)[:rows] == y[:rows]),
          np.mean(probabilities.max(1)[:rows]),
          np.mean([losses[start:start + 4].mean()
                   for start in range(0, rows, 4)]))


def test_eval_metric_ops_over_a_partial_last_batch_as_estimator(tmp_path):
  estimator = program.estimator(str(tmp_path / "model"))
  estimator.train(program.train_input_fn, max_steps=5)
  metrics = estimator.evaluate(_partial_eval_input_fn)
  accuracy, probability, loss = _batch_metrics(estimator, 3)
  assert metrics["global_step"] == 5
  # eval_metric_ops saw each batch's real rows: all 10 examples.
  assert metrics["accuracy"] == pytest.approx(accuracy)
  assert metrics["mean_probability"] == pytest.approx(probability)
  assert metrics["loss"] == pytest.approx(loss, rel=1e-5)
  metrics = estimator.evaluate(_partial_eval_input_fn, steps=2)
  accuracy, probability, loss = _batch_metrics(estimator, 2)
  assert metrics["accuracy"] == pytest.approx(accuracy)
  assert metrics["mean_probability"] == pytest.approx(probability)
  assert metrics["loss"] == pytest.approx(loss, rel=1e-5)


def test_the_private_global_step_loader_tpu_programs_call(tmp_path):
  # efficientnet's main.py: `estimator._load_global_step_from_checkpoint_dir(
  # FLAGS.model_dir)` before its train/evaluate loop (install() provides it
  # at TF's private path).
  from tpu_harness.estimator import _estimator  # pylint: disable=g-import-not-at-top
  model_dir = str(tmp_path / "model")
  assert _estimator._load_global_step_from_checkpoint_dir(model_dir) == 0  # pylint: disable=protected-access
  estimator = program.estimator(model_dir)
  estimator.train(program.train_input_fn, max_steps=3)
  assert _estimator._load_global_step_from_checkpoint_dir(model_dir) == 3  # pylint: disable=protected-access

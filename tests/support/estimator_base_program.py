"""A model_fn program in tf.estimator.Estimator's style, as the CPU/GPU
branches of TPU model programs write it: `model_fn(features, labels, mode,
params, config)` returning an `EstimatorSpec` with `eval_metric_ops`,
`params['batch_size']` the program's own, input functions taking
`params`, a `RunConfig`, and the same `model_fn` wrapped for a
TPUEstimator (`TPUEstimatorSpec(...).as_estimator_spec()` off TPU)."""

from __future__ import annotations

import numpy as np
import tensorflow.compat.v1 as tf

from tpu_harness import estimator as tf_estimator

FEATURES = 4
CLASSES = 2


def data(n: int, seed: int):
  """Points whose class is whether their coordinates sum above zero."""
  rng = np.random.RandomState(seed)
  x = rng.normal(size=(n, FEATURES)).astype(np.float32)
  y = (x.sum(axis=1) > 0).astype(np.int32)
  return x, y


def train_input_fn(params):
  x, y = data(256, seed=0)
  return (tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat()
          .batch(params["batch_size"], drop_remainder=True))


def eval_input_fn(params):
  x, y = data(64, seed=1)
  return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(
      params["batch_size"], drop_remainder=True)


def predict_input_fn(params):
  del params  # Ten points, in batches of four: the last one partial.
  x, _ = data(10, seed=2)
  return tf.data.Dataset.from_tensor_slices({"x": x}).batch(4)


def model_fn(features, labels, mode, params, config):
  """A logistic classifier; eval_metric_ops: accuracy and the mean
  probability."""
  del config  # As programs take it.
  logits = tf.layers.dense(features["x"], CLASSES, name="logits")
  probabilities = tf.nn.softmax(logits)
  classes = tf.argmax(logits, axis=1, output_type=tf.int32)
  if mode == tf_estimator.ModeKeys.PREDICT:
    return tf_estimator.EstimatorSpec(
        mode, predictions={"classes": classes,
                           "probabilities": probabilities})
  loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf_estimator.ModeKeys.EVAL:
    return tf_estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops={
        "accuracy": tf.metrics.accuracy(labels, classes),
        "mean_probability": tf.metrics.mean(
            tf.reduce_max(probabilities, axis=1))})
  optimizer = tf.train.GradientDescentOptimizer(params["learning_rate"])
  train_op = optimizer.minimize(loss, tf.train.get_global_step())
  return tf_estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def tpu_model_fn(features, labels, mode, params):
  """The same model for a TPUEstimator, with `eval_metrics`."""
  logits = tf.layers.dense(features["x"], CLASSES, name="logits")
  if mode == tf_estimator.ModeKeys.PREDICT:
    return tf_estimator.tpu.TPUEstimatorSpec(mode, predictions={
        "classes": tf.argmax(logits, axis=1, output_type=tf.int32)})
  loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf_estimator.ModeKeys.EVAL:
    def metric_fn(labels, logits):
      return {"accuracy": tf.metrics.accuracy(
          labels, tf.argmax(logits, axis=1, output_type=tf.int32))}
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]))
  optimizer = tf.train.GradientDescentOptimizer(0.5)
  if params["use_tpu"]:
    optimizer = tf.tpu.CrossShardOptimizer(optimizer)
  train_op = optimizer.minimize(loss, tf.train.get_global_step())
  return tf_estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)


def estimator(model_dir: str, **config_kwargs) -> tf_estimator.Estimator:
  config = tf_estimator.RunConfig(
      model_dir=model_dir, tf_random_seed=1, **config_kwargs)
  return tf_estimator.Estimator(
      model_fn, config=config,
      params={"batch_size": 16, "learning_rate": 0.5})

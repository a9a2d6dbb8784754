"""Models a TPU cannot run, each for one reason, for tests/test_tpu_check.py.

Each reason is on a line marked `# TPU: <case>`; the tests expect the
check to name that line.
"""

import numpy as np
import tensorflow as tf

import tpu_harness as th

FEATURES = 4


def input_fn(params):
  x = np.random.RandomState(0).normal(size=(32, FEATURES)).astype(np.float32)
  y = x[:, :1] * 2.0
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
      params["batch_size"], drop_remainder=True)


def no_static_batch_input_fn(params):
  dataset = tf.data.Dataset.from_tensor_slices(
      (np.zeros((10, FEATURES), np.float32), np.zeros((10, 1), np.float32)))
  return dataset.batch(params["batch_size"])  # TPU: batch


def string_input_fn(params):
  names = np.array([b"a", b"b"] * 8)
  return tf.data.Dataset.from_tensor_slices(
      (names, np.zeros((16, 1), np.float32))).batch(
          params["batch_size"], drop_remainder=True)


def model_fn(case):
  """A linear model, broken in the way `case` names (or not: "ok")."""

  def fn(features, labels, mode, params):
    del params
    w = tf.compat.v1.get_variable("w", [FEATURES, 1])
    prediction = tf.matmul(features, w)
    if case == "unique":
      ids, _ = tf.unique(tf.reshape(tf.cast(labels, tf.int32), [-1]))  # TPU: unique
      prediction += tf.cast(tf.reduce_sum(ids), tf.float32)
    elif case == "boolean_mask":
      positive = tf.boolean_mask(features, features > 0)  # TPU: boolean_mask
      prediction += tf.reduce_sum(positive)
    elif case == "py_function":
      prediction += tf.py_function(np.square, [prediction], tf.float32)  # TPU: py_function
      prediction = tf.reshape(prediction, [-1, 1])
    elif case == "string":
      text = tf.strings.as_string(prediction)  # TPU: string
      prediction += tf.strings.to_number(text)
    if mode == th.ModeKeys.PREDICT:
      return th.ModelSpec(mode=mode, predictions={"y": prediction})
    loss = tf.reduce_mean(tf.square(prediction - labels))
    if mode == th.ModeKeys.EVAL:
      return th.ModelSpec(mode=mode, loss=loss, eval_metrics=(
          lambda y, p: {"mse": tf.compat.v1.metrics.mean_squared_error(y, p)},
          [labels, prediction]))
    optimizer = th.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1))
    return th.ModelSpec(mode=mode, loss=loss, train_op=optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_global_step()))

  return fn


def line_of(case: str) -> int:
  """The line marked `# TPU: <case>` in this file."""
  with open(__file__, encoding="utf-8") as source:
    for number, line in enumerate(source, 1):
      if line.rstrip().endswith(f"# TPU: {case}"):
        return number
  raise ValueError(case)

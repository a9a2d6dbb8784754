"""Tiny real models and inputs for the runner tests."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

import tpu_harness as th

NUM_FEATURES = 4
TRUE_W = np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)


def data(n=256, seed=0):
  rng = np.random.RandomState(seed)
  x = rng.normal(size=(n, NUM_FEATURES)).astype(np.float32)
  y = (x @ TRUE_W + 0.1 * rng.normal(size=(n, 1))).astype(np.float32)
  return x, y


def train_input_fn(x=None, y=None, repeat=True):
  if x is None:
    x, y = data()

  def input_fn(params):
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if repeat:
      dataset = dataset.repeat()
    return dataset.batch(params["batch_size"], drop_remainder=True)

  return input_fn


def linear_model_fn(features, labels, mode, params):
  """y = x.w; SGD with the rate in params (default 0.1)."""
  w = tf.compat.v1.get_variable("w", [NUM_FEATURES, 1],
                                initializer=tf.zeros_initializer())
  prediction = tf.matmul(features, w)
  if mode == th.ModeKeys.PREDICT:
    return th.ModelSpec(mode=mode, predictions={
        "y": prediction, "doubled": 2.0 * prediction})
  loss = tf.reduce_mean(tf.square(prediction - labels))
  if mode == th.ModeKeys.EVAL:
    def metric_fn(labels, prediction):
      return {
          "mse": tf.compat.v1.metrics.mean_squared_error(labels, prediction),
          "mae": tf.compat.v1.metrics.mean_absolute_error(labels, prediction),
      }
    return th.ModelSpec(mode=mode, loss=loss, eval_metrics=(
        metric_fn, {"labels": labels, "prediction": prediction}))
  optimizer = th.CrossShardOptimizer(
      tf.compat.v1.train.GradientDescentOptimizer(params.get("lr", 0.1)))
  train_op = optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  host_call = None
  if params.get("host_call"):
    log_dir = params["host_call"]

    def host_fn(step, loss_copy, w0):
      with tf.compat.v2.summary.create_file_writer(log_dir).as_default():
        tf.compat.v2.summary.scalar("host/loss", tf.reduce_mean(loss_copy),
                                    step=step[0])
        tf.compat.v2.summary.scalar("host/w0", w0[0], step=step[0])
        return tf.compat.v1.summary.all_v2_summary_ops()

    # Reads see the step's start value: +1 is the step being taken.
    step = tf.compat.v1.train.get_global_step() + 1
    host_call = (host_fn, {"step": tf.reshape(step, [1]),
                           "loss_copy": tf.reshape(loss, [1]),
                           "w0": tf.reshape(w[0, 0], [1])})
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op,
                      host_call=host_call)


def write_checkpoint(directory, w, step):
  """A checkpoint of linear_model_fn's variables with the given values."""
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    var = tf.compat.v1.get_variable("w", initializer=np.asarray(w, np.float32))
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      session.run(global_step.assign(step))
      del var
      return saver.save(session, os.path.join(directory, "model.ckpt"),
                        global_step=step)


def weights(checkpoint):
  return tf.train.load_checkpoint(checkpoint).get_tensor("w")


class RecordingHook(tf.compat.v1.train.SessionRunHook):
  """Counts calls and records the real global step after each run."""

  def __init__(self):
    self.counts = {"begin": 0, "after_create_session": 0, "before_run": 0,
                   "after_run": 0, "end": 0}
    self.steps = []
    self._global_step = None

  def begin(self):
    self.counts["begin"] += 1
    self._global_step = tf.compat.v1.train.get_global_step()

  def after_create_session(self, session, coord):
    self.counts["after_create_session"] += 1

  def before_run(self, run_context):
    self.counts["before_run"] += 1

  def after_run(self, run_context, run_values):
    self.counts["after_run"] += 1
    self.steps.append(int(run_context.session.run(self._global_step)))

  def end(self, session):
    self.counts["end"] += 1

"""A real small classifier for the runner: an MLP on 8x8 handwritten digits.

Data: `tpu_harness/examples/digits/data/digits.csv.gz` (1797 images, vendored; see its README),
or `params['data_file']`, a copy of it anywhere tf.io.gfile reads (gs://).
Split: a fixed shuffle, then 1509 training and 288 test images (288 = 9
batches of 32, so evaluation sees every test image).
"""

from __future__ import annotations

import functools
import gzip
import os
from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf

import tpu_harness as th

DATA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                         "digits.csv.gz")
NUM_PIXELS = 64
NUM_CLASSES = 10
NUM_TEST = 288
SPLIT_SEED = 20261125


@functools.lru_cache(maxsize=4)
def load(data_file: str = DATA_FILE) -> Dict[str, Tuple[np.ndarray,
                                                        np.ndarray]]:
  """Returns {'train': (x, y), 'test': (x, y)}; x in [0, 1], y int32."""
  with tf.io.gfile.GFile(data_file, "rb") as raw, gzip.open(raw, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  order = np.random.RandomState(SPLIT_SEED).permutation(len(table))
  table = table[order]
  x = table[:, :NUM_PIXELS] / 16.0
  y = table[:, NUM_PIXELS].astype(np.int32)
  return {"train": (x[:-NUM_TEST], y[:-NUM_TEST]),
          "test": (x[-NUM_TEST:], y[-NUM_TEST:])}


def _host_shard(dataset: tf.data.Dataset, params: Dict[str, Any]
                ) -> tf.data.Dataset:
  """This host's share of the examples, on a pod of several hosts."""
  context = params.get("input_context")
  if context is None or context.num_input_pipelines == 1:
    return dataset
  return dataset.shard(context.num_input_pipelines,
                       context.input_pipeline_id)


def train_input_fn(params: Dict[str, Any]) -> tf.data.Dataset:
  x, y = load(params.get("data_file", DATA_FILE))["train"]
  return (_host_shard(tf.data.Dataset.from_tensor_slices((x, y)), params)
          .shuffle(len(x), seed=params.get("seed", 1), reshuffle_each_iteration=True)
          .repeat()
          .batch(params["batch_size"], drop_remainder=True))


def eval_input_fn(params: Dict[str, Any]) -> tf.data.Dataset:
  x, y = load(params.get("data_file", DATA_FILE))["test"]
  return _host_shard(tf.data.Dataset.from_tensor_slices((x, y)),
                     params).batch(params["batch_size"], drop_remainder=True)


def predict_input_fn(params: Dict[str, Any]) -> tf.data.Dataset:
  x, _ = load(params.get("data_file", DATA_FILE))["test"]
  return tf.data.Dataset.from_tensor_slices(x).batch(params["batch_size"])


def _dense(name: str, inputs: tf.Tensor, units: int) -> tf.Tensor:
  with tf.compat.v1.variable_scope(name):
    kernel = tf.compat.v1.get_variable(
        "kernel", [inputs.shape[-1], units],
        initializer=tf.compat.v1.glorot_uniform_initializer(seed=7))
    bias = tf.compat.v1.get_variable("bias", [units],
                                     initializer=tf.zeros_initializer())
  return tf.matmul(inputs, kernel) + bias


def model_fn(features, labels, mode, params) -> th.ModelSpec:
  """64 -> hidden (ReLU) -> 10 logits; Adam on softmax cross-entropy."""
  hidden = tf.nn.relu(_dense("hidden", features, params.get("hidden", 64)))
  logits = _dense("logits", hidden, NUM_CLASSES)
  classes = tf.argmax(logits, axis=-1, output_type=tf.int32)
  if mode == th.ModeKeys.PREDICT:
    return th.ModelSpec(mode=mode, predictions={
        "classes": classes, "probabilities": tf.nn.softmax(logits)})
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits))
  if mode == th.ModeKeys.EVAL:
    def metric_fn(labels, classes):
      return {"accuracy": tf.compat.v1.metrics.accuracy(labels, classes)}
    return th.ModelSpec(mode=mode, loss=loss, eval_metrics=(
        metric_fn, {"labels": labels, "classes": classes}))
  optimizer = th.CrossShardOptimizer(tf.compat.v1.train.AdamOptimizer(
      params.get("learning_rate", 0.01)))
  train_op = optimizer.minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  batch_accuracy = tf.reduce_mean(tf.cast(tf.equal(classes, labels),
                                          tf.float32))
  host_call = None
  if params.get("model_dir"):
    summary_steps = params.get("summary_steps", 100)

    def host_call_fn(step, accuracy):
      # As TPUEstimator programs do: tf2 summaries on the host, per step.
      step = step[0]
      with tf.compat.v2.summary.create_file_writer(
          params["model_dir"], max_queue=summary_steps).as_default():
        with tf.compat.v2.summary.record_if(
            tf.equal(step % summary_steps, 0)):
          tf.compat.v2.summary.scalar("train/batch_accuracy",
                                      tf.reduce_mean(accuracy), step=step)
        return tf.compat.v1.summary.all_v2_summary_ops()

    host_call = (host_call_fn, [
        # Reads see the step's start value: +1 is the step being taken.
        tf.reshape(tf.compat.v1.train.get_global_step() + 1, [1]),
        tf.reshape(batch_accuracy, [1])])
  return th.ModelSpec(mode=mode, loss=loss, train_op=train_op,
                      host_call=host_call)

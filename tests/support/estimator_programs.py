"""TPUEstimator-style programs and data for the estimator tests.

`conv_model_fn` is written as TPUEstimator programs are (resnet_main.py's
shape, small): tf.compat.v1.layers conv net with batch norm, a learning-rate
schedule on the global step, `tf.compat.v1.tpu.CrossShardOptimizer` when
`params['use_tpu']`, UPDATE_OPS, an exponential moving average of the
weights restored for eval through `scaffold_fn`, a `host_call` writing tf2
summaries from a list of [1] tensors, `eval_metrics` as a list, and an
`EstimatorSpec` with `export_outputs` in PREDICT.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow.compat.v1 as tf
import tensorflow.compat.v2 as tf2

from tpu_harness import estimator as tf_estimator

IMAGE = 8
CLASSES = 4


def images(n: int, seed: int = 0):
  """Images with one bright quadrant; the label is the quadrant."""
  rng = np.random.RandomState(seed)
  labels = rng.randint(0, CLASSES, size=n).astype(np.int32)
  x = rng.uniform(0, 0.2, size=(n, IMAGE, IMAGE, 1)).astype(np.float32)
  half = IMAGE // 2
  for i, label in enumerate(labels):
    r, c = divmod(int(label), 2)
    x[i, r * half:(r + 1) * half, c * half:(c + 1) * half, 0] += 0.8
  return x, labels


def input_fn(params, mode=None):
  """Training/eval input: repeated for training, drop_remainder batches."""
  x, y = images(256, seed=0 if mode != tf_estimator.ModeKeys.EVAL else 1)
  dataset = tf.data.Dataset.from_tensor_slices((x, y))
  if mode == tf_estimator.ModeKeys.TRAIN:
    dataset = dataset.repeat()
  return dataset.batch(params["batch_size"], drop_remainder=True)


def predict_input_fn(params):
  x, _ = images(10, seed=2)
  return tf.data.Dataset.from_tensor_slices(x).batch(params["batch_size"])


def serving_input_receiver_fn():
  images_in = tf.placeholder(tf.float32, [None, IMAGE, IMAGE, 1],
                             name="images")
  return tf_estimator.export.ServingInputReceiver(images_in, images_in)


def conv_model_fn(features, labels, mode, params):
  """See the module docstring."""
  if isinstance(features, dict):
    features = features["feature"]
  training = mode == tf_estimator.ModeKeys.TRAIN
  init = tf.glorot_uniform_initializer
  net = tf.layers.Conv2D(8, 3, padding="same", kernel_initializer=init(seed=1),
                         name="conv")(features)
  net = tf.layers.BatchNormalization(momentum=0.9, name="bn")(
      net, training=training)
  net = tf.nn.relu(net)
  net = tf.layers.Flatten()(net)
  logits = tf.layers.Dense(CLASSES, kernel_initializer=init(seed=2),
                           name="logits")(net)

  if mode == tf_estimator.ModeKeys.PREDICT:
    predictions = {"classes": tf.argmax(logits, axis=1),
                   "probabilities": tf.nn.softmax(logits)}
    return tf_estimator.EstimatorSpec(
        mode=mode, predictions=predictions,
        export_outputs={
            "classify": tf_estimator.export.PredictOutput(predictions)})

  loss = tf.losses.sparse_softmax_cross_entropy(labels=labels, logits=logits)
  global_step = tf.train.get_global_step()
  ema = tf.train.ExponentialMovingAverage(decay=0.9, num_updates=global_step)
  ema_vars = tf.trainable_variables()

  if mode == tf_estimator.ModeKeys.TRAIN:
    learning_rate = tf.train.piecewise_constant(
        global_step, [params["train_steps"] // 2], [0.1, 0.05])
    optimizer = tf.train.GradientDescentOptimizer(learning_rate)
    if params["use_tpu"]:
      optimizer = tf.tpu.CrossShardOptimizer(optimizer)
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
      train_op = optimizer.minimize(loss, global_step)
    with tf.control_dependencies([train_op]):
      train_op = ema.apply(ema_vars)

    def host_call_fn(gs, loss, lr):
      gs = gs[0]
      with tf2.summary.create_file_writer(
          params["model_dir"],
          max_queue=params["iterations_per_loop"]).as_default():
        with tf2.summary.record_if(True):
          tf2.summary.scalar("loss", loss[0], step=gs)
          tf2.summary.scalar("learning_rate", lr[0], step=gs)
        return tf.summary.all_v2_summary_ops()

    host_call = (host_call_fn, [tf.reshape(global_step, [1]),
                                tf.reshape(loss, [1]),
                                tf.reshape(learning_rate, [1])])
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode=mode, loss=loss, train_op=train_op, host_call=host_call)

  def metric_fn(labels, logits):
    return {"accuracy": tf.metrics.accuracy(labels, tf.argmax(logits, 1))}

  restore = ema.variables_to_restore(ema_vars)
  return tf_estimator.tpu.TPUEstimatorSpec(
      mode=mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]),
      scaffold_fn=lambda: tf.train.Scaffold(saver=tf.train.Saver(restore)))


def estimator(model_dir: str, cores: int, train_steps: int = 12,
              **kwargs) -> tf_estimator.tpu.TPUEstimator:
  """The conv program's TPUEstimator: `cores` emulated TPU cores (use_tpu),
  or the CPU (cores=0)."""
  ipl = 4
  config = tf_estimator.tpu.RunConfig(
      model_dir=model_dir, save_checkpoints_steps=ipl, keep_checkpoint_max=3,
      tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=ipl, num_shards=cores or None))
  kwargs.setdefault("export_to_tpu", False)
  return tf_estimator.tpu.TPUEstimator(
      model_fn=conv_model_fn, config=config, use_tpu=bool(cores),
      params={"model_dir": os.path.join(model_dir, "host_call"),
              "iterations_per_loop": ipl, "train_steps": train_steps},
      train_batch_size=16, eval_batch_size=16, predict_batch_size=4,
      **kwargs)

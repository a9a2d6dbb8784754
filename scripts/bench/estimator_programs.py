"""The estimator bench's programs, written as TPUEstimator programs are:
their synthetic data, `input_fn`s and `model_fn`s (see
`scripts/bench/estimator.py` for what each stands for and how they are
timed).

- `mnist`: `write_mnist_records`, `mnist_input_fn`, `mnist_model_fn`.
- `resnet`: `write_jpeg_records`, `resnet_input_fn`, `resnet_model_fn`.
- `linear_model_fn`: the resume measurement's cheap model.
"""

from __future__ import annotations

import os
from typing import Callable, List

import numpy as np
import tensorflow.compat.v1 as tf

from tpu_harness import estimator as tf_estimator


def _example(image_bytes: bytes, label: int) -> bytes:
  return tf.train.Example(features=tf.train.Features(feature={
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[image_bytes])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[label]))})).SerializeToString()


def write_mnist_records(directory: str, count: int) -> str:
  rng = np.random.RandomState(0)
  path = os.path.join(directory, "train.tfrecords")
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(count):
      label = int(rng.randint(10))
      image = rng.randint(0, 40, size=(28, 28)).astype(np.uint8)
      image[label * 2:label * 2 + 8, 4:24] = 250
      writer.write(_example(image.tobytes(), label))
  return path


def write_jpeg_records(directory: str, count: int) -> List[str]:
  rng = np.random.RandomState(1)
  paths = [os.path.join(directory, f"train-{i:05d}-of-00004")
           for i in range(4)]
  with tf.Graph().as_default(), tf.Session() as session:
    pixels = tf.placeholder(tf.uint8, [72, 72, 3])
    encoded = tf.io.encode_jpeg(pixels)
    writers = [tf.io.TFRecordWriter(path) for path in paths]
    for index in range(count):
      label = int(rng.randint(10))
      small = rng.randint(0, 256, (9, 9, 3)).astype(np.uint8)
      image = np.kron(small, np.ones((8, 8, 1), np.uint8))
      image[:, label * 7:label * 7 + 7] = 255
      writers[index % 4].write(_example(
          session.run(encoded, {pixels: image}), label))
    for writer in writers:
      writer.close()
  return paths


def mnist_input_fn(records: str) -> Callable:
  def input_fn(params):
    features = {"image": tf.FixedLenFeature([], tf.string),
                "label": tf.FixedLenFeature([], tf.int64)}

    def decode(record):
      example = tf.parse_single_example(record, features)
      image = tf.cast(tf.decode_raw(example["image"], tf.uint8), tf.float32)
      return tf.reshape(image, [28, 28, 1]) / 255.0, example["label"]

    return (tf.data.TFRecordDataset(records).map(decode).cache().repeat()
            .shuffle(buffer_size=50000)
            .batch(params["batch_size"], drop_remainder=True))

  return input_fn


def resnet_input_fn(files: List[str]) -> Callable:
  def input_fn(params):
    features = {"image": tf.FixedLenFeature([], tf.string),
                "label": tf.FixedLenFeature([], tf.int64)}

    def decode(record):
      example = tf.parse_single_example(record, features)
      image = tf.io.decode_jpeg(example["image"], channels=3)
      image = tf.image.random_crop(image, [64, 64, 3])
      image = tf.image.random_flip_left_right(image)
      return tf.cast(image, tf.float32) / 255.0, example["label"]

    dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=4)
    return (dataset.shuffle(1024).repeat()
            .map(decode, num_parallel_calls=tf.data.experimental.AUTOTUNE)
            .batch(params["batch_size"], drop_remainder=True)
            .prefetch(tf.data.experimental.AUTOTUNE))

  return input_fn


def _spec(mode, loss, logits, labels, train_op):
  """The TPUEstimatorSpec of `mode`: training, or accuracy for eval."""
  if mode == tf_estimator.ModeKeys.EVAL:
    def metric_fn(labels, logits):
      return {"accuracy": tf.metrics.accuracy(labels, tf.argmax(logits, 1))}
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode=mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]))
  return tf_estimator.tpu.TPUEstimatorSpec(mode=mode, loss=loss,
                                           train_op=train_op())


def mnist_model_fn(features, labels, mode, params):
  del params  # Unused.
  net = tf.layers.conv2d(features, 32, 5, padding="same",
                         activation=tf.nn.relu)
  net = tf.layers.max_pooling2d(net, 2, 2)
  net = tf.layers.conv2d(net, 64, 5, padding="same", activation=tf.nn.relu)
  net = tf.layers.max_pooling2d(net, 2, 2)
  net = tf.layers.dense(tf.layers.flatten(net), 1024, activation=tf.nn.relu)
  net = tf.layers.dropout(net, 0.4,
                          training=mode == tf_estimator.ModeKeys.TRAIN)
  logits = tf.layers.dense(net, 10)
  loss = tf.losses.sparse_softmax_cross_entropy(labels=labels, logits=logits)
  return _spec(mode, loss, logits, labels, lambda: tf.train.AdamOptimizer(
      1e-4).minimize(loss, tf.train.get_global_step()))


def resnet_model_fn(features, labels, mode, params):
  del params  # Unused.
  training = mode == tf_estimator.ModeKeys.TRAIN

  def block(net, channels, stride):
    shortcut = tf.layers.conv2d(net, channels, 1, strides=stride,
                                use_bias=False)
    net = tf.layers.conv2d(net, channels, 3, strides=stride, padding="same",
                           use_bias=False)
    net = tf.nn.relu(tf.layers.batch_normalization(net, training=training))
    net = tf.layers.conv2d(net, channels, 3, padding="same", use_bias=False)
    net = tf.layers.batch_normalization(net, training=training)
    return tf.nn.relu(net + shortcut)

  net = tf.layers.conv2d(features, 16, 3, padding="same", use_bias=False)
  for channels, stride in ((16, 1), (32, 2), (64, 2)):
    net = block(net, channels, stride)
  logits = tf.layers.dense(tf.reduce_mean(net, axis=[1, 2]), 10)
  loss = tf.losses.sparse_softmax_cross_entropy(labels=labels, logits=logits)
  def train_op():
    optimizer = tf.train.MomentumOptimizer(0.01, 0.9)
    with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
      return optimizer.minimize(loss, tf.train.get_global_step())

  return _spec(mode, loss, logits, labels, train_op)


def linear_model_fn(features, labels, mode, params):
  """The resume measurement's model: cheap, so that the input dominates."""
  del params  # Unused.
  w = tf.get_variable("w", [1], initializer=tf.zeros_initializer())
  prediction = tf.reduce_mean(features, axis=[1, 2, 3]) * w
  loss = tf.reduce_mean(tf.square(prediction - tf.cast(labels, tf.float32)))
  return _spec(mode, loss, None, labels, lambda: tf.train
               .GradientDescentOptimizer(1e-6).minimize(
                   loss, tf.train.get_global_step()))

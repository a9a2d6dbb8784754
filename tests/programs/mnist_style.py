"""A handwritten-digit classifier in the shape of a Cloud TPU MNIST program.

Written for this project's tests (tests/test_estimator_tpu.py) in the style
of the TPUEstimator programs published for Cloud TPU: absl flags, a conv net
of `tf.compat.v1.layers`, TFRecord input with `cache().repeat().shuffle()`,
`eval_metrics`, and train, then evaluate, then predict in one run. Its only
harness line is the estimator import.

--data_dir holds `train.tfrecords`, `validation.tfrecords` and
`test.tfrecords`: tf.Examples with `image` (28x28 uint8 pixels as bytes) and
`label` (int64).

    python tests/programs/mnist_style.py --use_tpu=false \
        --data_dir=/tmp/digits --model_dir=/tmp/digits_model
"""

import os

from absl import app
from absl import flags
from absl import logging
import tensorflow.compat.v1 as tf

from tpu_harness import estimator as tf_estimator

IMAGE_SIZE = 28
NUM_CLASSES = 10

# Where to run.
flags.DEFINE_bool("use_tpu", True, "Build the TPU loop: on --tpu if named, "
                  "else on --num_shards emulated cores.")
flags.DEFINE_string("tpu", None, "Cloud TPU name or grpc:// address; "
                    "empty: no TPU.")
flags.DEFINE_string("tpu_zone", None, "Zone of --tpu (default: detected).")
flags.DEFINE_string("gcp_project", None, "Project of --tpu (default: "
                    "detected).")
flags.DEFINE_integer("num_shards", 8, "TPU cores to train on.")
# Data and model.
flags.DEFINE_string("data_dir", None, "Directory of the TFRecord files.")
flags.DEFINE_string("model_dir", None, "Checkpoints and events.")
flags.DEFINE_integer("train_batch_size", 128, "Global training batch.")
flags.DEFINE_integer("eval_batch_size", 128, "Global evaluation batch.")
flags.DEFINE_integer("train_steps", 2000, "Global step to train to.")
flags.DEFINE_integer("eval_steps", 10, "Evaluation batches; 0: no "
                     "evaluation.")
flags.DEFINE_integer("iterations_per_loop", 100, "Steps per device loop.")
flags.DEFINE_integer("shuffle_buffer", 10000, "Training shuffle buffer.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam's learning rate.")
flags.DEFINE_integer("predict_examples", 10, "How many test examples to "
                     "classify at the end; 0: none.")

FLAGS = flags.FLAGS


def classifier(images, training):
  """Two conv/pool stages and a small dense head; returns the logits."""
  net = tf.layers.conv2d(images, 16, 3, padding="same", activation=tf.nn.relu,
                         name="conv1")
  net = tf.layers.max_pooling2d(net, 2, 2, name="pool1")
  net = tf.layers.conv2d(net, 32, 3, padding="same", activation=tf.nn.relu,
                         name="conv2")
  net = tf.layers.max_pooling2d(net, 2, 2, name="pool2")
  net = tf.layers.flatten(net)
  net = tf.layers.dense(net, 64, activation=tf.nn.relu, name="hidden")
  net = tf.layers.dropout(net, rate=0.25, training=training)
  return tf.layers.dense(net, NUM_CLASSES, name="logits")


def metric_fn(labels, logits):
  """Evaluation metrics, computed on the host from the gathered logits."""
  predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
  return {"accuracy": tf.metrics.accuracy(labels, predicted)}


def model_fn(features, labels, mode, params):
  """Builds the classifier for `mode`; returns a TPUEstimatorSpec."""
  logits = classifier(features, training=mode == tf_estimator.ModeKeys.TRAIN)

  if mode == tf_estimator.ModeKeys.PREDICT:
    return tf_estimator.tpu.TPUEstimatorSpec(mode, predictions={
        "digit": tf.argmax(logits, axis=1, output_type=tf.int32),
        "probabilities": tf.nn.softmax(logits)})

  loss = tf.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf_estimator.ModeKeys.EVAL:
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]))

  optimizer = tf.train.AdamOptimizer(params["learning_rate"])
  if params["use_tpu"]:
    optimizer = tf.tpu.CrossShardOptimizer(optimizer)
  train_op = optimizer.minimize(loss, tf.train.get_or_create_global_step())
  return tf_estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)


def parse_example(serialized):
  """One tf.Example into an image scaled to [0, 1] and its label."""
  parsed = tf.io.parse_single_example(serialized, {
      "image": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.FixedLenFeature([], tf.int64)})
  pixels = tf.io.decode_raw(parsed["image"], tf.uint8)
  image = tf.reshape(tf.cast(pixels, tf.float32) / 255.0,
                     [IMAGE_SIZE, IMAGE_SIZE, 1])
  return image, tf.cast(parsed["label"], tf.int32)


def read_split(params, split):
  """The parsed examples of one split, in file order."""
  path = os.path.join(params["data_dir"], split + ".tfrecords")
  return tf.data.TFRecordDataset(path).map(parse_example)


def train_input_fn(params):
  """Endless shuffled training batches, each exactly params['batch_size']."""
  return (read_split(params, "train").cache().repeat()
          .shuffle(params["shuffle_buffer"])
          .batch(params["batch_size"], drop_remainder=True))


def eval_input_fn(params):
  return read_split(params, "validation").batch(params["batch_size"],
                                                drop_remainder=True)


def predict_input_fn(params):
  """The first examples of the test split, images only; the last batch may
  be partial."""
  images = read_split(params, "test").map(lambda image, label: image)
  return images.take(params["predict_examples"]).batch(params["batch_size"])


def main(argv):
  del argv  # Unused.
  logging.set_verbosity(logging.INFO)
  if not FLAGS.data_dir:
    raise app.UsageError("--data_dir is required.")

  resolver = None
  if FLAGS.tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        FLAGS.tpu, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project)
  config = tf_estimator.tpu.RunConfig(
      cluster=resolver,
      model_dir=FLAGS.model_dir,
      session_config=tf.ConfigProto(allow_soft_placement=True),
      tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=FLAGS.iterations_per_loop,
          num_shards=FLAGS.num_shards))
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn,
      config=config,
      use_tpu=FLAGS.use_tpu,
      train_batch_size=FLAGS.train_batch_size,
      eval_batch_size=FLAGS.eval_batch_size,
      predict_batch_size=FLAGS.eval_batch_size,
      params={"data_dir": FLAGS.data_dir,
              "learning_rate": FLAGS.learning_rate,
              "shuffle_buffer": FLAGS.shuffle_buffer,
              "predict_examples": FLAGS.predict_examples})

  estimator.train(input_fn=train_input_fn, max_steps=FLAGS.train_steps)

  if FLAGS.eval_steps:
    results = estimator.evaluate(input_fn=eval_input_fn,
                                 steps=FLAGS.eval_steps)
    logging.info("Accuracy after %d steps: %.4f", results["global_step"],
                 results["accuracy"])

  if FLAGS.predict_examples:
    for index, prediction in enumerate(
        estimator.predict(input_fn=predict_input_fn)):
      digit = prediction["digit"]
      logging.info("Test example %d: digit %d, p=%.4f", index, digit,
                   prediction["probabilities"][digit])


if __name__ == "__main__":
  app.run(main)

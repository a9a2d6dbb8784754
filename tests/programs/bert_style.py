"""A token-sequence classifier in the shape of a BERT fine-tuning program.

Written for this project's tests (tests/test_install.py) in the style of
TPUEstimator programs ported to TF 2 with `import tensorflow.compat.v1 as
tf`: every estimator name is written `tf.estimator...`
(`tf.estimator.tpu.TPUEstimator`, `tf.estimator.tpu.RunConfig`,
`tf.estimator.ModeKeys`), flags and the entry point are TF's own
(`tf.flags`, `tf.app.run`, which are absl's), and nothing in it names the
harness. TensorFlow 2.21 has no `tf.compat.v1.estimator`, so it runs only
as

    python -m tpu_harness tests/programs/bert_style.py \
        --output_dir=/tmp/bert_style --do_train --do_eval

which installs `tpu_harness.estimator` as `tf.estimator` first. The data is
synthetic: sequences of token ids whose label is whether token 1 occurs in
them. With `--init_checkpoint`, the variables that checkpoint holds start
from its values, set in `model_fn` by `tf.train.init_from_checkpoint` as
BERT's fine-tuning sets its pretrained body: directly off TPU, in
`scaffold_fn` with `--use_tpu`.
"""

import collections
import os

import numpy as np
import tensorflow.compat.v1 as tf

flags = tf.flags
FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Checkpoints, events and "
                    "eval_results.txt.")
flags.DEFINE_bool("do_train", False, "Train.")
flags.DEFINE_bool("do_eval", False, "Evaluate the trained model.")
flags.DEFINE_string("init_checkpoint", None, "A pretrained checkpoint to "
                    "start the variables it holds from.")
flags.DEFINE_integer("max_seq_length", 8, "Tokens per example.")
flags.DEFINE_integer("vocab_size", 16, "Token ids are below this.")
flags.DEFINE_integer("hidden_size", 8, "Embedding width.")
flags.DEFINE_integer("num_train_examples", 64, "Synthetic training set.")
flags.DEFINE_integer("num_eval_examples", 32, "Synthetic evaluation set.")
flags.DEFINE_integer("train_batch_size", 8, "Global training batch.")
flags.DEFINE_integer("eval_batch_size", 8, "Global evaluation batch.")
flags.DEFINE_integer("predict_batch_size", 8, "Global prediction batch.")
flags.DEFINE_float("learning_rate", 0.1, "Adam's learning rate.")
flags.DEFINE_integer("num_train_steps", 6, "Global step to train to.")
flags.DEFINE_integer("save_checkpoints_steps", 3, "Steps between saves.")
flags.DEFINE_integer("iterations_per_loop", 3, "Steps per device loop.")
flags.DEFINE_bool("use_tpu", False, "Run on a Cloud TPU (--tpu_name).")
flags.DEFINE_string("tpu_name", None, "Cloud TPU name or grpc:// address.")
flags.DEFINE_string("tpu_zone", None, "Zone of --tpu_name.")
flags.DEFINE_string("gcp_project", None, "Project of --tpu_name.")
flags.DEFINE_string("master", None, "TensorFlow master URL.")
flags.DEFINE_integer("num_tpu_cores", 8, "TPU cores, with --use_tpu.")


def synthetic_examples(count, seed):
  """`count` (token ids, label) pairs; the label: token 1 is among them."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, FLAGS.vocab_size,
                    size=(count, FLAGS.max_seq_length)).astype(np.int32)
  labels = (rng.rand(count) < 0.5).astype(np.int32)
  ids[labels == 1, 0] = 1
  return ids, labels


def create_model(input_ids, num_labels, is_training):
  """Embeds the tokens, averages them, classifies; returns the logits."""
  embeddings = tf.get_variable(
      "word_embeddings", [FLAGS.vocab_size, FLAGS.hidden_size],
      initializer=tf.truncated_normal_initializer(stddev=0.02))
  pooled = tf.reduce_mean(tf.nn.embedding_lookup(embeddings, input_ids),
                          axis=1)
  if is_training:
    pooled = tf.nn.dropout(pooled, rate=0.1)
  return tf.layers.dense(pooled, num_labels, name="classifier")


def pretrained_names(variables, init_checkpoint):
  """{name: name} for each of `variables` that `init_checkpoint` holds."""
  wanted = {variable.name.split(":")[0] for variable in variables}
  return collections.OrderedDict(
      (name, name) for name, _ in tf.train.list_variables(init_checkpoint)
      if name in wanted)


def model_fn_builder(num_labels, learning_rate, use_tpu, init_checkpoint):
  """The `model_fn` closure, as BERT's run_classifier builds it."""

  def model_fn(features, labels, mode, params):
    del labels, params  # None: input_fn gives features alone; unused.
    input_ids = features["input_ids"]
    label_ids = features["label_ids"]
    is_training = mode == tf.estimator.ModeKeys.TRAIN
    logits = create_model(input_ids, num_labels, is_training)
    loss = tf.losses.sparse_softmax_cross_entropy(label_ids, logits)

    scaffold_fn = None
    if init_checkpoint:
      assignment_map = pretrained_names(tf.trainable_variables(),
                                        init_checkpoint)
      if use_tpu:

        def tpu_scaffold():
          tf.train.init_from_checkpoint(init_checkpoint, assignment_map)
          return tf.train.Scaffold()

        scaffold_fn = tpu_scaffold
      else:
        tf.train.init_from_checkpoint(init_checkpoint, assignment_map)

    if mode == tf.estimator.ModeKeys.TRAIN:
      optimizer = tf.train.AdamOptimizer(learning_rate)
      if use_tpu:
        optimizer = tf.tpu.CrossShardOptimizer(optimizer)
      train_op = optimizer.minimize(
          loss, global_step=tf.train.get_or_create_global_step())
      return tf.estimator.tpu.TPUEstimatorSpec(
          mode=mode, loss=loss, train_op=train_op, scaffold_fn=scaffold_fn)
    if mode == tf.estimator.ModeKeys.EVAL:

      def metric_fn(label_ids, logits):
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"eval_accuracy": tf.metrics.accuracy(label_ids,
                                                     predictions)}

      return tf.estimator.tpu.TPUEstimatorSpec(
          mode=mode, loss=loss, scaffold_fn=scaffold_fn,
          eval_metrics=(metric_fn, [label_ids, logits]))
    return tf.estimator.tpu.TPUEstimatorSpec(
        mode=mode, predictions={"probabilities": tf.nn.softmax(logits)},
        scaffold_fn=scaffold_fn)

  return model_fn


def input_fn_builder(ids, labels, is_training, drop_remainder):
  """The `input_fn` closure over in-memory examples."""

  def input_fn(params):
    # Features alone, the labels among them, as BERT's input_fn returns
    # them: model_fn gets labels=None in every mode, as from TPUEstimator.
    d = tf.data.Dataset.from_tensor_slices(
        {"input_ids": ids, "label_ids": labels})
    if is_training:
      d = d.repeat().shuffle(buffer_size=100)
    return d.batch(params["batch_size"], drop_remainder=drop_remainder)

  return input_fn


def main(_):
  tf.logging.set_verbosity(tf.logging.INFO)
  if not FLAGS.do_train and not FLAGS.do_eval:
    raise ValueError("At least one of `do_train` or `do_eval` must be True.")
  tf.gfile.MakeDirs(FLAGS.output_dir)

  tpu_cluster_resolver = None
  if FLAGS.use_tpu and FLAGS.tpu_name:
    tpu_cluster_resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        FLAGS.tpu_name, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project)
  is_per_host = tf.estimator.tpu.InputPipelineConfig.PER_HOST_V2
  run_config = tf.estimator.tpu.RunConfig(
      cluster=tpu_cluster_resolver,
      master=FLAGS.master,
      model_dir=FLAGS.output_dir,
      save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      tpu_config=tf.estimator.tpu.TPUConfig(
          iterations_per_loop=FLAGS.iterations_per_loop,
          num_shards=FLAGS.num_tpu_cores,
          per_host_input_for_training=is_per_host))
  estimator = tf.estimator.tpu.TPUEstimator(
      use_tpu=FLAGS.use_tpu,
      model_fn=model_fn_builder(2, FLAGS.learning_rate, FLAGS.use_tpu,
                                FLAGS.init_checkpoint),
      config=run_config,
      train_batch_size=FLAGS.train_batch_size,
      eval_batch_size=FLAGS.eval_batch_size,
      predict_batch_size=FLAGS.predict_batch_size)

  if FLAGS.do_train:
    ids, labels = synthetic_examples(FLAGS.num_train_examples, seed=1)
    tf.logging.info("***** Running training *****")
    estimator.train(
        input_fn=input_fn_builder(ids, labels, is_training=True,
                                  drop_remainder=True),
        max_steps=FLAGS.num_train_steps)

  if FLAGS.do_eval:
    ids, labels = synthetic_examples(FLAGS.num_eval_examples, seed=2)
    eval_steps = FLAGS.num_eval_examples // FLAGS.eval_batch_size
    result = estimator.evaluate(
        input_fn=input_fn_builder(ids, labels, is_training=False,
                                  drop_remainder=True),
        steps=eval_steps)
    output_eval_file = os.path.join(FLAGS.output_dir, "eval_results.txt")
    with tf.gfile.GFile(output_eval_file, "w") as writer:
      tf.logging.info("***** Eval results *****")
      for key in sorted(result.keys()):
        tf.logging.info("  %s = %s", key, str(result[key]))
        writer.write("%s = %s\n" % (key, str(result[key])))


if __name__ == "__main__":
  flags.mark_flag_as_required("output_dir")
  tf.app.run()

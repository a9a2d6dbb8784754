"""An image classifier in the shape of a Cloud TPU ResNet program.

Written for this project's tests (tests/test_estimator_tpu.py) in the style
of the TPUEstimator ResNet program published for Cloud TPU, with the
constructs such programs lean on:

  * `tf.compat.v1.disable_v2_behavior()` before `app.run`;
  * a residual network with batch norm (UPDATE_OPS), Nesterov momentum and
    a warm-up then cosine learning rate computed from the global step;
  * a `host_call` writing tf2 summaries (loss, learning rate, epoch) from
    [1]-shaped tensors, once per step, into --model_dir;
  * an exponential moving average of the weights, restored in place of the
    weights for evaluation (`scaffold_fn`) and for prediction and export
    (`EstimatorSpec(scaffold=...)`);
  * PER_HOST_V2 input, `params['context']`;
  * `--mode=train_and_eval`: train --steps_per_eval steps, evaluate, and
    again until --train_steps, resuming from --model_dir;
  * an `EstimatorSpec` with `export_outputs` in PREDICT, and
    `export_saved_model` of a graph that takes JPEG strings.

Its only harness line is the estimator import. The input is synthetic
(--data_dir=null; resnet_style_input.py).

    python tests/programs/resnet_style.py --use_tpu=false --data_dir=null \
        --model_dir=/tmp/resnet_style --mode=train_and_eval \
        --export_dir=/tmp/resnet_style_export
"""

from absl import app
from absl import flags
from absl import logging
import tensorflow.compat.v1 as tf

from tpu_harness import estimator as tf_estimator
import resnet_style_input
import resnet_style_model

# Where to run.
flags.DEFINE_bool("use_tpu", True, "Build the TPU loop: on --tpu if named, "
                  "else on --num_cores emulated cores.")
flags.DEFINE_string("tpu", None, "Cloud TPU name or grpc:// address; "
                    "empty: no TPU.")
flags.DEFINE_string("tpu_zone", None, "Zone of --tpu (default: detected).")
flags.DEFINE_string("gcp_project", None, "Project of --tpu (default: "
                    "detected).")
flags.DEFINE_integer("num_cores", 8, "TPU cores to train on.")
# What to do.
flags.DEFINE_string("data_dir", "null", "Training data; only 'null' "
                    "(synthetic images) is implemented.")
flags.DEFINE_string("model_dir", None, "Checkpoints and events.")
flags.DEFINE_enum("mode", "train_and_eval", ["train", "train_and_eval"],
                  "train: to --train_steps; train_and_eval: evaluate every "
                  "--steps_per_eval steps on the way.")
flags.DEFINE_integer("train_steps", 1000, "Global step to train to.")
flags.DEFINE_integer("steps_per_eval", 250, "Steps between evaluations.")
flags.DEFINE_integer("iterations_per_loop", 50, "Steps per device loop.")
flags.DEFINE_integer("save_checkpoints_steps", 1000, "Checkpoint interval "
                     "(at least --iterations_per_loop).")
flags.DEFINE_integer("log_step_count_steps", 100, "Steps between step-rate "
                     "log lines.")
flags.DEFINE_integer("train_batch_size", 256, "Global training batch.")
flags.DEFINE_integer("eval_batch_size", 256, "Global evaluation batch.")
flags.DEFINE_integer("num_train_images", 12800, "Images in an epoch.")
flags.DEFINE_integer("num_eval_images", 2560, "Images evaluated each time.")
flags.DEFINE_string("export_dir", None, "Export a SavedModel here at the "
                    "end.")
# The model.
flags.DEFINE_integer("image_size", 32, "Height and width of the images.")
flags.DEFINE_integer("num_classes", 10, "Classes to tell apart.")
flags.DEFINE_list("stage_filters", ["16", "32", "64"], "Filters of each "
                  "residual stage.")
flags.DEFINE_integer("blocks_per_stage", 2, "Residual blocks per stage.")
flags.DEFINE_float("bn_momentum", 0.9, "Batch norm's moving-average "
                   "momentum.")
flags.DEFINE_float("base_learning_rate", 0.1, "Peak learning rate for a "
                   "batch of 256 (scaled linearly with the batch).")
flags.DEFINE_float("warmup_epochs", 1.0, "Epochs of linear warm-up.")
flags.DEFINE_float("momentum", 0.9, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "L2 factor on the kernels.")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing.")
flags.DEFINE_float("moving_average_decay", 0.999, "Decay of the weights' "
                   "moving average; 0: none.")

FLAGS = flags.FLAGS


def learning_rate_schedule(params, global_step, current_epoch):
  """Linear warm-up to the peak rate, then cosine decay to --train_steps."""
  peak = params["base_learning_rate"] * params["train_batch_size"] / 256.0
  warmup_epochs = params["warmup_epochs"]
  decayed = tf.train.cosine_decay(peak, global_step, params["train_steps"])
  if warmup_epochs <= 0:
    return decayed
  warming_up = peak * current_epoch / warmup_epochs
  return tf.where(current_epoch < warmup_epochs, warming_up, decayed)


def model_fn(features, labels, mode, params):
  """The residual network for `mode`; see the module docstring."""
  logits = resnet_style_model.residual_network(
      features, training=mode == tf_estimator.ModeKeys.TRAIN,
      num_classes=params["num_classes"],
      stage_filters=params["stage_filters"],
      blocks_per_stage=params["blocks_per_stage"],
      bn_momentum=params["bn_momentum"])
  global_step = tf.train.get_global_step()
  ema = None
  if params["moving_average_decay"] > 0:
    ema = tf.train.ExponentialMovingAverage(
        decay=params["moving_average_decay"], num_updates=global_step)
  averaged = tf.trainable_variables()

  def averaged_weights_saver():
    """A Saver reading each averaged weight from its moving average."""
    return tf.train.Saver(ema.variables_to_restore(averaged))

  if mode == tf_estimator.ModeKeys.PREDICT:
    predictions = {"classes": tf.argmax(logits, axis=1),
                   "probabilities": tf.nn.softmax(logits)}
    return tf_estimator.EstimatorSpec(
        mode=mode, predictions=predictions,
        export_outputs={
            "predict": tf_estimator.export.PredictOutput(predictions)},
        scaffold=(tf.train.Scaffold(saver=averaged_weights_saver())
                  if ema else None))

  one_hot = tf.one_hot(labels, params["num_classes"])
  loss = tf.losses.softmax_cross_entropy(
      one_hot, logits, label_smoothing=params["label_smoothing"])
  loss += params["weight_decay"] * tf.add_n(
      [tf.nn.l2_loss(v) for v in averaged if "kernel" in v.name])

  if mode == tf_estimator.ModeKeys.EVAL:
    def metric_fn(labels, logits):
      top_1 = tf.metrics.accuracy(
          labels, tf.argmax(logits, axis=1, output_type=tf.int32))
      k = min(5, params["num_classes"])
      top_k = tf.metrics.mean(tf.cast(tf.nn.in_top_k(logits, labels, k),
                                      tf.float32))
      return {"top_1_accuracy": top_1, "top_5_accuracy": top_k}

    def scaffold_fn():
      """Evaluates the moving averages in place of the weights."""
      return tf.train.Scaffold(saver=averaged_weights_saver())

    return tf_estimator.tpu.TPUEstimatorSpec(
        mode=mode, loss=loss, eval_metrics=(metric_fn, [labels, logits]),
        scaffold_fn=scaffold_fn if ema else None)

  steps_per_epoch = params["num_train_images"] / params["train_batch_size"]
  current_epoch = tf.cast(global_step, tf.float32) / steps_per_epoch
  learning_rate = learning_rate_schedule(params, global_step, current_epoch)
  optimizer = tf.train.MomentumOptimizer(
      learning_rate, momentum=params["momentum"], use_nesterov=True)
  if params["use_tpu"]:
    optimizer = tf.tpu.CrossShardOptimizer(optimizer)
  # Batch norm's moving statistics update with each step.
  with tf.control_dependencies(tf.get_collection(tf.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.minimize(loss, global_step)
  if ema:
    with tf.control_dependencies([train_op]):
      train_op = ema.apply(averaged)

  def host_call_fn(step, loss, learning_rate, epoch):
    """Summaries on the host, from each step's [replicas]-shaped values."""
    step = step[0]
    with tf.compat.v2.summary.create_file_writer(
        params["model_dir"],
        max_queue=params["iterations_per_loop"]).as_default():
      with tf.compat.v2.summary.record_if(True):
        tf.compat.v2.summary.scalar("loss", loss[0], step=step)
        tf.compat.v2.summary.scalar("learning_rate", learning_rate[0],
                                    step=step)
        tf.compat.v2.summary.scalar("current_epoch", epoch[0], step=step)
      return tf.summary.all_v2_summary_ops()

  host_call = (host_call_fn, [tf.reshape(global_step, [1]),
                              tf.reshape(loss, [1]),
                              tf.reshape(learning_rate, [1]),
                              tf.reshape(current_epoch, [1])])
  return tf_estimator.tpu.TPUEstimatorSpec(
      mode=mode, loss=loss, train_op=train_op, host_call=host_call)


def checkpointed_step(model_dir):
  """The global step of the newest checkpoint in model_dir, or 0."""
  checkpoint = tf.train.latest_checkpoint(model_dir)
  if not checkpoint:
    return 0
  return int(tf.train.load_variable(checkpoint, tf.GraphKeys.GLOBAL_STEP))


def describe(results):
  """Evaluation results as 'name=value' pairs, sorted by name."""
  return " ".join(f"{name}={float(value):.6g}"
                  for name, value in sorted(results.items()))


def main(argv):
  del argv  # Unused.
  if FLAGS.data_dir != "null":
    raise app.UsageError("Only --data_dir=null (synthetic images) is "
                         "implemented.")
  params = {
      "model_dir": FLAGS.model_dir,
      "iterations_per_loop": FLAGS.iterations_per_loop,
      "train_steps": FLAGS.train_steps,
      "train_batch_size": FLAGS.train_batch_size,
      "num_train_images": FLAGS.num_train_images,
      "num_classes": FLAGS.num_classes,
      "stage_filters": [int(f) for f in FLAGS.stage_filters],
      "blocks_per_stage": FLAGS.blocks_per_stage,
      "bn_momentum": FLAGS.bn_momentum,
      "base_learning_rate": FLAGS.base_learning_rate,
      "warmup_epochs": FLAGS.warmup_epochs,
      "momentum": FLAGS.momentum,
      "weight_decay": FLAGS.weight_decay,
      "label_smoothing": FLAGS.label_smoothing,
      "moving_average_decay": FLAGS.moving_average_decay,
  }

  resolver = None
  if FLAGS.tpu:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        FLAGS.tpu, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project)
  config = tf_estimator.tpu.RunConfig(
      cluster=resolver,
      model_dir=FLAGS.model_dir,
      save_checkpoints_steps=max(FLAGS.save_checkpoints_steps,
                                 FLAGS.iterations_per_loop),
      log_step_count_steps=FLAGS.log_step_count_steps,
      tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=FLAGS.iterations_per_loop,
          num_shards=FLAGS.num_cores,
          per_host_input_for_training=(
              tf_estimator.tpu.InputPipelineConfig.PER_HOST_V2)))
  classifier = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn,
      config=config,
      use_tpu=FLAGS.use_tpu,
      params=params,
      train_batch_size=FLAGS.train_batch_size,
      eval_batch_size=FLAGS.eval_batch_size,
      # The harness exports the CPU serving graph only.
      export_to_tpu=False)

  train_input, eval_input = [
      resnet_style_input.SyntheticImages(
          is_training=is_training, image_size=FLAGS.image_size,
          num_classes=FLAGS.num_classes,
          num_images=(FLAGS.num_train_images if is_training
                      else FLAGS.num_eval_images))
      for is_training in (True, False)]
  eval_steps = FLAGS.num_eval_images // FLAGS.eval_batch_size

  current_step = checkpointed_step(FLAGS.model_dir)
  logging.info("Training to step %d (%.2f epochs) from step %d.",
               FLAGS.train_steps,
               FLAGS.train_steps * FLAGS.train_batch_size
               / FLAGS.num_train_images, current_step)
  if FLAGS.mode == "train":
    classifier.train(input_fn=train_input.input_fn,
                     max_steps=FLAGS.train_steps)
  else:
    while current_step < FLAGS.train_steps:
      current_step = min(current_step + FLAGS.steps_per_eval,
                         FLAGS.train_steps)
      classifier.train(input_fn=train_input.input_fn, max_steps=current_step)
      results = classifier.evaluate(input_fn=eval_input.input_fn,
                                    steps=eval_steps)
      logging.info("Eval results at step %d: %s", current_step,
                   describe(results))

  if FLAGS.export_dir:
    exported = classifier.export_saved_model(
        export_dir_base=FLAGS.export_dir,
        serving_input_receiver_fn=resnet_style_input.jpeg_serving_input_fn(
            FLAGS.image_size))
    logging.info("Exported the serving model to %s", exported.decode())


if __name__ == "__main__":
  logging.set_verbosity(logging.INFO)
  tf.disable_v2_behavior()
  app.run(main)

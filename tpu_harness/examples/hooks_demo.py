"""Hooks demo: a real model trained N steps per Session.run, with our hooks.

Trains a linear regression (8 features, synthetic data from a fixed seed) with
plain `tf.compat.v1.train.MonitoredTrainingSession`. The train op is a
`tf.while_loop` that runs `--steps_per_run` SGD steps per `Session.run`, as a
TPU training loop does, and the hooks are told so:

* `hooks.CheckpointSaverHook(..., steps_per_run=N)` saves every
  `--save_checkpoints_steps` steps,
* `hooks.StepCounterHook` logs and records global_step/sec and examples/sec,
* `hooks.StopAtStepHook` feeds the loop's iteration count so training stops
  exactly at `--train_steps`.

Run it again with a larger `--train_steps` and it resumes from the latest
checkpoint in `--model_dir`. `tensorboard --logdir=MODEL_DIR` shows the loss,
the rates and the graph.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

import hooks
from tpu_harness.examples import _cli as cli

NUM_FEATURES = 8
NUM_EXAMPLES = 4096
SEED = 1234


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """What to train, validated on construction."""
  model_dir: str
  train_steps: int = 2000
  steps_per_run: int = 100
  save_checkpoints_steps: int = 500
  batch_size: int = 32
  learning_rate: float = 0.05

  def __post_init__(self):
    if not isinstance(self.model_dir, str) or not self.model_dir:
      raise ValueError(f"`model_dir` ({self.model_dir!r}) must be a "
                       f"non-empty path.")
    for name in ("train_steps", "steps_per_run", "save_checkpoints_steps",
                 "batch_size"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` ({value!r}) must be a positive integer.")
    if not self.learning_rate > 0:
      raise ValueError(f"`learning_rate` ({self.learning_rate!r}) must be "
                       f"> 0.")


def true_parameters():
  """The weights and bias the data is generated from."""
  rng = np.random.RandomState(SEED)
  return rng.uniform(-2, 2, size=[NUM_FEATURES, 1]).astype(np.float32), 0.5


def make_dataset(batch_size: int) -> tf.data.Dataset:
  """Noisy samples of y = x.w + b, repeated, in fixed order."""
  rng = np.random.RandomState(SEED + 1)
  w, b = true_parameters()
  x = rng.normal(size=[NUM_EXAMPLES, NUM_FEATURES]).astype(np.float32)
  y = x @ w + b + 0.01 * rng.normal(size=[NUM_EXAMPLES, 1]).astype(np.float32)
  return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
      batch_size, drop_remainder=True)


def train(config: DemoConfig) -> dict:
  """Trains to `config.train_steps`; returns the final step, loss, weights."""
  with tf.Graph().as_default():
    global_step = tf.compat.v1.train.get_or_create_global_step()
    step_read = hooks.global_step_read()
    iterator = tf.compat.v1.data.make_one_shot_iterator(
        make_dataset(config.batch_size))
    weights = tf.compat.v1.get_variable(
        "weights", [NUM_FEATURES, 1], initializer=tf.zeros_initializer())
    bias = tf.compat.v1.get_variable("bias", [],
                                     initializer=tf.zeros_initializer())
    optimizer = tf.compat.v1.train.GradientDescentOptimizer(
        config.learning_rate)
    iterations = tf.compat.v1.placeholder_with_default(
        tf.constant(config.steps_per_run, tf.int64), [], name="iterations")

    def loss_fn():
      x, y = iterator.get_next()
      return tf.reduce_mean(tf.square(tf.matmul(x, weights) + bias - y))

    def body(i, unused_loss, unused_step):
      loss = loss_fn()
      train_step = optimizer.minimize(loss, global_step=global_step)
      with tf.control_dependencies([train_step]):
        return i + 1, tf.identity(loss), global_step.read_value()

    # The loop starts after the hooks' global-step read, so they see the step
    # from before the run.
    with tf.control_dependencies([step_read]):
      _, last_loss, end_step = tf.while_loop(
          lambda i, *_: i < iterations, body,
          [tf.constant(0, tf.int64), tf.constant(0.0), step_read])
    tf.compat.v1.summary.scalar("loss", last_loss)
    summary_op = tf.compat.v1.summary.merge_all()

    hook_list = [
        hooks.StopAtStepHook(last_step=config.train_steps,
                             steps_per_run=config.steps_per_run,
                             iterations_per_run=iterations),
        hooks.CheckpointSaverHook(
            config.model_dir, save_steps=config.save_checkpoints_steps,
            steps_per_run=config.steps_per_run),
        hooks.StepCounterHook(
            every_n_steps=config.save_checkpoints_steps,
            output_dir=config.model_dir, steps_per_run=config.steps_per_run,
            batch_size=config.batch_size),
    ]
    writer = tf.compat.v1.summary.FileWriterCache.get(config.model_dir)
    loss_value = float("nan")
    with tf.compat.v1.train.MonitoredTrainingSession(
        checkpoint_dir=config.model_dir, hooks=hook_list,
        save_checkpoint_secs=None, save_checkpoint_steps=None,
        save_summaries_steps=None, save_summaries_secs=None,
        log_step_count_steps=None) as session:
      while not session.should_stop():
        loss_value, summary, step = session.run(
            [last_loss, summary_op, end_step])
        logging.info("step %d: loss = %.6f", step, loss_value)
        writer.add_summary(summary, step)
      final_step, final_w, final_b = session.run_step_fn(
          lambda step_context: step_context.session.run(
              [global_step, weights, bias]))
    writer.flush()
  return dict(step=int(final_step), loss=float(loss_value),
              weights=final_w, bias=float(final_b))


FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", os.path.join("runs", "hooks_demo"),
                    "Where checkpoints and events go (local path or gs://).")
flags.DEFINE_integer("train_steps", 2000, "Total steps to train to.")
flags.DEFINE_integer("steps_per_run", 100,
                     "SGD steps inside one Session.run (the device loop).")
flags.DEFINE_integer("save_checkpoints_steps", 500, "Save every N steps.")
flags.DEFINE_integer("batch_size", 32, "Examples per step.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = DemoConfig(
      model_dir=FLAGS.model_dir, train_steps=FLAGS.train_steps,
      steps_per_run=FLAGS.steps_per_run,
      save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      batch_size=FLAGS.batch_size, learning_rate=FLAGS.learning_rate)
  result = train(config)
  w_true, b_true = true_parameters()
  error = float(np.max(np.abs(result["weights"] - w_true)))
  logging.info("Done: step %d, loss %.6f, max |w - w_true| = %.4f, "
               "latest checkpoint %s", result["step"], result["loss"], error,
               tf.train.latest_checkpoint(config.model_dir))
  print(f"step={result['step']} loss={result['loss']:.6f} "
        f"max_weight_error={error:.4f} "
        f"checkpoint={tf.train.latest_checkpoint(config.model_dir)}")


def run():
  """Console-script entry point."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run()

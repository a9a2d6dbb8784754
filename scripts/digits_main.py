"""Train / evaluate / predict the digits classifier with the runner.

Flags follow Google's TPU reference models (mnist_tpu.py, resnet_main.py).
Locally (the default) the device loop is emulated on CPU, with `--num_cores`
virtual CPU replicas.

    python -m scripts.digits_main --model_dir=runs/digits --mode=train_and_eval
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
from absl import logging
import numpy as np

import tpu_harness as th
from scripts import digits

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", os.path.join("runs", "digits"),
                    "Checkpoints and events (local path or gs://).")
flags.DEFINE_enum("mode", "train_and_eval",
                  ["train", "eval", "train_and_eval", "predict"],
                  "What to do.")
flags.DEFINE_integer("train_steps", 2000, "Global step to train to.")
flags.DEFINE_integer("iterations_per_loop", 100,
                     "Steps per Session.run (device loop).")
flags.DEFINE_integer("train_batch_size", 64, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", 32, "Global eval batch size.")
flags.DEFINE_integer("eval_steps", None,
                     "Eval steps; default: the whole test split.")
flags.DEFINE_integer("save_checkpoints_steps", 500, "Save every N steps.")
flags.DEFINE_integer("num_cores", 1, "Replicas (virtual CPU devices here).")
flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate.")


def make_runner() -> th.Runner:
  config = th.RunConfig(
      model_dir=FLAGS.model_dir,
      iterations_per_loop=FLAGS.iterations_per_loop,
      save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      log_step_count_steps=FLAGS.iterations_per_loop,
      save_summary_steps=FLAGS.iterations_per_loop,
      tpu=th.TPUConfig(num_shards=FLAGS.num_cores))
  return th.Runner(digits.model_fn, config,
                   params={"learning_rate": FLAGS.learning_rate},
                   train_batch_size=FLAGS.train_batch_size,
                   eval_batch_size=FLAGS.eval_batch_size,
                   predict_batch_size=FLAGS.eval_batch_size)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runner = make_runner()
  if FLAGS.mode in ("train", "train_and_eval"):
    runner.train(digits.train_input_fn, max_steps=FLAGS.train_steps)
    if runner.preempted:
      logging.warning("Preempted: exiting; run again to resume.")
      return
  if FLAGS.mode in ("eval", "train_and_eval"):
    results = runner.evaluate(digits.eval_input_fn, steps=FLAGS.eval_steps)
    logging.info("Eval results: %s", results)
    print(f"global_step={results['global_step']} "
          f"accuracy={results['accuracy']:.4f} loss={results['loss']:.4f} "
          f"checkpoint={runner.latest_checkpoint()}")
  if FLAGS.mode == "predict":
    _, labels = digits.load()["test"]
    classes = np.array([p["classes"] for p in
                        runner.predict(digits.predict_input_fn)])
    print(f"predicted={len(classes)} "
          f"accuracy={np.mean(classes == labels):.4f}")


def run():
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()

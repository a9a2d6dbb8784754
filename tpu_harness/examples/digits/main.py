"""Train / evaluate / predict the digits classifier with the runner.

Flags follow Google's TPU reference models (mnist_tpu.py, resnet_main.py).

Where it runs:
  * neither --tpu nor --master: in this process, the device loop emulated on
    CPU with --num_cores virtual CPU replicas;
  * --tpu=NAME: the Cloud TPU API (cloud-tpu-client, TPUClusterResolver)
    resolves NAME, waits until it is READY and HEALTHY, and the graph runs
    on its worker over gRPC;
  * --tpu=grpc://HOST:PORT or --master=grpc://HOST:PORT: that TF server.
--use_tpu builds the loop with tf.compat.v1.tpu (TPU ops; needs a TPU
worker); --use_tpu=false runs the CPU emulation on whichever target.

    python -m scripts.digits_main --model_dir=runs/digits --mode=train_and_eval
    python -m scripts.digits_main --mode=check    # Would it run on a TPU?
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
from google.auth import credentials as google_credentials
import numpy as np
import tensorflow as tf

import tpu_harness as th
from tpu_harness.examples import _cli as cli
from tpu_harness.examples.digits import model as digits
from tpu_harness.tpu import cluster

FLAGS = flags.FLAGS
# Cloud TPU.
flags.DEFINE_string("tpu", None, "Cloud TPU name, or grpc://HOST:PORT of a TPU "
                    "worker. Default: run locally.")
flags.DEFINE_string("tpu_zone", None, "Zone of --tpu (default: this VM's).")
flags.DEFINE_string("gcp_project", None,
                    "Project of --tpu (default: this VM's).")
flags.DEFINE_string("master", None, "Explicit grpc://HOST:PORT session target "
                    "(instead of --tpu).")
flags.DEFINE_bool("use_tpu", False, "Build the loop with TPU ops "
                  "(tf.compat.v1.tpu); false: CPU emulation of the loop.")
flags.DEFINE_enum("tpu_api_credentials", "default", ["default", "anonymous"],
                  "Credentials for the Cloud TPU API: application default, "
                  "or none (for an emulated API).")
flags.DEFINE_integer("tpu_wait_secs", 600, "How long to wait for --tpu to be "
                     "READY and HEALTHY.", lower_bound=0)
# Model and data.
flags.DEFINE_string("model_dir", os.path.join("runs", "digits"),
                    "Checkpoints and events (local path or gs://).")
flags.DEFINE_string("data_dir", None, "Directory holding digits.csv.gz "
                    "(local or gs://); default: the copy in tpu_harness/examples/digits/data.")
flags.DEFINE_enum("mode", "train_and_eval",
                  ["train", "eval", "train_and_eval", "predict", "check"],
                  "What to do. check: whether the model's train, eval and "
                  "predict steps can run on a TPU, found out on CPU by "
                  "compiling them with XLA (no TPU needed).")
flags.DEFINE_bool("check_tpu", True, "With --use_tpu, run the TPU "
                  "compatibility check (as --mode=check) before building "
                  "each TPU loop.")
flags.DEFINE_integer("train_steps", 2000, "Global step to train to.",
                     lower_bound=1, upper_bound=2**62)
flags.DEFINE_integer("iterations_per_loop", 100,
                     "Steps per Session.run (device loop).", lower_bound=1)
flags.DEFINE_integer("train_batch_size", 64, "Global training batch size.",
                     lower_bound=1)
flags.DEFINE_integer("eval_batch_size", 32, "Global eval batch size.",
                     lower_bound=1)
flags.DEFINE_integer("eval_steps", None,
                     "Eval steps; default: the whole test split.",
                     lower_bound=1)
flags.DEFINE_integer("save_checkpoints_steps", 500, "Save every N steps.",
                     lower_bound=1)
flags.DEFINE_enum("resume_input", "exact", ["exact", "skip", "restart"],
                  "What resumed training feeds first: exactly the next "
                  "batch (restoring the input position saved with the "
                  "checkpoint), the next batch after reading and dropping "
                  "those already trained on, or the input from its start "
                  "(as TPUEstimator did).")
flags.DEFINE_list("pod_hosts", [], "A pod's hosts, host:port of each one's "
                  "TF server (task h of job 'worker' = the h-th); each runs "
                  "num_cores / hosts replicas and reads its own shard of "
                  "the input. `python -m scripts.local_pod` starts them on "
                  "this machine.")
flags.DEFINE_integer("num_cores", 1, "Replicas: TPU cores, or virtual CPU "
                     "devices in the emulation.", lower_bound=1)
flags.DEFINE_float("learning_rate", 0.01, "Adam learning rate.")


@flags.multi_flags_validator(
    ["tpu", "master", "use_tpu", "tpu_zone", "gcp_project"],
    message="--tpu and --master exclude each other; --use_tpu needs --tpu or "
            "--master; --tpu_zone and --gcp_project need a --tpu name.")
def _check_target(values):
  named_tpu = values["tpu"] and not values["tpu"].startswith("grpc://")
  return (not (values["tpu"] and values["master"])
          and not (values["use_tpu"] and not (values["tpu"]
                                              or values["master"]))
          and not ((values["tpu_zone"] or values["gcp_project"])
                   and not named_tpu))


@flags.multi_flags_validator(
    ["train_batch_size", "eval_batch_size", "num_cores"],
    message="--train_batch_size and --eval_batch_size must be multiples of "
            "--num_cores.")
def _check_batches(values):
  return (values["train_batch_size"] % values["num_cores"] == 0
          and values["eval_batch_size"] % values["num_cores"] == 0)


@flags.validator("model_dir", message="--model_dir must be a non-empty path "
                 "(local or gs://) without * ? [ or a backslash.")
def _check_model_dir(value):
  return bool(value and value.strip()) and not any(
      c in value for c in "*?[\\")


@flags.validator("data_dir", message="--data_dir must be a directory holding "
                 "digits.csv.gz (local or gs://); leave it unset to use the "
                 "copy in tpu_harness/examples/digits/data.")
def _check_data_dir(value):
  if value is None:
    return True
  try:
    return tf.io.gfile.exists(os.path.join(value, "digits.csv.gz"))
  except tf.errors.OpError:
    return False


def make_runner(master: str) -> th.Runner:
  config = th.RunConfig(
      model_dir=FLAGS.model_dir,
      iterations_per_loop=FLAGS.iterations_per_loop,
      save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      log_step_count_steps=FLAGS.iterations_per_loop,
      save_summary_steps=FLAGS.iterations_per_loop,
      master=master,
      tpu=th.TPUConfig(num_shards=FLAGS.num_cores,
                       hosts=tuple(FLAGS.pod_hosts)),
      check_tpu_compatibility=FLAGS.check_tpu,
      resume_input=FLAGS.resume_input)
  params = {"learning_rate": FLAGS.learning_rate,
            "model_dir": FLAGS.model_dir,
            "summary_steps": FLAGS.iterations_per_loop}
  if FLAGS.data_dir:
    params["data_file"] = os.path.join(FLAGS.data_dir, "digits.csv.gz")
  device_loop = None
  if FLAGS.use_tpu:
    device_loop = th.TpuLoop(num_shards=FLAGS.num_cores,
                             iterations_per_loop=FLAGS.iterations_per_loop,
                             num_hosts=max(1, len(FLAGS.pod_hosts)))
  return th.Runner(digits.model_fn, config, params=params,
                   train_batch_size=FLAGS.train_batch_size,
                   eval_batch_size=FLAGS.eval_batch_size,
                   predict_batch_size=FLAGS.eval_batch_size,
                   device_loop=device_loop)


def resolve() -> str:
  """The session target for --tpu / --master; exits with a message if the
  TPU cannot be found, is not ready, or cannot be reached."""
  credentials = ("default" if FLAGS.tpu_api_credentials == "default" else
                 google_credentials.AnonymousCredentials())
  try:
    return cluster.resolve_master(
        tpu=FLAGS.tpu, zone=FLAGS.tpu_zone, project=FLAGS.gcp_project,
        master=FLAGS.master, credentials=credentials,
        wait_secs=FLAGS.tpu_wait_secs)
  except (th.TPUNotFoundError, th.TPUNotReadyError,
          th.TPUUnreachableError, ValueError) as error:
    sys.exit(f"error: {error}")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.mode == "check":  # On this host's CPU; no TPU is resolved.
    sys.exit(check(make_runner("")))
  runner = make_runner(resolve())
  try:
    _run_mode(runner)
  except (th.NoTPUError, th.TPUCompatibilityError,
          NotImplementedError) as error:
    # Raised before any graph of the loop is built (predict on a pod: not
    # supported).
    sys.exit(f"error: {error}")
  except (th.HostUnavailableError, th.ModelDirBusyError,
          th.LeaseLostError) as error:
    # What the machines or another trainer did; the message says what to
    # do, the log above says what happened.
    sys.exit(f"error: {type(error).__name__}: {error}")


def check(runner: th.Runner) -> int:
  """--mode=check: prints each reason the model cannot run on a TPU (to
  stderr) or that it passed; returns the exit status."""
  problems = runner.check_tpu_compatibility(
      train_input_fn=digits.train_input_fn,
      eval_input_fn=digits.eval_input_fn,
      predict_input_fn=digits.predict_input_fn)
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  if problems:
    print(f"TPU compatibility check: {len(problems)} problem(s)")
    return 1
  print("TPU compatibility check: passed (train, eval, predict steps "
        "compiled with XLA on CPU)")
  return 0


def _run_mode(runner: th.Runner) -> None:
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
    data_file = (os.path.join(FLAGS.data_dir, "digits.csv.gz")
                 if FLAGS.data_dir else digits.DATA_FILE)
    _, labels = digits.load(data_file)["test"]
    classes = np.array([p["classes"] for p in
                        runner.predict(digits.predict_input_fn)])
    print(f"predicted={len(classes)} "
          f"accuracy={np.mean(classes == labels):.4f}")


def run():
  """Console-script entry point."""
  cli.run(main, __name__)


if __name__ == "__main__":
  run()

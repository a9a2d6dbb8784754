"""TensorFlow work on gs:// paths, run in a subprocess with the emulator's env.

  python tests/support/gcs_worker.py SCENARIO GS_PATH [ARG]

Prints one JSON line with what it saw; on an error prints
{"error": type, "message": ...} and exits 3.
"""

import json
import os
import sys
import traceback

# Run as a script: `support` is a package of tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top

import hooks  # pylint: disable=g-import-not-at-top
import tpu_harness as th  # pylint: disable=g-import-not-at-top
from support.runner_models import linear_model_fn  # pylint: disable=g-import-not-at-top
from support.runner_models import train_input_fn  # pylint: disable=g-import-not-at-top
from support.tf_fixtures import RecordingListener  # pylint: disable=g-import-not-at-top
from support.tf_fixtures import build_loop_graph  # pylint: disable=g-import-not-at-top
from support.tf_fixtures import run_loops  # pylint: disable=g-import-not-at-top


def _runner(path, keep):
  return th.Runner(linear_model_fn, th.RunConfig(
      path, iterations_per_loop=5, save_checkpoints_steps=5,
      keep_checkpoint_max=keep, save_summary_steps=5,
      log_step_count_steps=5), train_batch_size=8, eval_batch_size=8)


def train(path, max_steps):
  listener = RecordingListener()
  runner = _runner(path, keep=2)
  runner.train(train_input_fn(), max_steps=int(max_steps),
               saving_listeners=[listener])
  tf.compat.v1.summary.FileWriterCache.clear()
  losses = []
  for events in tf.io.gfile.glob(path + "/events.*"):
    for event in tf.compat.v1.train.summary_iterator(events):
      losses += [(event.step, v.simple_value) for v in event.summary.value
                 if v.tag == "loss"]
  return {"latest": tf.train.latest_checkpoint(path),
          "saved": listener.saved_steps(),
          "loss_steps": sorted(step for step, _ in losses),
          "graph": tf.io.gfile.exists(path + "/graph.pbtxt")}


def evaluate(path, unused):
  results = _runner(path, keep=2).evaluate(train_input_fn(), steps=2)
  tf.compat.v1.summary.FileWriterCache.clear()
  return {"results": results,
          "eval_events": len(tf.io.gfile.glob(path + "/eval/events.*"))}


def hook(path, unused):
  """Our CheckpointSaverHook alone, with plain MonitoredTrainingSession."""
  with tf.Graph().as_default():
    graph = build_loop_graph(10)
    listener = RecordingListener()
    saver_hook = hooks.CheckpointSaverHook(
        path, save_steps=20, steps_per_run=10, listeners=[listener],
        saver=tf.compat.v1.train.Saver(max_to_keep=2))
    run_loops([saver_hook], graph, [10] * 5)
  return {"saved": listener.saved_steps(),
          "latest": tf.train.latest_checkpoint(path),
          "w": float(tf.train.load_checkpoint(
              tf.train.latest_checkpoint(path)).get_tensor("w"))}


SCENARIOS = {"train": train, "evaluate": evaluate, "hook": hook}


def main():
  scenario, path = sys.argv[1], sys.argv[2]
  arg = sys.argv[3] if len(sys.argv) > 3 else None
  try:
    result = SCENARIOS[scenario](path, arg)
  except Exception as error:  # pylint: disable=broad-except
    traceback.print_exc()
    print(json.dumps({"error": type(error).__name__,
                      "message": str(error)}), flush=True)
    return 3
  print(json.dumps(result, default=str), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

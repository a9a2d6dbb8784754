"""The conv program under tf.compat.v1.disable_v2_behavior(), as ResNet
programs for Cloud TPU run (tests/programs/resnet_style.py does too):
reference variables, v1 control flow; run as a script.

  python tests/support/estimator_v1_worker.py MODEL_DIR CORES

Prints one JSON line: host_call steps, eval results, predictions, export.
"""

import json
import os
import sys

# Run as a script: `support` is a package of tests/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow.compat.v1 as tf

tf.disable_v2_behavior()

from support import estimator_programs as programs  # pylint: disable=g-import-not-at-top,wrong-import-position
from support.tf_fixtures import event_records  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  model_dir, cores = sys.argv[1], int(sys.argv[2])
  estimator = programs.estimator(model_dir, cores)
  estimator.train(programs.input_fn, max_steps=8)
  results = estimator.evaluate(programs.input_fn, steps=2)
  predictions = list(estimator.predict(programs.predict_input_fn))
  exported = estimator.export_saved_model(
      os.path.join(model_dir, "export"), programs.serving_input_receiver_fn)
  tf.summary.FileWriterCache.clear()
  steps = sorted(e.step for e in event_records(
      os.path.join(model_dir, "host_call")) if e.HasField("summary")
                 for v in e.summary.value if v.tag == "learning_rate")
  print(json.dumps({"steps": steps, "global_step": results["global_step"],
                    "accuracy": results["accuracy"],
                    "predictions": len(predictions),
                    "exported": os.path.isdir(exported.decode())}))


if __name__ == "__main__":
  main()

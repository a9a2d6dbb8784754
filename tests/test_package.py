"""The package import: legacy Keras active for graph-mode layers."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_importing_tpu_harness_makes_legacy_layers_work():
  # In a fresh process: TF reads TF_USE_LEGACY_KERAS at the first use of
  # tf.compat.v1.layers / tf.keras, which must come after the import.
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  code = (
      "import tensorflow.compat.v1 as tf\n"
      "import tpu_harness\n"
      "with tf.Graph().as_default():\n"
      "  y = tf.layers.Conv2D(2, 3)(tf.zeros([1, 5, 5, 1]))\n"
      "  z = tf.keras.layers.Dense(4)(tf.zeros([2, 3]))\n"
      "  n = tf.layers.BatchNormalization()(y, training=True)\n"
      "  print(y.shape, z.shape, len(tf.get_collection("
      "tf.GraphKeys.UPDATE_OPS)))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "(1, 3, 3, 2) (2, 4) 2"

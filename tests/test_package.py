"""The package import: legacy Keras active for graph-mode layers."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.system
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


@pytest.mark.system
def test_the_wheel_installs_our_packages_only_and_its_entry_points_run(
    tmp_path):
  wheels = tmp_path / "wheels"
  built = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps",
       "--no-build-isolation", "-w", str(wheels), ROOT],
      capture_output=True, text=True, timeout=600, check=False)
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = wheels.glob("tpu_harness-*.whl")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    entry_text = archive.read(entry_points).decode()
  tops = {name.split("/")[0] for name in names
          if not name.split("/")[0].endswith((".dist-info", ".data"))}
  assert tops == {"hooks", "tpu_harness"}
  assert "tpu_harness/examples/digits/data/digits.csv.gz" in names
  site = tmp_path / "site"
  installed = subprocess.run(
      [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
       "--target", str(site), str(wheel)],
      capture_output=True, text=True, timeout=600, check=False)
  assert installed.returncode == 0, installed.stderr[-3000:]
  # Outside the repository, with the wheel's packages first on the path:
  # each console script's target imports and answers --helpshort.
  env = dict(os.environ, PYTHONPATH=str(site))
  for line in entry_text.splitlines():
    if "=" not in line:
      continue
    name, target = (part.strip() for part in line.split("=", 1))
    module, function = target.split(":")
    code = (f"import sys, {module} as m; "
            f"assert m.__file__.startswith({str(site)!r}), m.__file__; "
            f"sys.argv = [{name!r}, '--helpshort']; m.{function}()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path,
                            env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    # absl prints the flags and exits (with 1) on --helpshort.
    assert "Traceback" not in result.stderr, (name, result.stderr[-3000:])
    assert "--" in result.stdout, (name, result.stdout[-2000:])

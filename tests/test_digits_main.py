"""The main job's script, run as README runs it (in a subprocess)."""

import os
import re
import subprocess
import sys

import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*flags):
  result = subprocess.run([sys.executable, "-m", "scripts.digits_main",
                           *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


def test_train_and_eval_then_predict(tmp_path):
  model_dir = str(tmp_path / "digits")
  out = _run(f"--model_dir={model_dir}", "--train_steps=600",
             "--iterations_per_loop=100", "--num_cores=2").stdout
  match = re.search(r"global_step=600 accuracy=([0-9.]+)", out)
  assert match and float(match.group(1)) > 0.9, out
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-600")
  assert tf.io.gfile.glob(os.path.join(model_dir, "eval", "events.*"))
  assert tf.io.gfile.exists(os.path.join(model_dir, "graph.pbtxt"))
  out = _run(f"--model_dir={model_dir}", "--mode=predict",
             "--num_cores=2").stdout
  assert "predicted=288 " in out


def test_bad_flag_value_fails_before_training(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "scripts.digits_main",
       f"--model_dir={tmp_path}", "--train_batch_size=63", "--num_cores=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert "`train_batch_size` (63) must be a multiple of `num_shards` (2)" in (
      result.stderr)
  assert not os.listdir(tmp_path)

"""scripts/local_pod.py: the README's pod command trains, checkpoints,
resumes and evaluates the digits model on two emulated hosts."""

import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

pytestmark = pytest.mark.system

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(model_dir, steps):
  return subprocess.run(
      [sys.executable, "-m", "scripts.local_pod", "--hosts=2",
       "--cores_per_host=2", f"--model_dir={model_dir}",
       f"--train_steps={steps}", "--iterations_per_loop=50",
       "--save_checkpoints_steps=50"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def test_two_hosts_train_resume_and_evaluate_the_digits_model(tmp_path):
  first = _run(tmp_path, 100)
  assert first.returncode == 0, first.stderr[-3000:]
  assert re.search(r"pod: 2 hosts x 2 cores at localhost:\d+,localhost:\d+",
                   first.stdout), first.stdout
  assert "global_step=100 accuracy=" in first.stdout, first.stdout
  assert "Training from step 0 to 100, 50 steps per loop, on grpc://" in (
      first.stderr)
  second = _run(tmp_path, 200)
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Training from step 100 to 200" in second.stderr
  accuracy = float(re.search(r"global_step=200 accuracy=([0-9.]+)",
                             second.stdout).group(1))
  assert accuracy > 0.8
  names = {name for name, _ in tf.train.list_variables(str(tmp_path))}
  assert "tpu_harness_input/host_1/iterator_state" in names

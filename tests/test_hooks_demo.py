"""The hooks demo trains a real model, checkpoints, and resumes."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness.examples import hooks_demo
from support.tf_fixtures import checkpoint_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_trains_to_the_true_weights_and_resumes(tmp_path):
  model_dir = str(tmp_path / "model")
  config = hooks_demo.DemoConfig(model_dir=model_dir, train_steps=250,
                                 steps_per_run=100, save_checkpoints_steps=100)
  first = hooks_demo.train(config)
  assert first["step"] == 250  # Exactly, though 250 % 100 != 0.
  assert checkpoint_steps(model_dir) == [0, 100, 200, 250]

  second = hooks_demo.train(
      hooks_demo.DemoConfig(model_dir=model_dir, train_steps=420,
                            steps_per_run=100, save_checkpoints_steps=100))
  assert second["step"] == 420
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  assert reader.get_tensor("global_step") == 420
  w_true, b_true = hooks_demo.true_parameters()
  np.testing.assert_allclose(reader.get_tensor("weights"), w_true, atol=0.01)
  np.testing.assert_allclose(reader.get_tensor("bias"), b_true, atol=0.01)
  assert second["loss"] < 1e-3


@pytest.mark.parametrize("field,value", [
    ("train_steps", 0), ("steps_per_run", -1), ("batch_size", 2.5),
    ("save_checkpoints_steps", True), ("learning_rate", 0.0),
    ("model_dir", "")])
def test_config_rejects_bad_values(field, value):
  kwargs = dict(model_dir="/tmp/x")
  kwargs[field] = value
  with pytest.raises(ValueError, match=f"`{field}` \\({value!r}\\)"):
    hooks_demo.DemoConfig(**kwargs)


@pytest.mark.system
def test_script_runs_from_the_command_line(tmp_path):
  model_dir = str(tmp_path / "cli")
  result = subprocess.run(
      [sys.executable, "-m", "tpu_harness.examples.hooks_demo", f"--model_dir={model_dir}",
       "--train_steps=30", "--steps_per_run=7", "--save_checkpoints_steps=10"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "step=30 " in result.stdout
  assert tf.train.latest_checkpoint(model_dir).endswith("model.ckpt-30")

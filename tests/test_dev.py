"""scripts/dev.py: the lock digest, argument handling, signals reaching the
job (no installs: the environment exists when the suite runs)."""

import os
import shutil
import signal
import subprocess
import sys
import time

from scripts import dev
import pytest
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order


def _copy_inputs(tmp_path):
  for name in dev.LOCK_INPUTS:
    shutil.copy(dev.ROOT / name, tmp_path / name)


def test_digest_changes_with_each_lock_input(tmp_path):
  _copy_inputs(tmp_path)
  base = dev.lock_digest(tmp_path)
  assert dev.lock_digest(tmp_path) == base
  for name in dev.LOCK_INPUTS:
    original = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(original + b"\n# changed\n")
    assert dev.lock_digest(tmp_path) != base, name
    (tmp_path / name).write_bytes(original)
  assert dev.lock_digest(tmp_path) == base


def test_unknown_job_is_a_usage_error(capsys):
  assert dev.main(["dev.py", "bogus"]) == 2
  assert dev.main(["dev.py"]) == 2
  err = capsys.readouterr().err
  assert "must be one of ['test', 'train'], got ['bogus']" in err


def test_venv_dir_honours_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("TPU_HARNESS_VENV", str(tmp_path / "env"))
  assert dev.venv_dir() == tmp_path / "env"


def test_lock_pins_tensorflow_and_cloud_tpu_client_together():
  pins = dict(line.split("==") for line in
              (dev.ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#"))
  assert pins["tensorflow_cpu"].startswith("2.21.")
  assert pins["cloud-tpu-client"] == "0.10"
  assert "absl-py" in pins and "pytest" in pins


def _trainer_processes(model_dir):
  """Pids of live processes whose command line mentions `model_dir`."""
  found = []
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/cmdline", "rb") as f:
        cmdline = f.read().decode(errors="replace")
      with open(f"/proc/{pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
      continue
    if model_dir in cmdline and state != "Z":
      found.append(int(pid))
  return found


@pytest.mark.system
def test_sigterm_to_the_main_command_reaches_the_trainer(tmp_path):
  model_dir = str(tmp_path / "digits")
  process = subprocess.Popen(
      [sys.executable, str(dev.ROOT / "scripts" / "dev.py"), "train",
       f"--model_dir={model_dir}", "--train_steps=1000000",
       "--iterations_per_loop=10", "--save_checkpoints_steps=50",
       "--mode=train"],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 300
    while not os.path.isdir(model_dir) or not [
        p for p in contents.scan(model_dir).checkpoints
        if contents.checkpoint_step(p) >= 50]:
      assert process.poll() is None, process.communicate()
      assert time.monotonic() < deadline, "no checkpoint"
      time.sleep(0.1)
    # dev.py replaced itself with the trainer: the same process.
    assert _trainer_processes(model_dir) == [process.pid]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
  assert process.returncode == 0, err[-3000:]
  assert "Received SIGTERM: finishing the current loop" in err
  assert "Stopped by SIGTERM at step" in err
  assert _trainer_processes(model_dir) == []
  final = restore_order.latest_restorable(model_dir)
  assert restore_order.checkpoint_global_step(final) >= 50

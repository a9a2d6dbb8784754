"""scripts/local_pod.py: the README's pod command trains, checkpoints,
resumes and evaluates the digits model on two emulated hosts."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

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


def _accepts(address):
  host, port = address.split(":")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
    return True
  except OSError:
    return False


def _tail(log):
  log.flush()
  log.seek(0)
  return log.read()[-20000:]


def test_sigterm_to_the_launcher_saves_releases_and_stops_the_servers(
    tmp_path):
  """A supervisor's SIGTERM reaches the trainer (which saves as on a
  preemption and gives up the model_dir), then the servers stop."""
  model_dir = str(tmp_path / "model")
  # Files, not pipes: nobody reads them before the launcher ends (and
  # the trainer, not the launcher, may be the last to hold them).
  out = open(tmp_path / "launcher.out", "w+")  # pylint: disable=consider-using-with
  log = open(tmp_path / "launcher.log", "w+")  # pylint: disable=consider-using-with
  launcher = subprocess.Popen(
      [sys.executable, "-m", "scripts.local_pod", "--hosts=2",
       "--cores_per_host=1", f"--model_dir={model_dir}",
       "--train_steps=1000000", "--iterations_per_loop=20",
       "--save_checkpoints_steps=20"],
      cwd=ROOT, stdout=out, stderr=log, text=True)
  try:
    deadline = time.monotonic() + 300
    while tf.train.latest_checkpoint(model_dir) is None:
      assert launcher.poll() is None, _tail(log)
      assert time.monotonic() < deadline, "no checkpoint within 300 s"
      time.sleep(0.5)
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=300)
  finally:
    if launcher.poll() is None:
      launcher.kill()
  stdout, stderr = _tail(out), _tail(log)
  assert launcher.returncode == 0, stderr[-3000:]
  assert "Preempted: exiting; run again to resume." in stderr, stderr[-3000:]
  hosts = re.search(r"at (localhost:\d+),(localhost:\d+)", stdout).groups()
  assert not any(_accepts(address) for address in hosts), hosts
  saved = tf.train.load_checkpoint(model_dir).get_tensor("global_step")
  resumed = subprocess.run(
      [sys.executable, "-m", "scripts.local_pod", "--hosts=2",
       "--cores_per_host=1", f"--model_dir={model_dir}",
       f"--train_steps={saved + 20}", "--iterations_per_loop=20",
       "--mode=train"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Training from step {saved} to {saved + 20}" in resumed.stderr

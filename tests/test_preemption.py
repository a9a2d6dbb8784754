"""SIGTERM or SIGINT: finish the loop, save, call listeners' end, exit 0;
twice: die."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order
from tpu_harness._run.preemption import PreemptionWatcher

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _wait_for(path, process, timeout=120):
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.01)


def _wait_for_step(model_dir, step, process, timeout=120):
  """Waits until a checkpoint at `step` or later is in `model_dir`."""
  deadline = time.monotonic() + timeout
  while True:
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, f"no checkpoint at step {step}"
    latest = tf.train.latest_checkpoint(model_dir) if os.path.exists(
        os.path.join(model_dir, "checkpoint")) else None
    if latest and contents.checkpoint_step(latest) >= step:
      return
    time.sleep(0.01)


def _start(model_dir, markers, *extra):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  return subprocess.Popen(
      [sys.executable, os.path.join(TESTS, "support", "reliability_worker.py"),
       model_dir, "100000", "--markers", markers, *extra],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT (Ctrl-C)"])
@pytest.mark.system
def test_first_signal_stops_cleanly_with_a_checkpoint(tmp_path, signum):
  model_dir, markers = str(tmp_path / "model"), str(tmp_path)
  process = _start(model_dir, markers)
  _wait_for(os.path.join(markers, "began"), process)
  _wait_for_step(model_dir, 10, process)
  process.send_signal(signum)
  out, err = process.communicate(timeout=120)
  name = signal.Signals(signum).name
  assert process.returncode == 0, err[-3000:]
  assert f"Received {name}: finishing the current loop" in err
  assert f"Stopped by {name} at step" in err
  assert "KeyboardInterrupt" not in err
  final = int(out.split("FINAL_STEP=")[1].split()[0])
  assert "PREEMPTED=True" in out
  assert 10 <= final < 100000
  # The listener's end() ran, at the step that was saved last.
  with open(os.path.join(markers, "end")) as f:
    assert int(f.read()) == final
  latest = tf.train.latest_checkpoint(model_dir)
  assert contents.checkpoint_step(latest) == final
  assert restore_order.unreadable_reason(latest) is None


@pytest.mark.system
def test_second_sigterm_exits_at_once(tmp_path):
  model_dir, markers = str(tmp_path / "model"), str(tmp_path)
  process = _start(model_dir, markers, "--hold_in_end")
  _wait_for_step(model_dir, 10, process)
  process.send_signal(signal.SIGTERM)
  # The first SIGTERM led to the final save and to listeners' end(), which
  # holds the process there; the second must end it without waiting.
  _wait_for(os.path.join(markers, "in_end"), process)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=30)
  assert process.returncode == -signal.SIGTERM, err[-3000:]
  assert not os.path.exists(os.path.join(markers, "release"))
  latest = tf.train.latest_checkpoint(model_dir)
  with open(os.path.join(markers, "end")) as f:
    assert contents.checkpoint_step(latest) == int(f.read())
  assert restore_order.unreadable_reason(latest) is None


def test_watcher_sets_flag_and_arms_default_then_restores():
  before = signal.getsignal(signal.SIGUSR1)
  with PreemptionWatcher(signals=(signal.SIGUSR1,)) as watcher:
    assert not watcher.requested
    os.kill(os.getpid(), signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not watcher.requested and time.monotonic() < deadline:
      time.sleep(0.001)
    assert watcher.requested and watcher.signal_name == "SIGUSR1"
    # A second signal would now take the default action (terminate).
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
  assert signal.getsignal(signal.SIGUSR1) == before


def test_watcher_off_the_main_thread_installs_nothing():
  import threading  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGTERM)
  seen = []

  def run():
    with PreemptionWatcher() as watcher:
      seen.append(watcher.requested)

  thread = threading.Thread(target=run)
  thread.start()
  thread.join()
  assert seen == [False]
  assert signal.getsignal(signal.SIGTERM) == before

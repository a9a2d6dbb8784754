"""SIGKILL at random moments, mid-save included: nothing is lost.

A worker trains with a save after every 2-step loop (8 MB per checkpoint) and
is killed at random times, again and again. After every kill the state
file's latest checkpoint must read back completely, and a restart must
resume from it. After the last restart runs to the end, the weights must
equal those of a run that was never interrupted (the input is shuffled with
a fixed seed; a resumed run restores the input position saved with the
checkpoint, or with resume_input='skip' reads and drops the steps already
trained on).
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order

pytestmark = pytest.mark.system

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
MAX_STEPS = 600
KILLS = 10


def _command(model_dir, markers, extra=()):
  return [sys.executable, os.path.join(TESTS, "support", "reliability_worker.py"),
          model_dir, str(MAX_STEPS), "--markers", markers, *extra]


def _env():
  return dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))


def _final_weights(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {name: reader.get_tensor(name) for name in ("w", "ballast",
                                                     "global_step")}


def _start(model_dir, markers, extra=()):
  """Starts a worker; returns it once its hooks began (TF imported)."""
  process = subprocess.Popen(_command(model_dir, markers, extra), env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  began = os.path.join(markers, "began")
  deadline = time.monotonic() + 120
  while not os.path.exists(began) and process.poll() is None:
    assert time.monotonic() < deadline
    time.sleep(0.005)
  return process


def _run_to_end(model_dir, markers, extra=()):
  """Runs a worker to MAX_STEPS; returns seconds from begin() to exit."""
  process = _start(model_dir, markers, extra)
  started = time.monotonic()
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
  assert f"FINAL_STEP={MAX_STEPS} " in out
  return time.monotonic() - started


@pytest.mark.parametrize("extra,kills", [
    ((), KILLS),
    (("--async_checkpoints",), 6),
    (("--resume_input=skip",), 4),
], ids=["sync saves", "async saves", "skip mode"])
def test_random_sigkills_lose_nothing(tmp_path, extra, kills):
  rng = random.Random(20261125)
  reference = str(tmp_path / "reference")
  os.makedirs(tmp_path / "m0")
  duration = _run_to_end(reference, str(tmp_path / "m0"), extra)

  model_dir = str(tmp_path / "killed")
  survived, mid_save, steps_at_kill = 0, 0, []
  for kill in range(kills):
    markers = tmp_path / f"m{kill + 1}"
    os.makedirs(markers)
    process = _start(model_dir, str(markers), extra)
    if process.poll() is not None:
      break  # Finished before we could kill it.
    # Anywhere from session creation (the step-0 / resume save) onward; on
    # average the kills use up half of an uninterrupted run.
    time.sleep(rng.uniform(0.0, duration / kills))
    process.send_signal(signal.SIGKILL)
    process.communicate()
    if process.returncode != -signal.SIGKILL:
      break  # It had already finished.
    if contents.scan(model_dir).leftovers:
      mid_save += 1  # The kill interrupted a save in progress.
    latest = (tf.train.latest_checkpoint(model_dir)
              if os.path.exists(os.path.join(model_dir, "checkpoint"))
              else None)
    if latest is not None:
      assert restore_order.unreadable_reason(latest) is None, latest
      steps_at_kill.append(contents.checkpoint_step(latest))
    survived += 1

  markers = tmp_path / "last"
  os.makedirs(markers)
  _run_to_end(model_dir, str(markers), extra)
  final, expected = _final_weights(model_dir), _final_weights(reference)
  assert final["global_step"] == expected["global_step"] == MAX_STEPS
  np.testing.assert_allclose(final["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(final["ballast"], expected["ballast"],
                             rtol=1e-6)
  assert survived >= kills // 2, (survived, steps_at_kill)
  assert steps_at_kill == sorted(steps_at_kill)  # Progress is never lost.
  print(f"\nUninterrupted run: {duration:.2f} s after begin(). "
        f"Survived {survived} SIGKILLs ({mid_save} interrupted a save in "
        f"progress); latest checkpoint steps after each: {steps_at_kill}")

"""scripts/bench/loop.py runs end to end (tiny sizes; no timing asserted)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_prints_every_variant_and_the_ratios(optimizer):
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.loop", "--steps=200",
       "--repeats=1", "--loops=1,100", f"--optimizer={optimizer}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"MLP 64-256-10, {optimizer}" in result.stdout
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  for name in ("raw", "runner/1", "keras/1", "runner/100", "keras/100",
               "mts", "runner/100 / raw", "runner/100 / keras/100",
               "runner/1 / mts"):
    assert name in rows, (name, result.stdout)


def test_steps_that_do_not_fit_the_loops_are_refused():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.loop", "--steps=150",
       "--repeats=1", "--loops=1,100"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, check=False)
  assert result.returncode != 0
  assert "--steps must be a multiple of every --loops value" in result.stderr

"""scripts/bench/adam_kernel.py runs end to end and its two Adams agree (tiny
sizes; no timing asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_every_update_and_the_two_adams_agree():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.adam_kernel", "--shape=8,4",
       "--steps=20", "--repeats=1"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  for name in ("fused", "elementwise", "sgd", "fused / elementwise"):
    assert name in rows, (name, result.stdout)
  assert ("fused and elementwise give the same variable after 20 updates: "
          "yes") in result.stdout

"""scripts/bench/checkpoint.py runs end to end (tiny sizes; no timing
asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_stalls_and_ratios():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.checkpoint", "--megabytes=1",
       "--saves=1", "--repeats=1", "--runs_between_saves=4", "--matrix=16"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  for name in ("sync", "async", "async stall / sync stall",
               "sync save MB/s / file copy MB/s"):
    assert name in rows, (name, result.stdout)

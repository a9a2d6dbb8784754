"""scripts/bench/pod.py runs end to end (tiny sizes; no timing asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_a_row_per_pod_size_against_one_process():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.pod", "--hosts=1,2",
       "--steps=20", "--iterations_per_loop=10", "--per_host_batch=8"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  assert rows == ["hosts", "1", "2"], result.stdout
  ratios = [float(line.split("|")[5]) for line in result.stdout.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
  assert all(ratio > 0 for ratio in ratios), result.stdout

"""scripts/bench/infeed.py runs end to end (tiny sizes; no timing
asserted)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_both_batch_sizes_with_ratios():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.infeed", "--repeats=1",
       "--steps=4", "--iterations_per_loop=2", "--batch_size=2"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line for line in result.stdout.splitlines()
          if line.startswith("| large") or line.startswith("| small")]
  assert len(rows) == 2, result.stdout
  assert re.search(r"\| >= 0.9 \| (yes|NO) \|$", rows[0]), rows[0]

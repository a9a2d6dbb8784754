"""scripts/bench/restore.py runs end to end (tiny sizes; no timing
asserted)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_read_ratios_and_the_target_line():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.restore", "--megabytes=4",
       "--repeats=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  assert rows[1:] == ["train", "evaluate", "verification (baseline)"], (
      result.stdout)
  assert re.search(r"worst start-up read [0-9.]+x the checkpoint; target "
                   r"<= 1.1x: (met|NOT met)", result.stdout), result.stdout

"""scripts/bench/end_of_train.py runs end to end (tiny sizes; no timing
asserted)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_both_variants_and_the_target_line():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.end_of_train", "--runs=1",
       "--loops=2", "--iterations_per_loop=2", "--batch_size=4",
       "--image_work=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  assert rows[1:] == ["harness", "autotune"], result.stdout
  assert re.search(r"harness: max end stall [0-9.]+ s; target <= 0.2 s: "
                   r"(met|NOT met)", result.stdout), result.stdout

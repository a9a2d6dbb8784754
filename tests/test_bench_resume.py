"""scripts/bench/resume.py runs end to end (tiny sizes; no timing
asserted)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prints_each_mode_against_a_fresh_start_and_the_target_line():
  result = subprocess.run(
      [sys.executable, "-m", "scripts.bench.resume", "--steps=20,50",
       "--repeats=1", "--image_size=16"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [line.split("|")[1].strip() for line in result.stdout.splitlines()
          if line.startswith("| ") and "---" not in line]
  assert rows[1:] == ["fresh start (baseline)"] + [
      f"{mode} at {step}" for step in (20, 50)
      for mode in ("exact", "skip", "restart")], result.stdout
  assert re.search(r"exact resume at 50 steps: [0-9.]+x a fresh start; "
                   r"target <= 1.5x: (met|NOT met)", result.stdout), (
                       result.stdout)
  # Exact resumes restored a saved position: nothing fell back.
  assert "holds no input position" not in result.stderr
  assert "cannot be saved" not in result.stderr

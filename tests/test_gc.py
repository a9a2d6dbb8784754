"""tpu_harness._gc: what exists at import is frozen, later garbage is
still collected."""

import gc
import os
import subprocess
import sys
import weakref

import pytest

from tpu_harness import _gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.system
def test_importing_tpu_harness_freezes_tensorflows_objects():
  # In a fresh process: the count before the import is pytest's own here.
  code = ("import gc\n"
          "before = gc.get_freeze_count()\n"
          "import tpu_harness\n"
          "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  before, frozen, tracked = map(int, result.stdout.split())
  assert before == 0
  # TensorFlow's modules: hundreds of thousands; what a full collection
  # still scans right after the import: next to nothing.
  assert frozen > 100_000
  assert tracked < 1_000


class _Node:

  def __init__(self):
    self.other = self


def test_cycles_made_after_freezing_are_still_collected():
  frozen = _gc.freeze_imported()
  assert frozen == gc.get_freeze_count() > 0
  node = _Node()
  alive = weakref.ref(node)
  del node
  gc.collect()
  assert alive() is None

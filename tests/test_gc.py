"""tpu_harness._gc: what exists at import is frozen, later garbage is
still collected."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.system
def test_importing_tpu_harness_freezes_tensorflows_objects_only():
  # In a fresh process (freezing here would keep the suite's own garbage):
  # the count before the import is 0; a cycle made after it is collected.
  code = ("import gc, weakref\n"
          "before = gc.get_freeze_count()\n"
          "import tpu_harness\n"
          "frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())\n"
          "class Node:\n"
          "  def __init__(self):\n"
          "    self.other = self\n"
          "node = Node()\n"
          "alive = weakref.ref(node)\n"
          "del node\n"
          "gc.collect()\n"
          "print(before, frozen, tracked, alive() is None)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  before, frozen, tracked, collected = result.stdout.split()
  assert int(before) == 0
  # TensorFlow's modules: hundreds of thousands; what a full collection
  # still scans right after the import: next to nothing.
  assert int(frozen) > 100_000
  assert int(tracked) < 1_000
  assert collected == "True"

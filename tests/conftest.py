"""Shared pytest set-up: quiet TF, parsed absl flags, a fresh graph per test."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# As `import tpu_harness` sets it; here before any test touches tf.keras.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True)
def _fresh_graph_and_writers():
  """Each test builds in its own graph; summary writers are closed after."""
  with tf.Graph().as_default():
    yield
  tf.compat.v1.summary.FileWriterCache.clear()


@pytest.fixture(autouse=True)
def _warnings_once_per_test():
  """What the harness warns once per process, it warns once per test."""
  position = sys.modules.get("tpu_harness._infeed.position")
  if position is not None:
    position._WARNED.clear()  # pylint: disable=protected-access


@pytest.fixture(params=["no loop", "v1 loop", "v2 loop"])
def step_graph(request):
  """How the steps are built: in the graph itself (iterations_per_loop=1),
  in a v1 tf.while_loop (as after tf.compat.v1.disable_v2_behavior()), or
  in a v2 one; returns iterations_per_loop (1 or 3). In the first two, an
  optimizer's variables are made inside the replica that applies the
  gradients; in a v2 loop, outside the loop."""
  if request.param != "v1 loop":
    yield 1 if request.param == "no loop" else 3
    return
  was_v2 = tf.compat.v1.control_flow_v2_enabled()
  tf.compat.v1.disable_control_flow_v2()
  try:
    yield 3
  finally:
    if was_v2:
      tf.compat.v1.enable_control_flow_v2()


@pytest.fixture(scope="session")
def gcs():
  """A real GCS emulator behind the TLS proxy TF needs, for this session.

  Yields a support.gcs_emulator.GcsEmulator: `new_path()` gives a fresh
  gs:// prefix, `env` the environment a TF subprocess needs (TF reads it at
  import, so gs:// work runs in tests/support/gcs_worker.py), `inject()` faults.
  """
  from support.gcs_emulator import GcsEmulator  # pylint: disable=g-import-not-at-top
  with GcsEmulator() as emulator:
    yield emulator


@pytest.fixture
def gcs_path(gcs):
  """A fresh gs://bucket/prefix in the session's emulator; TF subprocesses
  need `gcs.env` in their environment before they import tensorflow."""
  return gcs.new_path()

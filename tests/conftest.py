"""Shared pytest set-up: quiet TF, parsed absl flags, a fresh graph per test."""

import os

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

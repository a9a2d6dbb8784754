"""gs:// model directories, through TensorFlow's own GCS client, against a
real GCS emulator (fake-gcs-server) behind a TLS-terminating proxy."""

import json
import os
import re
import subprocess
import sys

import pytest

from support.gcs_emulator import Fault
from support.gcs_emulator import TF_RETRIES

pytestmark = pytest.mark.system

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def _worker(gcs, scenario, path, arg=None, env_changes=None):
  env = dict(os.environ, **gcs.env,
             PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  for name, value in (env_changes or {}).items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  command = [sys.executable, os.path.join(TESTS, "support", "gcs_worker.py"), scenario,
             path] + ([str(arg)] if arg is not None else [])
  result = subprocess.run(command, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
  lines = [l for l in result.stdout.splitlines() if l.startswith("{")]
  assert lines, result.stderr[-3000:]
  return json.loads(lines[-1])


def _names(gcs, path):
  prefix = gcs.object_name(path) + "/"
  return [name[len(prefix):] for name in gcs.list_objects(prefix)]


@pytest.fixture(scope="module")
def trained_to_5(gcs):
  """A model directory trained to step 5 once for the module (a worker
  process takes seconds); tests train on from copies of it."""
  path = gcs.new_path("trained")
  assert _worker(gcs, "train", path, 5)["latest"].endswith("ckpt-5")
  return path


def _copy(gcs, trained, name):
  """A new path holding a copy of the objects of `trained`."""
  path = gcs.new_path(name)
  copied = gcs.copy_prefix(gcs.object_name(trained), gcs.object_name(path))
  assert "checkpoint" in copied and "model.ckpt-5.index" in copied, copied
  return path


def test_train_rotate_resume_and_evaluate_on_gcs(gcs):
  path = gcs.new_path("model")
  first = _worker(gcs, "train", path, 20)
  assert "error" not in first, first
  assert first["latest"] == f"{path}/model.ckpt-20"
  assert first["saved"] == [0, 5, 10, 15, 20]
  assert first["graph"] and first["loss_steps"] == [5, 10, 15, 20]
  names = _names(gcs, path)
  # keep_checkpoint_max=2: only 15 and 20 are left in the bucket.
  kept = sorted({n.split(".")[1] for n in names if n.startswith("model.")})
  assert kept == ["ckpt-15", "ckpt-20"], names
  assert "checkpoint" in names and "graph.pbtxt" in names
  assert any(n.startswith("events.out.tfevents") for n in names)

  resumed = _worker(gcs, "train", path, 30)
  assert resumed["saved"] == [20, 25, 30], resumed
  assert resumed["latest"] == f"{path}/model.ckpt-30"
  state = gcs.read_object(gcs.object_name(path) + "/checkpoint")
  assert b'model_checkpoint_path: "model.ckpt-30"' in state

  evaluated = _worker(gcs, "evaluate", path)
  assert evaluated["results"]["global_step"] == 30
  assert evaluated["results"]["mse"] >= 0 and evaluated["eval_events"] == 1


def test_checkpoint_saver_hook_alone_on_gcs(gcs, gcs_path):
  path = gcs_path
  result = _worker(gcs, "hook", path)
  assert result["saved"] == [0, 20, 40, 50], result
  assert result["latest"] == f"{path}/model.ckpt-50"
  assert 0 < result["w"] < 3
  names = _names(gcs, path)
  assert "graph.pbtxt" in names
  assert sorted({n.split(".")[1] for n in names if n.startswith("model.")}
               ) == ["ckpt-40", "ckpt-50"]


@pytest.mark.parametrize("fault", [
    Fault("PUT", r"model\.ckpt-10\.data", "status", 503, times=2),
    Fault("POST", r"model\.ckpt-10\.index", "status", 503, times=2),
    Fault("PUT", r"model\.ckpt-10\.data", "drop", times=2),
], ids=["503 on data upload", "503 on index upload start", "dropped"])
def test_transient_faults_during_a_save_are_retried(gcs, trained_to_5,
                                                   fault):
  path = _copy(gcs, trained_to_5, "transient")
  before = len(gcs.requests)
  gcs.inject(fault)
  try:
    result = _worker(gcs, "train", path, 10)
  finally:
    gcs.clear_faults()
  assert "error" not in result, result
  assert result["latest"] == f"{path}/model.ckpt-10"
  outcome = 503 if fault.action == "status" else "dropped"
  hit = [r for r in gcs.requests[before:] if r[2] == outcome]
  assert len(hit) == 2, gcs.requests[before:]


def test_persistent_failure_fails_the_save_clearly_and_keeps_the_previous(
    gcs, trained_to_5):
  path = _copy(gcs, trained_to_5, "persistent")
  gcs.inject(Fault("*", r"model\.ckpt-10\.", "status", 503, times=10_000))
  try:
    result = _worker(gcs, "train", path, 10)
  finally:
    gcs.clear_faults()
  assert result["error"] == "CheckpointSaveError", result
  assert "Saving the checkpoint for step 10 into " + path in result["message"]
  # The previous checkpoint is still the latest, and it reads back.
  again = _worker(gcs, "evaluate", path)
  assert again["results"]["global_step"] == 5


def test_missing_bucket_is_a_clear_error(gcs):
  result = _worker(gcs, "train", "gs://no-such-bucket/model", 5)
  assert result["error"] == "ValueError", result
  assert "`model_dir` ('gs://no-such-bucket/model') is not a writable " \
      "directory" in result["message"]
  assert "the bucket must exist" in result["message"]


def test_no_credentials_is_a_clear_error(gcs, tmp_path):
  path = gcs.new_path("nocreds")
  result = _worker(gcs, "train", path, 5, env_changes={
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": None,
      "GOOGLE_APPLICATION_CREDENTIALS": None,
      "HOME": str(tmp_path),  # No gcloud default credentials either.
      "CLOUDSDK_CONFIG": str(tmp_path)})
  assert result["error"] == "ValueError", result
  assert f"`model_dir` ('{path}') is not a writable directory" in result[
      "message"]
  assert "access refused" in result["message"]
  assert "does not exist" not in result["message"]
  assert "credentials" in result["message"]
  assert _names(gcs, path) == []


# ----------------------------------------------------------------------------
# "Cannot read right now" is never taken for "no checkpoint": the emulator's
# environment gives TF TF_RETRIES retries of its own; GIVE_UP faults in a row
# (TF's tries, then one more) make TF give up once.
GIVE_UP = TF_RETRIES + 2


def _resume_under_fault(gcs, trained, name, fault_for):
  """Trains a copy of `trained` (at step 5) to 10 with `fault_for(object
  prefix)` injected; returns (the run's result, object names before it,
  the copy's path)."""
  path = _copy(gcs, trained, name)
  before = _names(gcs, path)
  gcs.inject(fault_for(gcs.object_name(path)))
  try:
    return _worker(gcs, "train", path, 10), before, path
  finally:
    gcs.clear_faults()


def _listing_fault(times):
  return lambda prefix: Fault("GET", r"/o\?.*prefix=" + re.escape(prefix),
                              "status", 503, times=times)


def test_transient_listing_failure_at_start_resumes_not_restarts(
    gcs, trained_to_5):
  result, _, _ = _resume_under_fault(gcs, trained_to_5, "listing",
                                     _listing_fault(GIVE_UP))
  assert "error" not in result, result
  assert result["saved"] == [5, 10], result  # Resumed at 5, not 0.


def test_transient_checkpoint_read_failure_resumes_not_falls_back(
    gcs, trained_to_5):
  result, _, _ = _resume_under_fault(
      gcs, trained_to_5, "read", lambda prefix: Fault(
          "GET", r"model\.ckpt-5\.index", "status", 503, times=GIVE_UP))
  assert "error" not in result, result
  assert result["saved"] == [5, 10], result  # Not from ckpt-0.


# The n-th listing of the run's directory at start-up fails once for good
# (GIVE_UP faults: TF's own tries, then one more). Listings inside TF (the
# checkpoint reader's glob, makedirs, the events file, the saver's
# checkpoint times, the input position's read) report a failed listing as
# an empty one; at the time of writing these n hit, in order: creating
# model_dir (2), the restore order's global-step read (4), the variables
# check (5), the saver's checkpoint times (6), the events file (9), the
# restore (11), the input position (12). Each was an error or a fall-back
# to ckpt-0 before; all passed when written; four of them (one per kind of
# TF call) are kept here for time.
@pytest.mark.parametrize("nth", [2, 4, 6, 11])
def test_a_failed_listing_inside_tf_is_retried(gcs, trained_to_5, nth):
  result, _, _ = _resume_under_fault(
      gcs, trained_to_5, f"tf-listing{nth}", lambda prefix: Fault(
          "GET", r"/o\?.*prefix=" + re.escape(prefix) + "%2F(&|$)",
          "status", 503, times=GIVE_UP, after=nth))
  assert "error" not in result, result
  assert result["saved"] == [5, 10], result  # Resumed at 5, not 0.


def test_persistent_listing_failure_is_an_error_and_changes_nothing(
    gcs, trained_to_5):
  result, before, path = _resume_under_fault(gcs, trained_to_5, "outage",
                                             _listing_fault(10_000))
  assert result["error"] == "StorageError", result
  assert "Storage kept failing while" in result["message"]
  assert "Nothing was changed" in result["message"]
  assert _names(gcs, path) == before


@pytest.mark.parametrize("status,what", [
    (403, r"model\.ckpt-5\.data"),  # Was: fell back to ckpt-0, retrained.
    (401, r"model\.ckpt-5\.index"),
    (403, r"model\.ckpt-\d+\.(data|index)"),  # Every checkpoint.
])
def test_refused_checkpoint_read_is_refused_not_broken(gcs, trained_to_5,
                                                       status, what):
  """Access refused on the newest (or every) checkpoint says so and trains
  nothing: it is not a broken checkpoint to fall back from."""
  result, before, path = _resume_under_fault(
      gcs, trained_to_5, f"refused{status}", lambda prefix: Fault(
          "GET", what, "status", status, times=10_000))
  assert result.get("error") == "StorageError", result
  assert "refused" in result["message"], result
  assert "credentials" in result["message"], result
  assert _names(gcs, path) == before

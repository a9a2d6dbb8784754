"""storage: bounded retries of transient errors; listings that never lie."""

import os

import pytest
import tensorflow as tf

from hooks import paths
import tpu_harness as th
from tpu_harness._model_dir import storage


@pytest.mark.parametrize("backoff,delays", [
    (storage.Backoff(), [1.0, 2.0, 4.0]),
    (storage.Backoff(attempts=1), []),
    (storage.Backoff(attempts=6, initial_secs=0.5, max_secs=3), [0.5, 1.0,
                                                                 2.0, 3, 3]),
    (storage.Backoff(attempts=3, initial_secs=0), [0, 0]),
])
def test_backoff_delays(backoff, delays):
  assert list(backoff.delays()) == delays
  assert backoff.total_secs == sum(delays)


@pytest.mark.parametrize("kwargs,message", [
    (dict(attempts=0), "`attempts` (0) must be an integer >= 1"),
    (dict(attempts=True), "`attempts` (True)"),
    (dict(initial_secs=-1), "`initial_secs` (-1) must be a number >= 0"),
    (dict(max_secs="8"), "`max_secs` ('8')"),
])
def test_bad_backoff(kwargs, message):
  with pytest.raises(ValueError) as info:
    storage.Backoff(**kwargs)
  assert message in str(info.value)


@pytest.mark.parametrize("error,expected", [
    (tf.errors.UnavailableError(None, None, "503"), "transient"),
    (tf.errors.AbortedError(None, None, "All 5 retry attempts failed"),
     "transient"),
    (tf.errors.DeadlineExceededError(None, None, "slow"), "transient"),
    (tf.errors.ResourceExhaustedError(None, None, "429"), "transient"),
    (tf.errors.PermissionDeniedError(None, None, "401"), "access"),
    (tf.errors.UnauthenticatedError(None, None, "no token"), "access"),
    # TF's checkpoint reader keeps only the text of the status.
    (ValueError("Unsuccessful TensorSliceReader constructor: Failed to get "
                "matching files on gs://b/m: ABORTED: All 5 retry attempts "
                "failed."), "transient"),
    (ValueError("Failed to get matching files on gs://b/m: "
                "PERMISSION_DENIED: 403"), "access"),
    # The checkpoint reader's get_tensor raises a bare OpError with GCS's
    # HTTP status in the text.
    (tf.errors.OpError(None, None, "Error executing an HTTP request: HTTP "
                       "response code 403 with body '{}'\n\t when reading "
                       "gs://b/m.data-00000-of-00001", 2), "access"),
    (tf.errors.OpError(None, None, "HTTP response code 401 with body", 2),
     "access"),
    (tf.errors.OpError(None, None, "HTTP response code 503 with body", 2),
     "transient"),
    (tf.errors.OpError(None, None, "HTTP response code 404 with body", 2),
     "other"),
    (tf.errors.DataLossError(None, None, "Checksum does not match"), "other"),
    (tf.errors.NotFoundError(None, None, "no such file"), "other"),
    (IndexError("Read less bytes than requested"), "other"),
])
def test_error_kinds(error, expected):
  assert storage.kind(error) == expected


class _Flaky:
  """Fails with the given errors, in order, then returns "done"."""

  def __init__(self, *errors):
    self.errors = list(errors)
    self.calls = 0

  def __call__(self):
    self.calls += 1
    if self.errors:
      raise self.errors.pop(0)
    return "done"


def _unavailable():
  return tf.errors.UnavailableError(None, None, "HTTP 503")


def test_retry_recovers_from_transient_errors_with_the_backoff():
  slept = []
  flaky = _Flaky(_unavailable(), _unavailable())
  assert storage.retry(flaky, "listing x", sleep=slept.append) == "done"
  assert flaky.calls == 3 and slept == [1.0, 2.0]


def test_retry_gives_up_after_the_last_attempt(caplog):
  slept = []
  flaky = _Flaky(*[_unavailable() for _ in range(10)])
  with pytest.raises(th.StorageError) as info:
    storage.retry(flaky, "listing gs://b/run", sleep=slept.append)
  assert flaky.calls == 4 and slept == [1.0, 2.0, 4.0]
  message = str(info.value)
  assert "kept failing while listing gs://b/run (4 tries over 7 s" in message
  assert "UnavailableError: HTTP 503" in message
  assert isinstance(info.value.__cause__, tf.errors.UnavailableError)


def test_retry_does_not_retry_refused_access_or_other_errors():
  slept = []
  denied = _Flaky(tf.errors.PermissionDeniedError(None, None, "HTTP 401"))
  with pytest.raises(th.StorageError, match="Access refused while "
                     "reading y: PermissionDeniedError: HTTP 401. Check the "
                     "credentials"):
    storage.retry(denied, "reading y", sleep=slept.append)
  corrupt = _Flaky(tf.errors.DataLossError(None, None, "checksum"))
  with pytest.raises(tf.errors.DataLossError):
    storage.retry(corrupt, "reading y", sleep=slept.append)
  assert slept == [] and denied.calls == corrupt.calls == 1


def test_list_names_of_missing_and_present_directories(tmp_path):
  assert storage.list_names(str(tmp_path / "absent")) == []
  (tmp_path / "a.index").write_text("")
  (tmp_path / "sub").mkdir()
  (tmp_path / "sub" / "deeper").write_text("")
  assert storage.list_names(str(tmp_path)) == ["a.index", "sub"]


def test_list_names_escapes_glob_characters(tmp_path):
  # Unescaped, "run[1]" would match "run1" and not itself.
  for name in ("run[1]", "run1", "run*"):
    os.makedirs(tmp_path / name)
    (tmp_path / name / f"in-{name}").write_text("")
  for name in ("run[1]", "run1", "run*"):
    assert storage.list_names(str(tmp_path / name)) == [f"in-{name}"]


def test_stat_or_none(tmp_path):
  assert storage.stat_or_none(str(tmp_path / "absent")) is None
  assert storage.stat_or_none(str(tmp_path)).is_directory


@pytest.mark.parametrize("path,bad", [
    ("runs/sweep_lr[0.01]", "["), ("runs/*", "*"), ("runs/a?b", "?"),
    ("runs\\x", "\\"),
])
def test_glob_characters_are_refused_with_a_suggestion(path, bad):
  with pytest.raises(ValueError) as info:
    paths.check_no_glob_characters("model_dir", path)
  message = str(info.value)
  assert message.startswith(f"`model_dir` ({path!r}) contains {bad}")
  assert "could not be found again" in message


def test_escape_matches_only_itself(tmp_path):
  for name in ("a[b]", "ab", "a*"):
    (tmp_path / name).write_text("")
  for name in ("a[b]", "a*"):
    pattern = paths.escape(str(tmp_path / name))
    assert tf.io.gfile.glob(pattern) == [str(tmp_path / name)]


@pytest.mark.parametrize("save_dir,prefix,expected", [
    ("/abs/m", "/abs/m/model.ckpt-5", "model.ckpt-5"),
    ("runs/m", "runs/m/model.ckpt-5", "runs/m/model.ckpt-5"),
    ("gs://b/m", "gs://b/m/model.ckpt-5", "gs://b/m/model.ckpt-5"),
])
def test_state_file_entries_come_out_relative(tmp_path, monkeypatch,
                                              save_dir, prefix, expected):
  assert paths.state_file_entry(save_dir, prefix) == expected
  if "://" not in save_dir:
    monkeypatch.chdir(tmp_path)
    directory = str(tmp_path) + save_dir if save_dir.startswith(
        "/") else save_dir
    os.makedirs(directory)
    entry = paths.state_file_entry(directory, prefix.replace(
        save_dir, directory))
    tf.compat.v1.train.update_checkpoint_state(directory, entry)
    with open(os.path.join(directory, "checkpoint")) as f:
      assert f.read().startswith('model_checkpoint_path: "model.ckpt-5"')


@pytest.mark.parametrize("message,exists,hidden", [
    ("Unsuccessful TensorSliceReader constructor: Failed to find any "
     "matching files for gs://b/m/model.ckpt-5", True, True),
    ("/m is not a directory", True, True),
    # The path is really missing: the error stands.
    ("Failed to find any matching files for gs://b/m/model.ckpt-5", False,
     False),
    # Another error about a path that exists is not a listing.
    ("Key dense/kernel not found in checkpoint", True, False),
])
def test_a_failed_listing_hidden_by_tf(message, exists, hidden):
  error = tf.errors.NotFoundError(None, None, message)
  assert storage.hides_a_failed_listing(error, lambda: exists) == hidden
  assert not storage.hides_a_failed_listing(error, None)


def test_retry_retries_a_hidden_listing_failure_while_the_path_exists():
  calls = []

  def read():
    calls.append(1)
    if len(calls) < 3:
      raise tf.errors.NotFoundError(None, None, "Failed to find any matching "
                                    "files for gs://b/m/model.ckpt-5")
    return "read"

  assert storage.retry(read, "reading", sleep=lambda _: None,
                       exists=lambda: True) == "read"
  assert len(calls) == 3
  calls.clear()
  with pytest.raises(tf.errors.NotFoundError):
    storage.retry(read, "reading", sleep=lambda _: None,
                  exists=lambda: False)
  assert len(calls) == 1

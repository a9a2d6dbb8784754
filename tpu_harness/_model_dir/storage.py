"""Storage calls that tell "not there" from "cannot tell right now".

TensorFlow's filesystem layer hides errors in several places: on gs://,
`tf.io.gfile.isdir` returns False on any error, and `tf.io.gfile.listdir`
says a directory does not exist when a request failed (both seen on TF 2.21
with a 503 from the bucket). A training start-up that believed them would
restart from step 0 over a real run. The functions here use only calls that
report errors (`glob` with an escaped pattern, `stat`, reads), retry the
transient ones with a bounded backoff, and raise `StorageError` when storage
keeps failing, so that "no checkpoint" is only ever concluded from a listing
that succeeded.

Our listings escape the directory's glob characters (`hooks.paths`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Iterator, List, Optional, TypeVar

from absl import logging
import tensorflow as tf

from hooks import paths
from tpu_harness.errors import StorageError

T = TypeVar("T")

# Error classes that say "try again": a request failed, not the data.
TRANSIENT_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                    tf.errors.DeadlineExceededError,
                    tf.errors.ResourceExhaustedError)
# Status names, and GCS's HTTP status, as they appear inside the message of
# an error that TF's checkpoint reader re-raised without its class (it
# keeps only the text: "HTTP response code 403 with body ..." is a plain
# OpError there, where a restore op raises PermissionDeniedError).
_TRANSIENT_STATUS = re.compile(
    r"\b(UNAVAILABLE|ABORTED|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b|"
    r"retry attempts failed|HTTP response code (408|429|5\d\d)\b")
# TF's GCS filesystem reports a listing that failed (after its own
# retries) as an empty one: the checkpoint reader then says no file matches,
# creating a directory says it is not one. Such an error is a transient
# failure when the harness's own listing (which retries, or raises
# StorageError) finds the path after all.
_HIDDEN_LISTING = re.compile(
    r"Failed to find any matching files for|is not a directory")
_ACCESS_STATUS = re.compile(
    r"\b(PERMISSION_DENIED|UNAUTHENTICATED)\b|"
    r"HTTP response code (401|403)\b")


@dataclasses.dataclass(frozen=True)
class Backoff:
  """When to retry: `attempts` tries, waiting `initial_secs`, then twice as
  long each time, at most `max_secs`, between them. Pure: no clock.

  Attributes:
    attempts: tries in all, the first included.
    initial_secs: the wait after the first failure.
    max_secs: the longest wait.
  """
  attempts: int = 4
  initial_secs: float = 1.0
  max_secs: float = 8.0

  def __post_init__(self):
    if (isinstance(self.attempts, bool) or not isinstance(self.attempts, int)
        or self.attempts < 1):
      raise ValueError(f"`attempts` ({self.attempts!r}) must be an integer "
                       f">= 1.")
    for name in ("initial_secs", "max_secs"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or (
          value < 0):
        raise ValueError(f"`{name}` ({value!r}) must be a number >= 0.")

  def delays(self) -> Iterator[float]:
    """The waits between tries: `attempts - 1` of them."""
    delay = self.initial_secs
    for _ in range(self.attempts - 1):
      yield min(delay, self.max_secs)
      delay *= 2

  @property
  def total_secs(self) -> float:
    """The most time spent waiting before giving up."""
    return sum(self.delays())


DEFAULT_BACKOFF = Backoff()


def kind(error: BaseException) -> str:
  """Classifies a storage error: "transient", "access" or "other"."""
  if isinstance(error, TRANSIENT_ERRORS):
    return "transient"
  if isinstance(error, (tf.errors.PermissionDeniedError,
                        tf.errors.UnauthenticatedError)):
    return "access"
  text = str(error)
  if _TRANSIENT_STATUS.search(text):
    return "transient"
  if _ACCESS_STATUS.search(text):
    return "access"
  return "other"


def hides_a_failed_listing(error: BaseException,
                           exists: Optional[Callable[[], bool]]) -> bool:
  """Whether `error` (of a TF call on a path) says a path is missing or not
  a directory although `exists()`, the harness's own check, finds it: a
  listing inside TF failed and TF reported it as empty.

  Raises:
    StorageError: `exists` kept failing, or access was refused.
  """
  return (exists is not None and kind(error) == "other"
          and _HIDDEN_LISTING.search(str(error)) is not None and exists())


def retry(fn: Callable[[], T], what: str, *,
          backoff: Backoff = DEFAULT_BACKOFF,
          sleep: Callable[[float], None] = time.sleep,
          exists: Optional[Callable[[], bool]] = None) -> T:
  """Calls `fn`, retrying transient storage errors with `backoff`.

  Args:
    fn: the storage call.
    what: what it does, for messages ("listing gs://b/run").
    backoff: when to retry.
    sleep: waits; a fake one in tests.
    exists: for a TF call on a path: the harness's own check that the path
      is there; an error of `fn` saying it is not, while it is, is a listing
      inside TF that failed (`hides_a_failed_listing`), retried as
      transient.

  Returns:
    What `fn` returned.

  Raises:
    StorageError: a transient error persisted through every try, or access
      was refused; the original error is its cause.
    Exception: any other error of `fn`, unchanged.
  """
  delays = backoff.delays()
  tries = 0
  while True:
    tries += 1
    try:
      return fn()
    except Exception as error:  # pylint: disable=broad-except
      found = kind(error)
      if hides_a_failed_listing(error, exists):
        found = "transient"
      if found == "access":
        raise StorageError(
            f"Access refused while {what}: {first_line(error)}. Check the "
            f"credentials (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
            f"application-default login`) and their permissions on the "
            f"bucket.") from error
      if found != "transient":
        raise
      delay = next(delays, None)
      if delay is None:
        raise StorageError(
            f"Storage kept failing while {what} ({tries} tries over "
            f"{backoff.total_secs:g} s of waiting): {first_line(error)}. "
            f"Nothing was changed; run again when storage is reachable."
        ) from error
      logging.warning("Transient storage error while %s (try %d of %d), "
                      "retrying in %g s: %s", what, tries, backoff.attempts,
                      delay, first_line(error))
      sleep(delay)


def has_entries(directory: str) -> bool:
  """Whether `directory` exists with something in it, by a listing that
  succeeded (on gs://, a directory is its objects' common prefix).

  Raises:
    StorageError: the listing kept failing, or access was refused.
  """
  return bool(list_names(directory))


def checkpoint_exists(prefix: str) -> bool:
  """Whether checkpoint `prefix`'s index exists, by a read that succeeded.

  Raises:
    StorageError: the read kept failing, or access was refused.
  """
  return stat_or_none(prefix + ".index") is not None


def events_writer(directory: str, model_dir: str, with_graph: bool = True
                  ) -> tf.compat.v1.summary.FileWriter:
  """`tf.compat.v1.summary.FileWriterCache.get(directory)` (`directory` is
  `model_dir` or in it), with transient failures retried: creating it
  makes the directory, and TF reports a failed listing there as "not a
  directory".

  Args:
    directory: where the events file is written.
    model_dir: the model directory `directory` is or is in.
    with_graph: a writer this call creates writes the default graph first,
      as FileWriterCache's do (False: an empty graph, where the caller's
      hooks write the graph that runs; the default graph, not final yet,
      would be serialized for nothing and shown by TensorBoard until
      then).

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  def get():
    if with_graph:
      return tf.compat.v1.summary.FileWriterCache.get(directory)
    with tf.Graph().as_default():
      return tf.compat.v1.summary.FileWriterCache.get(directory)

  return retry(get, f"creating an events file in {directory}",
               exists=lambda: has_entries(model_dir))


def list_names(directory: str, *, backoff: Backoff = DEFAULT_BACKOFF,
               sleep: Callable[[float], None] = time.sleep) -> List[str]:
  """The names of the entries directly in `directory` ([] if it does not
  exist), from a listing that succeeded.

  Raises:
    StorageError: the listing kept failing, or access was refused.
  """
  pattern = paths.escape(directory.rstrip("/")) + "/*"
  found = retry(lambda: tf.io.gfile.glob(pattern), f"listing {directory}",
                backoff=backoff, sleep=sleep)
  return sorted({path.rstrip("/").rsplit("/", 1)[-1] for path in found})


def stat_or_none(path: str, *, backoff: Backoff = DEFAULT_BACKOFF,
                 sleep: Callable[[float], None] = time.sleep
                 ) -> Optional[object]:
  """`tf.io.gfile.stat(path)` (a FileStatistics), or None if `path` does not
  exist.

  Raises:
    StorageError: the call kept failing, or access was refused.
  """
  def call():
    try:
      return tf.io.gfile.stat(path)
    except tf.errors.NotFoundError:
      return None
  return retry(call, f"reading the metadata of {path}", backoff=backoff,
               sleep=sleep)


def first_line(error: BaseException) -> str:
  """An error's first line, with its class name, at most 300 characters."""
  text = str(getattr(error, "message", None) or error).strip()
  line = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {line[:300]}"

"""Which of a run's checkpoints to restore, in which order.

A crash may leave the newest checkpoint truncated or half-written. The newest
owned checkpoint that restores is the one to resume from; newer broken ones
are skipped with a warning. Training, evaluation and prediction read the
checkpoint once, by restoring it: the newest candidate whose index and
global step read back is restored, and only if that restore fails is the
checkpoint read through to tell corruption (`CheckpointRestoreError`, then
the next older candidate) from any other error (raised as it is).
`RestoreOrder` is that order, shared by training (`resume_point`) and by
evaluation and prediction (`tpu_harness._run.restore`): the run's
checkpoints newest first, less those found broken, each with why.
`latest_restorable` still reads every tensor, for callers that want a
verified path without restoring. "No checkpoint" is concluded only from a
listing that succeeded (`tpu_harness._model_dir.storage`): a read that fails
for a transient reason is retried and then raised, never taken for
corruption, and if checkpoints exist but none reads back, that is an
error, not a fresh start. A checkpoint whose files are gone when read was
deleted since the listing (rotated by a trainer beside, when evaluating):
it is not broken; the listing is made again (`rotated`), a bounded number
of times (`MAX_ROTATIONS`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness import errors
from tpu_harness._model_dir import contents as contents_lib
from tpu_harness._model_dir import storage
from tpu_harness._model_dir.contents import BASENAME
from tpu_harness._model_dir.contents import Contents
from tpu_harness.errors import CheckpointMismatchError
from tpu_harness.errors import CheckpointRestoreError
from tpu_harness.errors import CheckpointRotatedError
from tpu_harness.errors import NoRestorableCheckpointError


# How many chosen checkpoints may be rotated away before they are read,
# in one choice, before giving up: a trainer beside that saves faster than
# a restore takes would otherwise be chased for ever.
MAX_ROTATIONS = 50


class RestoreOrder:
  """The run's checkpoints to try, newest first, less those found broken.

  Attributes:
    broken: {prefix: why it did not read back or restore}, in the order
      found.
    gone: the checkpoints found deleted after they were chosen (rotated),
      in the order found.
  """

  def __init__(self, model_dir: str):
    self.model_dir = model_dir
    self.broken: Dict[str, str] = {}
    self.gone: List[str] = []

  def rotated(self, prefix: str) -> None:
    """Records that `prefix` was deleted after it was chosen (by a
    trainer's rotation); the newest is to be chosen again.

    Raises:
      CheckpointRotatedError: this happened MAX_ROTATIONS times.
    """
    self.gone.append(prefix)
    if len(self.gone) >= MAX_ROTATIONS:
      raise CheckpointRotatedError(
          f"Every checkpoint chosen in `model_dir` ({self.model_dir!r}) was "
          f"rotated away (deleted by the trainer beside, which keeps "
          f"`keep_checkpoint_max` of them) before it could be restored, "
          f"{len(self.gone)} times in a row (the last: "
          f"{', '.join(self.gone[-3:])}). The checkpoints are fine: the "
          f"trainer saves a new one faster than one restores here. Keep "
          f"more checkpoints (`keep_checkpoint_max` of 2 or more), save less "
          f"often, or copy a checkpoint and pass its `checkpoint_path`.")
    logging.info("Checkpoint %s was rotated away (deleted by a trainer "
                 "beside) before it could be read; choosing the newest "
                 "again.", prefix)

  def skip(self, prefix: str, reason: str, what: str = "read back") -> None:
    """Records that `prefix` does not `what` (read back, restore), with a
    warning."""
    logging.warning("Skipping checkpoint %s, which does not %s (%s); "
                    "falling back to the previous one.", prefix, what, reason)
    self.broken[prefix] = reason

  def candidates(self, contents: Contents) -> List[str]:
    """The run's checkpoints in `contents` not found broken, newest first."""
    return [prefix for prefix in contents.checkpoints
            if prefix not in self.broken]

  def next(self, contents: Optional[Contents] = None, *,
           sleep: Callable[[float], None] = time.sleep
           ) -> Optional[Tuple[str, int]]:
    """The newest candidate whose index and global step read back (a small
    read), as (prefix, global step); those that do not are skipped. None
    when no candidate is left.

    Raises:
      StorageError: storage kept failing, or refused access.
    """
    if contents is None:
      contents = contents_lib.scan(self.model_dir, sleep=sleep)
    for prefix in self.candidates(contents):
      try:
        step = storage.retry(
            lambda p=prefix: checkpoint_global_step(p),
            f"reading checkpoint {prefix}", sleep=sleep,
            exists=lambda p=prefix: storage.checkpoint_exists(p))
      except errors.StorageError:
        raise
      except Exception as error:  # pylint: disable=broad-except
        # What reading a broken file raises varies (OpError, ValueError,
        # the reader's IndexError for a truncated file).
        if gone(prefix):
          self.rotated(prefix)
          return self.next(sleep=sleep)
        self.skip(prefix, storage.first_line(error))
        continue
      if self.broken:
        logging.warning("Resuming from %s, the newest checkpoint that reads "
                        "back.", prefix)
      return prefix, step
    return None

  def none_left(self) -> NoRestorableCheckpointError:
    """The error for a `model_dir` whose checkpoints all fail to read back
    or restore."""
    broken = [f"{prefix} ({reason})" for prefix, reason in self.broken.items()]
    return NoRestorableCheckpointError(
        f"`model_dir` ({self.model_dir!r}) holds {len(broken)} checkpoint(s) "
        f"of this run, and none reads back: {'; '.join(broken)}. Nothing was "
        f"changed. To start from scratch, move these files out of model_dir "
        f"or use another model_dir; to resume, restore a good copy of one.")


def gone(prefix: str) -> bool:
  """Whether checkpoint `prefix`'s index no longer exists (deleted since
  it was listed).

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  return not storage.checkpoint_exists(prefix)


def unreadable_reason(prefix: str, *,
                      sleep: Callable[[float], None] = time.sleep
                      ) -> Optional[str]:
  """None if every tensor of the checkpoint reads back, else why not.

  A read that fails for a transient reason is retried, not reported as
  unreadable.

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  def exists():
    return storage.checkpoint_exists(prefix)

  def read():
    try:
      reader = tf.train.load_checkpoint(prefix)
      for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    except Exception as error:  # pylint: disable=broad-except
      if (storage.kind(error) != "other"
          or storage.hides_a_failed_listing(error, exists)):
        raise  # Retried (transient) or raised (access) by storage.retry.
      return storage.first_line(error)
    return None
  return storage.retry(read, f"reading checkpoint {prefix}", sleep=sleep,
                       exists=exists)


def latest_restorable(model_dir: str, basename: str = BASENAME, *,
                      contents: Optional[Contents] = None,
                      sleep: Callable[[float], None] = time.sleep
                      ) -> Optional[str]:
  """The newest checkpoint of the run in `model_dir` that reads back.

  Args:
    model_dir: the directory.
    basename: the run's checkpoint basename.
    contents: a `scan` of `model_dir` made just before, to save a listing.
    sleep: waits between retries.

  Returns:
    Its prefix, or None when `model_dir` holds no checkpoint of the run (or
    does not exist).

  Raises:
    NoRestorableCheckpointError: checkpoints of the run exist, but none
      reads back; the message lists them with the reasons.
    StorageError: storage kept failing, or refused access.
  """
  if contents is None:
    contents = contents_lib.scan(model_dir, basename, sleep=sleep)
  order = RestoreOrder(model_dir)
  for prefix in order.candidates(contents):
    reason = unreadable_reason(prefix, sleep=sleep)
    if reason is None:
      if order.broken:
        logging.warning("Resuming from %s, the newest checkpoint that reads "
                        "back.", prefix)
      return prefix
    order.skip(prefix, reason)
  if order.broken:
    raise order.none_left()
  return None


def restore_failure(checkpoint: str, *,
                    sleep: Callable[[float], None] = time.sleep
                    ) -> Optional[CheckpointRestoreError]:
  """After restoring `checkpoint` failed (not transiently): a
  CheckpointRestoreError if reading the checkpoint through fails, else None
  (the failure is not the checkpoint's files).

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  reason = unreadable_reason(checkpoint, sleep=sleep)
  return None if reason is None else CheckpointRestoreError(checkpoint,
                                                            reason)


class SavedVariables:
  """The variables a checkpoint holds: their shapes and dtypes."""

  def __init__(self, shapes: Dict[str, List[int]],
               dtypes: Dict[str, tf.DType]):
    self._shapes = shapes
    self._dtypes = dtypes

  def differences(self, variables: Sequence[tf.Variable]
                  ) -> Tuple[List[str], List[str], List[str]]:
    """(names missing from the checkpoint, shapes that differ, dtypes that
    differ) of `variables`; a shape not fully defined fits any."""
    missing, shape_differs, dtype_differs = [], [], []
    for variable in variables:
      name = variable.op.name
      if name not in self._shapes:
        missing.append(name)
        continue
      if variable.shape.is_fully_defined() and list(self._shapes[name]) != (
          variable.shape.as_list()):
        shape_differs.append(
            f"{name}: checkpoint {tuple(self._shapes[name])} vs model "
            f"{tuple(variable.shape.as_list())}")
      if self._dtypes[name].base_dtype != variable.dtype.base_dtype:
        dtype_differs.append(
            f"{name}: checkpoint {self._dtypes[name].name} vs model "
            f"{variable.dtype.base_dtype.name}")
    return missing, shape_differs, dtype_differs

  def fits(self, variables: Sequence[tf.Variable]) -> bool:
    """Whether a Saver of `variables` restores from the checkpoint."""
    return not any(self.differences(variables))


def check_matches(prefix: str, variables: Sequence[tf.Variable]
                  ) -> SavedVariables:
  """Raises CheckpointMismatchError unless `prefix` has every variable with
  its shape and dtype; the message lists every difference.

  Returns:
    What the checkpoint holds (for other variables to be compared).

  Raises:
    CheckpointMismatchError: they differ.
    StorageError: storage kept failing, or refused access.
  """
  reader = storage.retry(lambda: tf.train.load_checkpoint(prefix),
                         f"reading checkpoint {prefix}",
                         exists=lambda: storage.checkpoint_exists(prefix))
  saved = SavedVariables(reader.get_variable_to_shape_map(),
                         reader.get_variable_to_dtype_map())
  missing, shape_differs, dtype_differs = saved.differences(variables)
  parts = []
  if missing:
    parts.append(f"missing from the checkpoint: {sorted(missing)}")
  if shape_differs:
    parts.append(f"shape differs: {sorted(shape_differs)}")
  if dtype_differs:
    parts.append(f"dtype differs: {sorted(dtype_differs)}")
  if parts:
    raise CheckpointMismatchError(
        f"Checkpoint {prefix} was not written by this model ("
        + "; ".join(parts) + "). Use another `model_dir`, or pass "
        "`warm_start_from` to start from a compatible checkpoint.")
  return saved


def checkpoint_global_step(prefix: str) -> int:
  """The `global_step` stored in a checkpoint.

  Raises:
    ValueError: the checkpoint has no global_step.
  """
  reader = tf.train.load_checkpoint(prefix)
  if not reader.has_tensor("global_step"):
    raise ValueError(f"Checkpoint {prefix} has no global_step; it was not "
                     f"written by a training run.")
  return int(reader.get_tensor("global_step"))


@dataclasses.dataclass(frozen=True)
class ResumePoint:
  """Where a run resumes.

  Attributes:
    checkpoint: the checkpoint to restore, or None to start from scratch.
    step: its global step (0 without one).
    recent: the run's checkpoints up to it, oldest first, for rotation.
    order: the order it was chosen in; if restoring it fails, mark it
      broken there and ask `resume_point` again with it.
  """
  checkpoint: Optional[str]
  step: int
  recent: List[str]
  order: RestoreOrder


def resume_point(model_dir: str, basename: str = BASENAME, *,
                 order: Optional[RestoreOrder] = None,
                 sleep: Callable[[float], None] = time.sleep) -> ResumePoint:
  """Lists `model_dir` and finds the checkpoint to resume from: the newest
  in `order` whose index and global step read back (it is read in full
  only by restoring it). On a first call (no `order`), also logs what the
  run ignores there and removes its own interrupted saves' leftovers.

  Call it holding the lease on `model_dir` (leftovers are only leftovers
  when no other trainer is writing).

  Args:
    model_dir: the directory.
    basename: the run's checkpoint basename.
    order: the order of an earlier call, whose checkpoint then failed to
      restore and was marked broken in it.
    sleep: waits between retries.

  Raises:
    NoRestorableCheckpointError: checkpoints exist, none reads back.
    StorageError: storage kept failing, or refused access.
  """
  contents = contents_lib.scan(model_dir, basename, sleep=sleep)
  if order is None:
    order = RestoreOrder(model_dir)
    contents_lib.log_ignored(model_dir, contents, basename)
    contents_lib.remove_leftovers(contents)
  found = order.next(contents, sleep=sleep)
  if found is None:
    if order.broken:
      raise order.none_left()
    logging.info("No checkpoint of this run in %s: starting from scratch.",
                 model_dir)
    return ResumePoint(checkpoint=None, step=0, recent=[], order=order)
  latest, step = found
  recent = [p for p in reversed(contents.checkpoints)
            if contents_lib.checkpoint_step(p)
            <= contents_lib.checkpoint_step(latest)]
  return ResumePoint(checkpoint=latest, step=step, recent=recent, order=order)

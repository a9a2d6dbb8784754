"""What in `model_dir` belongs to a run, and which checkpoint to resume from.

A run owns exactly the checkpoints `<model_dir>/<basename>-<step>` (basename
`model.ckpt`) whose files are in `model_dir`, and the partial files its own
interrupted saves leave (`<basename>-<step>...tempstate<n>`,
`<basename>-<step>_temp/`, `checkpoint.tmp<hex>`) and its interrupted lease
writes (`.tpu_harness_lease.json.<hex>.tmp`). Everything else is left
alone and, where it looks like a checkpoint, named in the log: other
basenames (`best.ckpt-20`, `pretrained-50`), state-file entries that point
outside `model_dir` (a copied directory whose state file holds absolute
paths), user files.

A crash may leave the newest checkpoint truncated or half-written. The newest
owned checkpoint that restores is the one to resume from; newer broken ones
are skipped with a warning. Training, evaluation and prediction read the
checkpoint once, by restoring it: the newest candidate whose index and
global step read back is restored, and only if that restore fails is the
checkpoint read through to tell corruption (`CheckpointRestoreError`, then
the next older candidate) from any other error (raised as it is).
`latest_restorable` still reads every tensor, for callers that want a
verified path without restoring. "No checkpoint" is concluded only from a
listing that succeeded (`tpu_harness.storage`): a read that fails for a
transient reason is retried and then raised, never taken for corruption,
and if checkpoints exist but none reads back, that is an error, not a fresh
start.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Callable, Collection, List, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from hooks import _paths
from tpu_harness import storage

BASENAME = "model.ckpt"
_STEP = re.compile(r"-(\d+)$")
WRITE_PROBE = ".tpu_harness_write_probe"
LEASE_NAME = ".tpu_harness_lease.json"  # tpu_harness.lease's file.


class CheckpointMismatchError(ValueError):
  """A checkpoint does not have the variables, shapes or dtypes the model
  has."""


class CheckpointRestoreError(RuntimeError):
  """Restoring a checkpoint failed because its files do not read back.

  Attributes:
    checkpoint: its prefix.
    reason: what reading it found.
  """

  def __init__(self, checkpoint: str, reason: str):
    self.checkpoint = checkpoint
    self.reason = reason
    super().__init__(f"Checkpoint {checkpoint} does not read back "
                     f"({reason}).")


class NoRestorableCheckpointError(RuntimeError):
  """`model_dir` holds checkpoints of the run, but none reads back."""


def checkpoint_step(prefix: str) -> Optional[int]:
  """The step in a `name-STEP` checkpoint prefix, or None."""
  match = _STEP.search(os.path.basename(prefix))
  return int(match.group(1)) if match else None


join = _paths.join


@dataclasses.dataclass(frozen=True)
class Contents:
  """What a listing of `model_dir` found.

  Attributes:
    checkpoints: prefixes of the run's own checkpoints, newest step first.
    leftovers: paths of files and directories its interrupted saves left.
    foreign: names of other checkpoints (`<name>.index` of another
      basename), which the run never restores, rotates or deletes.
  """
  checkpoints: List[str]
  leftovers: List[str]
  foreign: List[str]


def scan(model_dir: str, basename: str = BASENAME, *,
         sleep: Callable[[float], None] = time.sleep) -> Contents:
  """Lists `model_dir` and sorts what is there into the run's own
  checkpoints, its leftovers and other checkpoints.

  Raises:
    StorageError: the listing kept failing or access was refused.
  """
  names = storage.list_names(model_dir, sleep=sleep)
  base = re.escape(basename)
  owned_index = re.compile(rf"^{base}-(\d+)\.index$")
  leftover = re.compile(
      rf"^({base}-\d+\..*\.tempstate\d+|{base}-\d+_temp|"
      rf"checkpoint\.tmp[0-9a-f]{{32}}|{re.escape(WRITE_PROBE)}|"
      rf"{re.escape(LEASE_NAME)}\.[0-9a-f]{{32}}\.tmp)$")
  owned, leftovers, foreign = [], [], []
  for name in names:
    match = owned_index.match(name)
    if match:
      owned.append((int(match.group(1)), join(model_dir, name[:-6])))
    elif leftover.match(name):
      leftovers.append(join(model_dir, name))
    elif name.endswith(".index"):
      foreign.append(name)
  return Contents(checkpoints=[p for _, p in sorted(owned, reverse=True)],
                  leftovers=leftovers, foreign=foreign)


def log_ignored(model_dir: str, contents: Contents,
                basename: str = BASENAME) -> None:
  """Says in the log which checkpoint-like things the run leaves alone."""
  for name in contents.foreign:
    logging.info("Ignoring %s in %s: not a checkpoint of this run (its "
                 "checkpoints are %s-<step>); it is never restored, rotated "
                 "or deleted.", name, model_dir, basename)
  try:
    state = tf.train.get_checkpoint_state(model_dir)
  except Exception:  # pylint: disable=broad-except  # A garbled state file.
    state = None
  if state is None:
    return
  own = set(contents.checkpoints)
  home = _normalized(model_dir)
  for path in sorted(set(state.all_model_checkpoint_paths)
                     | {state.model_checkpoint_path}):
    if not path or _normalized(path) in own:
      continue
    if _normalized(os.path.dirname(path)) != home:
      logging.warning(
          "Ignoring %s, listed in %s/checkpoint: it is outside model_dir "
          "(a copied directory?). It is never restored, rotated or "
          "deleted by this run.", path, model_dir)


def _normalized(path: str) -> str:
  return path.rstrip("/") if "://" in path else os.path.normpath(
      os.path.abspath(path))


def unreadable_reason(prefix: str, *,
                      sleep: Callable[[float], None] = time.sleep
                      ) -> Optional[str]:
  """None if every tensor of the checkpoint reads back, else why not.

  A read that fails for a transient reason is retried, not reported as
  unreadable.

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  def read():
    try:
      reader = tf.train.load_checkpoint(prefix)
      for name in reader.get_variable_to_shape_map():
        reader.get_tensor(name)
    except Exception as error:  # pylint: disable=broad-except
      if storage.kind(error) != "other":
        raise  # Retried (transient) or raised (access) by storage.retry.
      return storage.first_line(error)
    return None
  return storage.retry(read, f"reading checkpoint {prefix}", sleep=sleep)


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
    contents = scan(model_dir, basename, sleep=sleep)
  broken = []
  for prefix in contents.checkpoints:
    reason = unreadable_reason(prefix, sleep=sleep)
    if reason is None:
      if broken:
        logging.warning("Resuming from %s, the newest checkpoint that reads "
                        "back.", prefix)
      return prefix
    logging.warning("Skipping checkpoint %s, which does not read back "
                    "(%s); falling back to the previous one.", prefix, reason)
    broken.append(f"{prefix} ({reason})")
  if broken:
    raise none_restorable(model_dir, broken)
  return None


def none_restorable(model_dir: str, broken: Sequence[str]
                    ) -> NoRestorableCheckpointError:
  """The error for a `model_dir` whose checkpoints (`broken`: each
  "prefix (reason)") all fail to read back."""
  return NoRestorableCheckpointError(
      f"`model_dir` ({model_dir!r}) holds {len(broken)} checkpoint(s) of "
      f"this run, and none reads back: {'; '.join(broken)}. Nothing was "
      f"changed. To start from scratch, move these files out of model_dir "
      f"or use another model_dir; to resume, restore a good copy of one.")


def restore_candidate(model_dir: str, *,
                      excluded: Collection[str] = (),
                      broken: Optional[List[str]] = None,
                      contents: Optional[Contents] = None,
                      sleep: Callable[[float], None] = time.sleep
                      ) -> Optional[Tuple[str, int]]:
  """The newest checkpoint of the run to restore, without reading it all:
  its index and its global step read back (a small read), and it is not in
  `excluded`.

  Args:
    model_dir: the directory.
    excluded: prefixes known not to restore (they failed before).
    broken: (prefix, reason) of each checkpoint skipped here is appended
      to it.
    contents: a `scan` of `model_dir` made just before.
    sleep: waits between retries.

  Returns:
    (prefix, global step), or None when no checkpoint is left.

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  if contents is None:
    contents = scan(model_dir, sleep=sleep)
  for prefix in contents.checkpoints:
    if prefix in excluded:
      continue
    try:
      step = storage.retry(lambda p=prefix: checkpoint_global_step(p),
                           f"reading checkpoint {prefix}", sleep=sleep)
    except storage.StorageError:
      raise
    except Exception as error:  # pylint: disable=broad-except
      # What reading a broken file raises varies (OpError, ValueError, the
      # reader's IndexError for a truncated file).
      reason = storage.first_line(error)
      logging.warning("Skipping checkpoint %s, which does not read back "
                      "(%s); falling back to the previous one.", prefix,
                      reason)
      if broken is not None:
        broken.append((prefix, reason))
      continue
    return prefix, step
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


def check_matches(prefix: str, variables: Sequence[tf.Variable]) -> None:
  """Raises CheckpointMismatchError unless `prefix` has every variable with
  its shape and dtype; the message lists every difference."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  missing, shape_differs, dtype_differs = [], [], []
  for variable in variables:
    name = variable.op.name
    if name not in shapes:
      missing.append(name)
      continue
    if variable.shape.is_fully_defined() and list(shapes[name]) != (
        variable.shape.as_list()):
      shape_differs.append(f"{name}: checkpoint {tuple(shapes[name])} vs "
                           f"model {tuple(variable.shape.as_list())}")
    if dtypes[name].base_dtype != variable.dtype.base_dtype:
      dtype_differs.append(f"{name}: checkpoint {dtypes[name].name} vs model "
                           f"{variable.dtype.base_dtype.name}")
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


def prepare_model_dir(model_dir: str, *, label: Optional[str] = None,
                      sleep: Callable[[float], None] = time.sleep) -> None:
  """Creates `model_dir` and checks it is a writable directory.

  Args:
    model_dir: the directory.
    label: how messages name it; default "`model_dir` ('<path>')".
    sleep: waits between retries.

  Raises:
    ValueError: `model_dir` is a file, its bucket does not exist, access is
      refused, or it cannot be created or written (the reason is in the
      message).
    StorageError: storage kept failing.
  """
  label = label or f"`model_dir` ({model_dir!r})"
  hint = ""
  if model_dir.startswith("gs://"):
    hint = (" For gs:// the bucket must exist and the credentials must allow "
            "writing to it (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
            "application-default login`).")
  try:
    if model_dir.startswith("gs://"):
      # TF's makedirs retries a missing bucket forever; ask first.
      bucket = "gs://" + model_dir[len("gs://"):].split("/", 1)[0]
      if storage.stat_or_none(bucket, sleep=sleep) is None:
        raise ValueError(f"{label} is not a writable directory: bucket "
                         f"{bucket} does not exist.{hint}")
    status = storage.stat_or_none(model_dir, sleep=sleep)
    if status is not None and not status.is_directory:
      raise ValueError(f"{label} is a file, not a directory.")
    probe = join(model_dir, WRITE_PROBE)

    def make_and_probe():
      tf.io.gfile.makedirs(model_dir)
      with tf.io.gfile.GFile(probe, "w") as f:
        f.write("ok")
      tf.io.gfile.remove(probe)

    storage.retry(make_and_probe, f"creating {model_dir}", sleep=sleep)
  except storage.StorageError as error:
    if storage.kind(error.__cause__) == "access":
      raise ValueError(f"{label} is not a writable directory: access "
                       f"refused ({storage.first_line(error.__cause__)})."
                       f"{hint}") from error
    raise
  except (tf.errors.OpError, OSError) as error:
    raise ValueError(f"{label} is not a writable directory: "
                     f"{str(error).splitlines()[0]}{hint}") from error


def remove_leftovers(contents: Contents) -> None:
  """Removes the partial files of the run's own interrupted saves."""
  for leftover in contents.leftovers:
    logging.warning("Removing %s, left by an interrupted save.", leftover)
    try:
      if tf.io.gfile.isdir(leftover):
        tf.io.gfile.rmtree(leftover)
      else:
        tf.io.gfile.remove(leftover)
    except tf.errors.NotFoundError:
      pass


def enforce_keep_max(model_dir: str, owned_oldest_first: Sequence[str],
                     keep_max: int) -> List[str]:
  """Deletes the oldest of `owned_oldest_first` beyond `keep_max` (0 keeps
  all) and points the state file at what is kept; returns what is kept.

  A lowered `keep_checkpoint_max` is so enforced when a run starts, not one
  checkpoint per save.
  """
  owned = list(owned_oldest_first)
  if not keep_max or len(owned) <= keep_max:
    return owned
  expired, kept = owned[:-keep_max], owned[-keep_max:]
  tf.compat.v1.train.update_checkpoint_state(
      model_dir, _paths.state_file_entry(model_dir, kept[-1]),
      all_model_checkpoint_paths=[_paths.state_file_entry(model_dir, p)
                                  for p in kept])
  for prefix in expired:
    logging.info("Deleting %s: keep_checkpoint_max is %d.", prefix, keep_max)
    _paths.delete_checkpoint(prefix)
  return kept


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
    broken: (prefix, reason) of newer checkpoints that did not read back.
  """
  checkpoint: Optional[str]
  step: int
  recent: List[str]
  broken: Tuple[Tuple[str, str], ...] = ()


def resume_point(model_dir: str, basename: str = BASENAME, *,
                 after: Optional[CheckpointRestoreError] = None,
                 previous: Optional[ResumePoint] = None,
                 sleep: Callable[[float], None] = time.sleep) -> ResumePoint:
  """Lists `model_dir`, logs what the run ignores there, removes its own
  interrupted saves' leftovers, and finds the checkpoint to resume from:
  the newest whose index and global step read back (it is read in full
  only by restoring it).

  Call it holding the lease on `model_dir` (leftovers are only leftovers
  when no other trainer is writing).

  Args:
    model_dir: the directory.
    basename: the run's checkpoint basename.
    after: restoring `previous.checkpoint` failed so: find an older one.
    previous: the resume point that failed (with `after`).
    sleep: waits between retries.

  Raises:
    NoRestorableCheckpointError: checkpoints exist, none reads back.
    StorageError: storage kept failing, or refused access.
  """
  contents = scan(model_dir, basename, sleep=sleep)
  broken = list(previous.broken) if previous is not None else []
  if after is not None:
    logging.warning("Checkpoint %s does not restore (%s); falling back to "
                    "the previous one.", after.checkpoint, after.reason)
    broken.append((after.checkpoint, after.reason))
    # Only checkpoints older than the one that failed (every one in
    # `broken` is newer or it).
    contents = dataclasses.replace(contents, checkpoints=[
        p for p in contents.checkpoints
        if checkpoint_step(p) < checkpoint_step(after.checkpoint)])
  else:
    log_ignored(model_dir, contents, basename)
    remove_leftovers(contents)
  found = restore_candidate(model_dir, broken=broken, contents=contents,
                            sleep=sleep)
  if found is None:
    if broken:
      raise none_restorable(model_dir, [f"{p} ({r})" for p, r in broken])
    logging.info("No checkpoint of this run in %s: starting from scratch.",
                 model_dir)
    return ResumePoint(checkpoint=None, step=0, recent=[])
  latest, step = found
  if broken:
    logging.warning("Resuming from %s, the newest checkpoint that reads "
                    "back.", latest)
  recent = [p for p in reversed(contents.checkpoints)
            if checkpoint_step(p) <= checkpoint_step(latest)]
  return ResumePoint(checkpoint=latest, step=step, recent=recent,
                     broken=tuple(broken))

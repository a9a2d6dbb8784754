"""What in `model_dir` belongs to a run.

A run owns exactly the checkpoints `<model_dir>/<basename>-<step>` (basename
`model.ckpt`) whose files are in `model_dir`, and the partial files its own
interrupted saves leave (`<basename>-<step>...tempstate<n>`,
`<basename>-<step>_temp/`, `checkpoint.tmp<hex>`) and its interrupted lease
writes (`.tpu_harness_lease.json.<hex>.tmp`). Everything else is left
alone and, where it looks like a checkpoint, named in the log: other
basenames (`best.ckpt-20`, `pretrained-50`), state-file entries that point
outside `model_dir` (a copied directory whose state file holds absolute
paths), user files. Which of the run's checkpoints to restore is
`tpu_harness._model_dir.restore_order`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
import uuid
from typing import Callable, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from hooks import paths
from hooks import retention
from tpu_harness import errors
from tpu_harness._model_dir import storage

BASENAME = "model.ckpt"
_STEP = re.compile(r"-(\d+)$")
WRITE_PROBE = ".tpu_harness_write_probe"
LEASE_NAME = ".tpu_harness_lease.json"  # tpu_harness._model_dir.lease's file.


def checkpoint_step(prefix: str) -> Optional[int]:
  """The step in a `name-STEP` checkpoint prefix, or None."""
  match = _STEP.search(os.path.basename(prefix))
  return int(match.group(1)) if match else None


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
      rf"checkpoint\.tmp[0-9a-f]{{32}}|"
      rf"{re.escape(WRITE_PROBE)}(\.[0-9a-f]{{32}})?|"
      rf"{re.escape(LEASE_NAME)}\.[0-9a-f]{{32}}\.tmp)$")
  owned, leftovers, foreign = [], [], []
  for name in names:
    match = owned_index.match(name)
    if match:
      owned.append((int(match.group(1)), paths.join(model_dir, name[:-6])))
    elif leftover.match(name):
      leftovers.append(paths.join(model_dir, name))
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
  state = _state(model_dir)
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
    # Named for this call: two trainers starting together must not remove
    # each other's probe (the loser of the lease would fail here instead).
    probe = paths.join(model_dir, f"{WRITE_PROBE}.{uuid.uuid4().hex}")

    def make_and_probe():
      tf.io.gfile.makedirs(model_dir)
      with tf.io.gfile.GFile(probe, "w") as f:
        f.write("ok")
      tf.io.gfile.remove(probe)

    storage.retry(make_and_probe, f"creating {model_dir}", sleep=sleep,
                  exists=lambda: storage.has_entries(model_dir))
  except errors.StorageError as error:
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


# TF's default keep_checkpoint_every_n_hours: its Saver keeps none for good.
_KEEPS_NONE_FOR_GOOD = 10000.0


def _state(model_dir: str):
  """`model_dir`'s CheckpointState (its paths made whole by TF), or None
  where there is none or it cannot be read."""
  try:
    return tf.train.get_checkpoint_state(model_dir)
  except Exception:  # pylint: disable=broad-except  # A garbled state file.
    return None


def _listed(model_dir: str) -> set:
  """The checkpoints `model_dir`'s state file lists (normalized); none
  where it cannot be read."""
  state = _state(model_dir)
  return set() if state is None else {
      _normalized(path) for path in state.all_model_checkpoint_paths}


def enforce_keep_max(model_dir: str, owned_oldest_first: Sequence[str],
                     keep_max: int,
                     every_n_hours: float = _KEEPS_NONE_FOR_GOOD
                     ) -> List[str]:
  """Deletes the oldest of `owned_oldest_first` beyond `keep_max` (0 keeps
  all) and points the state file at what is kept; returns what is kept.

  A lowered `keep_checkpoint_max` is so enforced when a run starts, not one
  checkpoint per save. With `every_n_hours` set (below TF's default), the
  checkpoints older than the oldest the state file lists are left out of
  the rotation, as TF's Saver leaves those it kept for good (one per
  `every_n_hours`, taken out of its list); all are rotated where the state
  file lists none of them (unread, or another directory's).
  """
  owned = list(owned_oldest_first)
  if every_n_hours < _KEEPS_NONE_FOR_GOOD:
    listed = _listed(model_dir)
    first = next((index for index, prefix in enumerate(owned)
                  if _normalized(prefix) in listed), 0)
    owned = owned[first:]
  kept, expired = retention.RetainLatest(keep_max).split(owned)
  if expired:
    retention.apply(model_dir, kept, expired,
                    lambda prefix: paths.state_file_entry(model_dir, prefix),
                    why=f"keep_checkpoint_max is {keep_max}")
  return kept

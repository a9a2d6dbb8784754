"""Finding a checkpoint that restores, and refusing one that cannot.

A crash, kill or preemption may leave the newest checkpoint truncated or
half-rewritten, the state file garbled, or the temporary files of an
unfinished save. These functions find the newest checkpoint whose every
tensor reads back (index present, data complete, checksums right), warn
about each one skipped, and check a checkpoint against the model's variables
before a session is created, so a mismatch is one clear error that lists the
differences instead of a failed restore. All I/O is through `tf.io.gfile` and
TF's checkpoint reader, so `gs://` directories work the same.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf

_STEP = re.compile(r"-(\d+)$")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not have the variables or shapes the model has."""


def checkpoint_step(prefix: str) -> Optional[int]:
  """The step in a `name-STEP` checkpoint prefix, or None."""
  match = _STEP.search(os.path.basename(prefix))
  return int(match.group(1)) if match else None


def candidates(model_dir: str) -> List[str]:
  """Checkpoint prefixes in `model_dir`, newest step first.

  The union of what the state file lists and the `*.index` files present, so
  a garbled or stale state file does not hide checkpoints.
  """
  prefixes = set()
  try:
    state = tf.train.get_checkpoint_state(model_dir)
  except Exception as error:  # pylint: disable=broad-except  # Garbled file.
    logging.warning("Ignoring unreadable checkpoint state in %s: %s",
                    model_dir, error)
    state = None
  if state is not None:
    # get_checkpoint_state has already resolved relative entries against
    # model_dir; normalize so they match the glob's spelling.
    for path in list(state.all_model_checkpoint_paths) + [
        state.model_checkpoint_path]:
      if path:
        prefixes.add(path if "://" in path else os.path.normpath(path))
  for index in tf.io.gfile.glob(os.path.join(model_dir, "*.index")):
    prefix = index[:-len(".index")]
    prefixes.add(prefix if "://" in prefix else os.path.normpath(prefix))
  ordered = [p for p in prefixes if checkpoint_step(p) is not None]
  return sorted(ordered, key=lambda p: (checkpoint_step(p), p), reverse=True)


def unreadable_reason(prefix: str) -> Optional[str]:
  """None if every tensor of the checkpoint reads back, else why not."""
  try:
    reader = tf.train.load_checkpoint(prefix)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception as error:  # pylint: disable=broad-except
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
  return None


def latest_restorable(model_dir: str) -> Optional[str]:
  """The newest checkpoint in `model_dir` that reads back completely.

  Logs a warning for each newer one that does not, and for a state file
  whose latest entry is not the one returned.
  """
  if not tf.io.gfile.isdir(model_dir):
    return None
  for prefix in candidates(model_dir):
    reason = unreadable_reason(prefix)
    if reason is None:
      try:
        stated = tf.train.latest_checkpoint(model_dir)
      except Exception:  # pylint: disable=broad-except
        stated = None
      if stated is not None and os.path.normpath(stated) != os.path.normpath(
          prefix) and checkpoint_step(stated) != checkpoint_step(prefix):
        logging.warning("The checkpoint state names %s, but the newest "
                        "checkpoint that reads back is %s; using it.", stated,
                        prefix)
      return prefix
    logging.warning("Skipping checkpoint %s, which does not read back "
                    "(%s); falling back to the previous one.", prefix, reason)
  return None


def check_matches(prefix: str, variables: Sequence[tf.Variable]) -> None:
  """Raises CheckpointMismatchError unless `prefix` has every variable with
  its shape; the message lists every missing name and shape difference."""
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  missing, different = [], []
  for variable in variables:
    name = variable.op.name
    if name not in shapes:
      missing.append(name)
    elif variable.shape.is_fully_defined() and list(shapes[name]) != (
        variable.shape.as_list()):
      different.append(f"{name}: checkpoint {tuple(shapes[name])} vs model "
                       f"{tuple(variable.shape.as_list())}")
  if missing or different:
    parts = []
    if missing:
      parts.append(f"missing from the checkpoint: {sorted(missing)}")
    if different:
      parts.append(f"shape differs: {sorted(different)}")
    raise CheckpointMismatchError(
        f"Checkpoint {prefix} was not written by this model ("
        + "; ".join(parts) + "). Use another `model_dir`, or pass "
        "`warm_start_from` to start from a compatible checkpoint.")


def prepare_model_dir(model_dir: str) -> None:
  """Creates `model_dir` and checks it is a writable directory; removes the
  partial files of saves that a kill interrupted.

  Raises:
    ValueError: `model_dir` is a file, or cannot be created or written.
  """
  hint = ""
  if model_dir.startswith("gs://"):
    hint = (" For gs:// the bucket must exist and the credentials must allow "
            "writing to it (GOOGLE_APPLICATION_CREDENTIALS, or `gcloud auth "
            "application-default login`).")
  probe = os.path.join(model_dir, ".tpu_harness_write_probe")
  try:
    if model_dir.startswith("gs://"):
      # TF's makedirs retries a missing bucket forever; ask first.
      bucket = "gs://" + model_dir[len("gs://"):].split("/", 1)[0]
      if not tf.io.gfile.isdir(bucket):
        raise ValueError(f"`model_dir` ({model_dir!r}) is not a writable "
                         f"directory: bucket {bucket} does not exist.{hint}")
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
      raise ValueError(f"`model_dir` ({model_dir!r}) is a file, not a "
                       f"directory.")
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(probe, "w") as f:
      f.write("ok")
    tf.io.gfile.remove(probe)
  except (tf.errors.OpError, OSError) as error:
    raise ValueError(f"`model_dir` ({model_dir!r}) is not a writable "
                     f"directory: {str(error).splitlines()[0]}{hint}"
                     ) from error
  for leftover in interrupted_save_files(model_dir):
    logging.warning("Removing %s, left by an interrupted save.", leftover)
    if tf.io.gfile.isdir(leftover):
      tf.io.gfile.rmtree(leftover)
    else:
      tf.io.gfile.remove(leftover)


def interrupted_save_files(model_dir: str) -> List[str]:
  """What an interrupted save leaves: TF writes each checkpoint file as
  `<file>.tempstate<random>` and renames it when complete; sharded savers
  write into a `<prefix>_temp` directory first."""
  return sorted(
      tf.io.gfile.glob(os.path.join(model_dir, "*.tempstate*"))
      + [path for path in tf.io.gfile.glob(os.path.join(model_dir, "*_temp"))
         if tf.io.gfile.isdir(path)])

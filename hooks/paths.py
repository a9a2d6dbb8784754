"""Paths and TensorFlow's file patterns (private to the hooks and runner).

TensorFlow's checkpoint code globs the paths it is given, unescaped:
`Saver.restore` and `tf.train.load_checkpoint` look a checkpoint up with
`GetMatchingPaths`, checkpoint rotation deletes the files a pattern matches,
and `tf.train.latest_checkpoint` matches too. A directory named like
`sweep_lr[0.01]` therefore holds checkpoints that TF cannot find again
(checked on TF 2.21: restore fails, rotation deletes nothing), and one named
`run*` could match another run's files. Such paths are refused at the public
API; where our own code matches files, it escapes the fixed part.
"""

from __future__ import annotations

import os
import re
import uuid

import tensorflow as tf

# The characters TensorFlow's file matching treats specially.
GLOB_CHARACTERS = "*?[\\"


def escape(path: str) -> str:
  """`path` with TF's glob characters escaped, to match itself only."""
  return re.sub(r"([*?\[\\])", r"\\\1", path)


def check_no_glob_characters(name: str, path: str) -> str:
  """Returns `path` if it has none of TF's glob characters.

  Raises:
    ValueError: `path` contains `*`, `?`, `[` or a backslash; the message
      names `name`, shows the path and suggests one without them.
  """
  found = sorted({c for c in path if c in GLOB_CHARACTERS})
  if found:
    suggestion = re.sub(r"[*?\[\]\\]+", "_", path).strip("_")
    allowed = " ".join(repr(c) for c in GLOB_CHARACTERS)
    raise ValueError(
        f"`{name}` ({path!r}) contains {' '.join(found)}, which TensorFlow's "
        f"checkpoint code (Saver.restore, checkpoint rotation, "
        f"tf.train.latest_checkpoint) treats as a file pattern: checkpoints "
        f"written there could not be found again. Use a path without "
        f"{allowed}, e.g. {suggestion!r}.")
  return path


def join(directory: str, name: str) -> str:
  """`directory/name`, for local paths and URLs (gs://) alike."""
  if "://" in directory:
    return directory.rstrip("/") + "/" + name
  return os.path.join(directory, name)


def state_file_entry(save_dir: str, prefix: str) -> str:
  """What to give `tf.compat.v1.train.update_checkpoint_state(save_dir, ...)`
  so that the state file records `prefix` by its base name, relative to
  `save_dir`.

  That function keeps a path as given when `save_dir` is absolute, and makes
  it relative to `save_dir` (os.path.relpath) when `save_dir` is relative or
  a URL: a bare base name would then become `../../name`.
  """
  name = prefix.rstrip("/").rsplit("/", 1)[-1]
  return name if os.path.isabs(save_dir) else join(save_dir, name)


def delete_checkpoint(prefix: str) -> None:
  """Deletes the files of checkpoint `prefix` (`prefix.*`: index, data,
  meta), matching the prefix literally; the index first, so that a reader
  beside (an evaluation) finds the checkpoint gone as a whole rather than
  an index without its data."""
  files = tf.io.gfile.glob(escape(prefix) + ".*")
  for path in sorted(files, key=lambda path: not path.endswith(".index")):
    try:
      tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
      pass


def write_atomically(path: str, contents: str) -> None:
  """Writes `contents` to `path` through a temporary file beside it and a
  rename, as `tf.io.write_graph` does, but removes the temporary file when
  the write or the rename fails (a full disk would otherwise keep it, and
  a job restarted in a loop would pile them up).

  Raises:
    tf.errors.OpError: the write or the rename failed.
  """
  temporary = f"{path}.tmp{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(temporary, "w") as f:
      f.write(contents)
    tf.io.gfile.rename(temporary, path, overwrite=True)
  except BaseException:
    try:
      tf.io.gfile.remove(temporary)
    except tf.errors.OpError:
      pass
    raise

"""Which checkpoints to keep, and dropping the others safely.

`RetainLatest` is the policy (pure: names in, names out); `apply` does the
I/O in the one safe order: the `checkpoint` state file first lists only
what is kept, and only then are the others deleted, so a kill in between
leaves a state file naming complete checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Sequence, Tuple

from absl import logging
import tensorflow as tf

from hooks import paths
from hooks import validation


@dataclasses.dataclass(frozen=True)
class RetainLatest:
  """Keeps the newest `count` checkpoints; 0 keeps all.

  Attributes:
    count: how many to keep (`max_to_keep`, `keep_checkpoint_max`).
  """
  count: int

  def __post_init__(self):
    validation.non_negative_int("count", self.count)

  def split(self, oldest_first: Sequence[str]
            ) -> Tuple[List[str], List[str]]:
    """(kept, expired) of `oldest_first`, each oldest first."""
    names = list(oldest_first)
    if not self.count or len(names) <= self.count:
      return names, []
    return names[-self.count:], names[:-self.count]


def apply(directory: str, kept: Sequence[str], expired: Sequence[str],
          state_entry: Callable[[str], str] = lambda prefix: prefix,
          why: str = "") -> None:
  """Points `directory`'s state file at `kept` (the newest, last, is the
  latest), then deletes each of `expired`'s files.

  Args:
    directory: the checkpoint directory.
    kept: prefixes kept, oldest first; not empty.
    expired: prefixes to delete.
    state_entry: how the state file names a prefix (relative or absolute).
    why: said in the log line of each deletion.
  """
  tf.compat.v1.train.update_checkpoint_state(
      directory, state_entry(kept[-1]),
      all_model_checkpoint_paths=[state_entry(prefix) for prefix in kept])
  for prefix in expired:
    if why:
      logging.info("Deleting %s: %s.", prefix, why)
    paths.delete_checkpoint(prefix)

"""What a checkpoint holds of the training input's position.

Per host, three variables (keys below; host h > 0 of a pod has its own
under `tpu_harness_input/host_<h>/`): the serialized iterator state (empty
where none was saved), counts (elements to drop after restoring it, the
elements the run's `take` had given, the global step the pass over the
input started at, whether the pass was used up) and the window shuffles'
seeds. `read_saved` reads them back from a checkpoint file.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from tpu_harness._model_dir import storage

# The most a checkpoint may hold of one host's position; a larger one is
# not saved (the run falls back to skipping, saying why).
MAX_STATE_BYTES = 2**20

# Checkpoint keys (the variables' names) of host 0's position; host h > 0
# of a pod has its own under `tpu_harness_input/host_<h>/`.
STATE_KEY = "tpu_harness_input/iterator_state"
COUNTS_KEY = "tpu_harness_input/counts"
SEEDS_KEY = "tpu_harness_input/seeds"
# skip, taken, pass_start, used_up (an earlier version saved two).
COUNTS = 4


def keys(host: int = 0) -> Tuple[str, str, str]:
  """The checkpoint keys of host `host`'s position: (state, counts, seeds)."""
  if host == 0:
    return STATE_KEY, COUNTS_KEY, SEEDS_KEY
  prefix = f"tpu_harness_input/host_{host}/"
  return prefix + "iterator_state", prefix + "counts", prefix + "seeds"


def fingerprint_key(host: int = 0) -> str:
  """The checkpoint key of host `host`'s input pipeline fingerprint (see
  `tpu_harness._infeed.fingerprint`)."""
  return keys(host)[0].rsplit("/", 1)[0] + "/fingerprint"


@dataclasses.dataclass(frozen=True)
class Saved:
  """An input position as a checkpoint holds it.

  Attributes:
    state: the serialized iterator; empty where none was saved (skip mode,
      or a pipeline whose position cannot be saved).
    skip: elements to read and drop after restoring `state`.
    taken: elements the pipeline's `take` had given at `state`.
    pass_start: the global step at which the pass over the input began.
    seeds: the window shuffles' seeds for the pass.
    used_up: the pass had read all of its input, and trained on all of
      it: a resumed run starts a new pass.
    fingerprint: the pipeline's fingerprint (JSON) when it was saved; empty
      in checkpoints of earlier versions.
  """
  state: bytes
  skip: int
  taken: int
  pass_start: int
  seeds: Tuple[int, ...]
  used_up: bool = False
  fingerprint: str = ""


def read_saved(checkpoint: str, host: int = 0) -> Optional[Saved]:
  """The position of host `host`'s input saved in `checkpoint`, or None if
  it holds none (or one in an earlier version's form).

  Raises:
    StorageError: storage kept failing, or refused access.
  """
  return storage.retry(
      lambda: _read_saved(checkpoint, host),
      f"reading the input position in {checkpoint}",
      exists=lambda: storage.checkpoint_exists(checkpoint))


def _read_saved(checkpoint: str, host: int) -> Optional[Saved]:
  state_key, counts_key, seeds_key = keys(host)
  reader = tf.train.load_checkpoint(checkpoint)
  if not reader.has_tensor(counts_key):
    return None
  counts = [int(value) for value in reader.get_tensor(counts_key)]
  if len(counts) != COUNTS:
    return None
  state = (reader.get_tensor(state_key) if reader.has_tensor(state_key)
           else b"")
  seeds = (tuple(int(v) for v in reader.get_tensor(seeds_key))
           if reader.has_tensor(seeds_key) else ())
  key = fingerprint_key(host)
  fingerprint = (reader.get_tensor(key) if reader.has_tensor(key) else b"")
  skip, taken, pass_start, used_up = counts
  return Saved(state=state, skip=skip, taken=taken, pass_start=pass_start,
               seeds=seeds, used_up=bool(used_up),
               fingerprint=fingerprint.decode("utf-8", "replace"))

"""The input pipeline's position, saved with each checkpoint: resume exactly
without reading again the input already trained on.

`RunConfig.resume_input` chooses what a resumed `train()` feeds first:

- `exact` (default): the element an uninterrupted run would have fed next.
  Each checkpoint holds the state of the host infeed's iterator (tf.data's
  own iterator checkpointing: shuffle buffers, file positions, random
  state) and a resumed run restores it instead of reading the elements
  before it. Where the state cannot be saved (the dataset has external
  state, e.g. a `py_function` source) or a checkpoint holds none (written
  by an older version, in another mode, or by a user's Saver), the run
  falls back to `skip`, with a warning.
- `skip`: read and drop the steps of input already trained on; exact, but
  a resume at step N reads N steps of input first.
- `restart`: call `input_fn` afresh and start from its first element, as
  TPUEstimator did; fastest, not exact.

How `exact` accounts for read-ahead. The infeed reads ahead of the device
loop (a queue of up to two chunks, or a loop being streamed), so the
iterator's state at a save is past the saved step. The host thread
therefore snapshots the iterator (its serialized state, and how many
elements it had read) when it starts and after each fill that did not meet
the input's end; a save at step s stores the newest snapshot taken at or
before the element s needs, and how many elements to read and drop after
restoring it: none when the loops consumed exactly what the infeed read (a
save at the end of a run, or of a streamed loop), else at most a few
chunks. A save waits for the snapshot of a fill its step has consumed. The
pipeline's `take(max_steps)` (see `HostInfeed`) is part of the saved state;
its count is fed when the iterator is initialized, so the count it had given
is saved as well. Serializing copies the pipeline's buffers (a shuffle
buffer of decoded images is large): that is host time once per fill.

The values live in two variables outside every collection (the model's
variables, `check_matches`, warm-starting and evaluation do not see them),
saved by the training Saver and assigned by `Listener` just before each
save; restore reads them from the checkpoint file, not through the Saver,
so that checkpoints without them restore as before.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import List, Optional, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness import _tf_internals

EXACT = "exact"
SKIP = "skip"
RESTART = "restart"
MODES = (EXACT, SKIP, RESTART)

# How long a save waits for the snapshot of a fill its step has consumed.
_SNAPSHOT_WAIT_SECS = 60.0

# Checkpoint keys (the variables' names) of host 0's position; host h > 0
# of a pod has its own under `tpu_harness_input/host_<h>/`.
STATE_KEY = "tpu_harness_input/iterator_state"
COUNTS_KEY = "tpu_harness_input/counts"


def keys(host: int = 0) -> Tuple[str, str]:
  """The checkpoint keys of host `host`'s position: (state, counts)."""
  if host == 0:
    return STATE_KEY, COUNTS_KEY
  return (f"tpu_harness_input/host_{host}/iterator_state",
          f"tpu_harness_input/host_{host}/counts")


@dataclasses.dataclass(frozen=True)
class Saved:
  """An input position as a checkpoint holds it.

  Attributes:
    state: the serialized iterator.
    skip: elements to read and drop after restoring `state`.
    taken: elements the pipeline's `take` had given at `state`.
  """
  state: bytes
  skip: int
  taken: int


def read_saved(checkpoint: str, host: int = 0) -> Optional[Saved]:
  """The position of host `host`'s input saved in `checkpoint`, or None if
  it holds none."""
  state_key, counts_key = keys(host)
  reader = tf.train.load_checkpoint(checkpoint)
  if not (reader.has_tensor(state_key) and reader.has_tensor(counts_key)):
    return None
  state = reader.get_tensor(state_key)
  if not state:  # Saved by a run whose input could not be serialized.
    return None
  skip, taken = (int(value) for value in reader.get_tensor(counts_key))
  return Saved(state=state, skip=skip, taken=taken)


class InputPosition:
  """Saves the training input's position with each checkpoint and restores
  it on resume (the `exact` mode): one `HostPosition` per host's infeed."""

  def __init__(self, checkpoint: Optional[str], start_step: int):
    """Args:
      checkpoint: the checkpoint training resumes from, or None.
      start_step: its global step (0 without one).
    """
    self._checkpoint = checkpoint
    self._start_step = start_step
    self._hosts: List[HostPosition] = []
    self._warned = False

  def host(self, index: int) -> "HostPosition":
    """Host `index`'s position (its variables built in the default graph
    when first asked for; hosts in order)."""
    while len(self._hosts) <= index:
      self._hosts.append(HostPosition(self, len(self._hosts),
                                      self._checkpoint, self._start_step))
    return self._hosts[index]

  @property
  def variables(self) -> List[tf.Variable]:
    """What the training Saver saves besides the model."""
    return [v for host in self._hosts for v in host.variables]

  def disable(self, why: str) -> None:
    """Saves no position from now on (checkpoints hold empty ones)."""
    for host in self._hosts:
      host.disable(why)

  def warn_disabled(self, why: str) -> None:
    if not self._warned:
      self._warned = True
      logging.warning("The input position is not saved with checkpoints "
                      "(%s); a resumed run will read and drop the steps of "
                      "input already trained on.", why)

  def listener(self) -> tf.compat.v1.train.CheckpointSaverListener:
    """Assigns the positions at the step being saved, before each save."""
    return _Listener(self._hosts)


class HostPosition:
  """One host infeed's position: snapshots of its iterator, the variables
  a save writes them to, and the restore at start."""

  def __init__(self, group: InputPosition, host: int,
               checkpoint: Optional[str], start_step: int):
    """Builds the position's variables in the default graph."""
    self._group = group
    self._host = host
    self._checkpoint = checkpoint
    self._start_step = start_step
    state_key, counts_key = keys(host)
    with tf.compat.v1.get_default_graph().name_scope(None):
      self._state_var = tf.compat.v1.Variable(
          b"", name=state_key, trainable=False, collections=[],
          use_resource=True)
      self._counts_var = tf.compat.v1.Variable(
          tf.zeros([2], tf.int64), name=counts_key, trainable=False,
          collections=[], use_resource=True)
      self._state_in = tf.compat.v1.placeholder(tf.string, [])
      self._counts_in = tf.compat.v1.placeholder(tf.int64, [2])
      self._assign = tf.group(self._state_var.assign(self._state_in),
                              self._counts_var.assign(self._counts_in))
    self._serialize = None
    self._restore = None
    self._lock = threading.Lock()
    self._changed = threading.Condition(self._lock)
    # (elements read since `begin`, the state then, take's count then).
    self._snapshots: List[Tuple[int, bytes, int]] = []
    # Where the fill in progress ends at most (elements read), or None.
    self._filling_to: Optional[int] = None
    self._skip = 0
    self._disabled: Optional[str] = None

  @property
  def variables(self) -> List[tf.Variable]:
    return [self._state_var, self._counts_var]

  def disable(self, why: str) -> None:
    """Saves no position from now on (checkpoints hold an empty one)."""
    self._group.warn_disabled(why)
    self._disabled = why

  # The infeed's side.

  def attach(self, iterator) -> None:
    """Builds the ops that serialize and restore `iterator` (the infeed's,
    over the dataset after its `take`)."""
    resource = _tf_internals.iterator_resource(iterator)
    # FAIL: a dataset whose state lives outside tf.data (a py_function,
    # a captured variable) cannot be restored exactly.
    self._serialize = tf.io.serialize_tensor(tf.raw_ops.SerializeIterator(
        resource_handle=resource, external_state_policy=2))
    self._restore_in = tf.compat.v1.placeholder(tf.string, [])
    self._restore = tf.raw_ops.DeserializeIterator(
        resource_handle=resource,
        serialized=tf.io.parse_tensor(self._restore_in, tf.variant))

  def saved(self) -> Optional[Saved]:
    """The position to restore, read from the checkpoint; None (with a
    warning) when it holds none."""
    if self._checkpoint is None:
      return None
    saved = read_saved(self._checkpoint, self._host)
    if saved is None:
      logging.warning(
          "Checkpoint %s holds no input position (saved by an earlier "
          "version, with resume_input='skip' or 'restart', by a user's "
          "Saver, or from an input that could not be saved): reading and "
          "dropping the %d steps of input already trained on.",
          self._checkpoint, self._start_step)
    return saved

  def restore(self, session, saved: Saved) -> bool:
    """Restores the initialized iterator to `saved`; False (with a warning)
    if it does not fit the input pipeline."""
    try:
      session.run(self._restore, {self._restore_in: saved.state})
      return True
    except tf.errors.OpError as error:
      logging.warning(
          "The input position saved in %s does not fit this input pipeline "
          "(was `input_fn` changed?): %s. Reading and dropping the %d steps "
          "of input already trained on instead.", self._checkpoint,
          error.message.splitlines()[0], self._start_step)
      return False

  def begin(self, session, skip: int, taken: int) -> None:
    """After the iterator is initialized (and restored): records its state
    as the first snapshot; `skip` elements are read and dropped next."""
    with self._lock:
      self._snapshots = []
      self._skip = skip
      self._filling_to = None
    self._take(session, 0, taken)

  def fill_started(self, reads_after: int) -> None:
    """Host thread: a fill starts that ends at most `reads_after` elements
    read since `begin`."""
    with self._lock:
      self._filling_to = reads_after

  def fill_ended(self, session, reads: int, taken: int,
                 complete: bool) -> None:
    """Host thread: the fill ended with `reads` elements read since
    `begin` (and `taken` by the take, over this and earlier runs); if it
    read all it asked for (the input has not ended), snapshots the
    iterator."""
    try:
      if complete:
        self._take(session, reads, taken)
    finally:
      with self._lock:
        self._filling_to = None
        self._changed.notify_all()

  def _take(self, session, reads: int, taken: int) -> None:
    if self._disabled is not None or self._serialize is None:
      return
    try:
      state = session.run(self._serialize)
    except tf.errors.OpError as error:
      self.disable(f"the input pipeline's state cannot be saved: "
                   f"{error.message.splitlines()[0]}")
      return
    with self._lock:
      self._snapshots.append((reads, state, taken))

  def consumed(self, steps: int) -> None:
    """At least `steps` elements past the skipped ones were trained on:
    snapshots older than the one a save would use are dropped."""
    with self._lock:
      self._drop_before(self._skip + steps)

  def at_step(self, global_step: int) -> Tuple[bytes, List[int]]:
    """(state, [skip, taken]) to save with the checkpoint of
    `global_step`; empty when nothing can be saved."""
    needed = self._skip + global_step - self._start_step
    with self._lock:
      # The loops ran every element of a fill in progress that ends by
      # `needed`: it is done but for its snapshot; wait for that.
      self._changed.wait_for(
          lambda: self._filling_to is None or self._filling_to > needed,
          timeout=_SNAPSHOT_WAIT_SECS)
      if self._disabled is not None or not self._snapshots:
        return b"", [0, 0]
      self._drop_before(needed)
      reads, state, taken = self._snapshots[0]
    return state, [needed - reads, taken]

  def _drop_before(self, element: int) -> None:
    """Keeps the newest snapshot taken at or before `element` read, and
    newer ones (lock held)."""
    while (len(self._snapshots) > 1 and self._snapshots[1][0] <= element):
      self._snapshots.pop(0)

  def assign(self, session, global_step: int) -> None:
    state, counts = self.at_step(global_step)
    session.run(self._assign, {self._state_in: state,
                               self._counts_in: counts})


class _Listener(tf.compat.v1.train.CheckpointSaverListener):

  def __init__(self, hosts: List[HostPosition]):
    self._hosts = hosts

  def before_save(self, session, global_step_value):
    for host in self._hosts:
      host.assign(session, global_step_value)

"""One host infeed's input position: the rewrite of its input, the iterator
states read for saves, the variables a save writes them to, and the start
from a checkpoint's position (what `resume_policy` decides, done here: the
checkpoint read, the seeds fed, the restore run in the session).

`position.InputPosition` holds one per host's infeed and says how the run
saves and restores them (`RunConfig.resume_input`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import (TYPE_CHECKING, ContextManager, Dict, List, Optional,
                    Tuple)

from absl import logging
import numpy as np
import tensorflow as tf

from tpu_harness import _tf_internals
from tpu_harness._infeed import fingerprint as fingerprint_lib
from tpu_harness._infeed import length
from tpu_harness._infeed import record
from tpu_harness._infeed import resume_policy
from tpu_harness._infeed import rewrite as resumable_input
from tpu_harness._infeed import saveable
from tpu_harness._infeed import states as states_lib
from tpu_harness import _tf_message as tf_message

if TYPE_CHECKING:
  from tpu_harness._infeed.position import InputPosition


@dataclasses.dataclass(frozen=True)
class Start:
  """How a host's infeed starts: the feed for its iterator's initializer
  (besides the take's count), the saved state to restore (None: none),
  the elements the take gave before it, and the elements to read and drop
  after it."""
  feed: Dict[tf.Tensor, int]
  state: Optional[bytes]
  taken: int
  skip: int


class HostPosition:
  """One host infeed's position: its input's rewrite, the iterator states
  read for saves, the variables a save writes them to, and the restore at
  start."""

  def __init__(self, group: InputPosition, host: int):
    """Builds the position's variables in the default graph."""
    self._group = group
    self._host = host
    state_key, counts_key, seeds_key = record.keys(host)
    with tf.compat.v1.get_default_graph().name_scope(None):
      self._state_var = tf.compat.v1.Variable(
          b"", name=state_key, trainable=False, collections=[],
          use_resource=True)
      self._counts_var = tf.compat.v1.Variable(
          tf.zeros([record.COUNTS], tf.int64), name=counts_key,
          trainable=False,
          collections=[], use_resource=True)
      self._seeds_var = tf.compat.v1.Variable(
          tf.zeros([0], tf.int64), shape=tf.TensorShape([None]),
          name=seeds_key, trainable=False, collections=[], use_resource=True)
      self._state_in = tf.compat.v1.placeholder(tf.string, [])
      self._counts_in = tf.compat.v1.placeholder(tf.int64, [record.COUNTS])
      self._seeds_in = tf.compat.v1.placeholder(tf.int64, [None])
      self._fingerprint_var = tf.compat.v1.Variable(
          b"", name=record.fingerprint_key(host), trainable=False,
          collections=[], use_resource=True)
      self._fingerprint_in = tf.compat.v1.placeholder(tf.string, [])
      self._assign = tf.group(
          self._state_var.assign(self._state_in),
          self._counts_var.assign(self._counts_in),
          self._seeds_var.assign(self._seeds_in),
          self._fingerprint_var.assign(self._fingerprint_in))
    self._fingerprint: Optional[fingerprint_lib.Fingerprint] = None
    self._rewrite: Optional[resumable_input.Rewrite] = None
    self._serialize = None
    self._restore = None
    self._restore_in = None
    self._disabled: Optional[str] = None
    self._endless = False
    # This start's: the pass's first global step, its seeds, the elements
    # dropped after the start's state, and the states read for saves.
    self._pass_start = group.start_step
    self._seeds: List[int] = []
    self._skip = 0
    self._states = states_lib.StateLog(self._read_state)
    self._resumed = False
    # The decision and seeds of a start not yet run (made early by a save
    # at the start's step, `needs_start`), and the decision of the last
    # start run.
    self._planned: Optional[Tuple[resume_policy.Decision, List[int]]] = None
    self._decision: Optional[resume_policy.Decision] = None
    self._deciding = threading.Lock()

  @property
  def variables(self) -> List[tf.Variable]:
    return [self._state_var, self._counts_var, self._seeds_var,
            self._fingerprint_var]

  def disable(self, why: str) -> None:
    """Saves no iterator state from now on (only counts and seeds)."""
    if self._group.exact:
      self._group.warn_once(
          "disabled", "The training input's position is not saved with "
          "checkpoints (%s); %s", why,
          "the input is endless (repeat()): a resumed run, and a later "
          "train(), start a new pass from its first element, as "
          "TPUEstimator's train() did (resume_input='skip' reads and drops "
          "the steps already trained on instead, at the cost of reading "
          "them)." if self._endless else "a resumed run will read and drop "
          "the steps of input already trained on (resume_input='skip').",
          per_process=True)
    self._disabled = why

  @property
  def _saves_state(self) -> bool:
    return self._group.exact and self._disabled is None

  # Building.

  def rewriting(self) -> ContextManager:
    """Around the training `input_fn`'s call: its shuffles and caches are
    made resumable (`tpu_harness._infeed.rewrite`), in `skip` mode too, so
    that both modes feed the same elements in the same order; its
    interleaves in parallel in `exact` mode only (their order is the same
    either way, and tf.data's read faster where no position is saved)."""
    return self._recording(resumable_input.rewriting(
        tf.compat.v1.get_default_graph(), interleaves=self._group.exact))

  @contextlib.contextmanager
  def _recording(self, context):
    with context as rewrite:
      self._rewrite = rewrite
      yield rewrite

  def prepare(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The host's training dataset, set up to save its position (or, if it
    holds what a position cannot, left as it is and the position
    disabled, saying why)."""
    if not self._group.exact:
      return dataset
    self._endless = length.endless(dataset)
    findings = saveable.inspect(dataset)
    kept = self._rewrite.kept if self._rewrite is not None else []
    reasons = []
    if findings.unsaveable:
      reasons.append(
          f"the input pipeline has {', '.join(findings.unsaveable)}, whose "
          f"state a position cannot hold"
          + (f"; left as they were: {'; '.join(kept)}" if kept else ""))
    if findings.unordered:
      several = len(findings.unordered) > 1
      reasons.append(
          f"the input pipeline has {', '.join(findings.unordered)}, which "
          f"{'give' if several else 'gives'} elements in the order they are "
          f"ready: which of those in flight were given is not a position, "
          f"and tf.data cannot save one. deterministic=True there (or "
          f"tf.data.Options().deterministic = True) makes the position "
          f"exact, at some cost in throughput; skipping in an unordered "
          f"input drops about, not exactly, the elements trained on")
    if reasons:
      self.disable("; ".join(reasons))
      return dataset
    if findings.random_ops:
      self._group.warn_once(
          "random", "The training input uses stateful random ops (%s): a "
          "resumed run restarts their random stream from its seed, so its "
          "random augmentations differ from an uninterrupted run's (which "
          "elements it feeds, and in which order, do not). While the "
          "position is kept, TensorFlow 2.21 also logs \"FAILED_PRECONDITION: "
          "<op> is stateful\" for every element such a function gives (its "
          "symbolic checkpointing checks each one; TF_CPP_MIN_LOG_LEVEL=2 "
          "hides those lines). Stateless ops (tf.image.stateless_random_*) "
          "seeded from the element resume exactly, and log nothing.",
          ", ".join(findings.random_ops), per_process=True)
    self._fingerprint = fingerprint_lib.of(dataset)
    return saveable.symbolic(dataset)

  def attach(self, iterator) -> None:
    """Builds the ops that serialize and restore `iterator` (the infeed's,
    over the dataset after its `take`)."""
    if not self._group.exact:
      return
    resource = _tf_internals.iterator_resource(iterator)
    # Symbolic checkpointing ignores state outside tf.data; `prepare`
    # refused pipelines with any but random ops.
    self._serialize = tf.io.serialize_tensor(tf.raw_ops.SerializeIterator(
        resource_handle=resource, external_state_policy=1))
    self._restore_in = tf.compat.v1.placeholder(tf.string, [])
    self._restore = tf.raw_ops.DeserializeIterator(
        resource_handle=resource,
        serialized=tf.io.parse_tensor(self._restore_in, tf.variant))

  # Starting.

  def start(self, fresh: bool = False) -> Start:
    """How the infeed starts: restoring the checkpoint's position, or
    skipping the steps of its pass already trained on, or (`fresh`, or no
    checkpoint) a new pass. Which applies, `resume_policy` decides; this
    reads the checkpoint's position, logs what the decision says, and
    makes the shuffles' seeds.

    Raises:
      StorageError: reading the checkpoint's position kept failing.
    """
    group = self._group
    with self._deciding:
      decision, seeds = (self._planned if self._planned is not None
                         and not fresh else self._plan(fresh))
      self._planned = None
      self._decision = decision
      self._seeds = seeds
    if decision.warning is not None:
      group.warn_once(decision.why, "%s", decision.warning)
    if decision.info is not None:
      logging.info("%s", decision.info)
    self._resumed = decision.resumed
    self._pass_start = decision.pass_start
    feed = self._rewrite.seed_feed(seeds) if self._rewrite else {}
    return Start(feed=feed, state=decision.state, taken=decision.taken,
                 skip=decision.skip)

  def _plan(self, fresh: bool) -> Tuple[resume_policy.Decision, List[int]]:
    """What `resume_policy` decides for a start now, and the seeds it
    feeds: the saved ones, or fresh ones for a new order (logs
    nothing)."""
    decision = self._decide(fresh)
    if decision.seeds is not None:
      return decision, list(decision.seeds)
    return decision, self._rewrite.fresh_seeds() if self._rewrite else []

  def _decide(self, fresh: bool) -> resume_policy.Decision:
    """What `resume_policy` decides for a start now (logs nothing)."""
    group = self._group
    saved = (None if fresh or group.checkpoint is None
             else record.read_saved(group.checkpoint, self._host))
    policy = resume_policy.ResumePolicy(
        exact=group.exact, saves_state=self._saves_state,
        restore_state=group.restore_state,
        seeds_needed=len(self._rewrite.seeds) if self._rewrite else 0,
        fingerprint=self._fingerprint, endless=self._endless)
    return policy.decide(group.checkpoint, group.start_step, saved,
                         fresh=fresh)

  def needs_start(self, global_step: int) -> bool:
    """Whether a save at `global_step` needs the infeed's start to be over
    first (to read the iterator's state). Not at the start's own step
    where either the start restores the iterator state saved there (or
    the pass's start and the steps after it, "replay") and the Saver
    restored the position's variables with the model
    (`InputPosition.variables_restored`): they hold what that save would
    assign (should the restore fail after all, that checkpoint keeps the
    position it held, and the run that fails reads and drops the steps
    instead, as it would have); or the start begins a new pass there (a
    fresh start, no checkpoint, a pass used up): the position is the
    pass's first element and its seeds, which the start's plan gives
    before the iterator is initialized (a cache can read its whole input
    then).

    Raises:
      StorageError: reading the checkpoint's position kept failing.
    """
    return self._at_start(global_step) is None

  def _at_start(self, global_step: int
                ) -> Optional[Tuple[str, resume_policy.Decision, List[int]]]:
    """At the start's own step, ("held" or "new pass", see `needs_start`;
    the start's decision and seeds); else None."""
    group = self._group
    if global_step != group.start_step:
      return None
    with self._deciding:
      if self._decision is not None:
        decision, seeds = self._decision, self._seeds
      else:
        if self._planned is None:
          self._planned = self._plan(fresh=False)
        decision, seeds = self._planned
    if not decision.resumed:
      return "new pass", decision, seeds
    if (decision.why in ("restore", "replay") and group.variables_restored
        and self._saves_state):
      return "held", decision, seeds
    return None

  def restore(self, session, state: bytes) -> bool:
    """Restores the initialized iterator to `state`; False (with a
    warning) if it does not fit the input pipeline (then
    `after_failed_restore` says where the input starts)."""
    try:
      session.run(self._restore, {self._restore_in: state})
      logging.info("Restored the training input's position from %s.",
                   self._group.checkpoint)
      return True
    except tf.errors.OpError as error:
      self._group.warn_once(
          "fit", "The input position saved in %s does not fit this input "
          "pipeline (resume_input='exact'; was `input_fn` changed?): %s. "
          "%s", self._group.checkpoint,
          tf_message.first_line(error.message),
          "The input is endless (repeat()): it starts a new pass from its "
          "first element instead of reading and dropping the "
          f"{self.steps_of_pass} steps of it already trained on."
          if self._endless else
          f"Reading and dropping the {self.steps_of_pass} steps of input "
          f"already trained on instead.")
      return False

  def after_failed_restore(self, start: Start) -> Start:
    """Where the input starts once restoring `start`'s state failed: the
    steps of its pass read and dropped, with its seeds; for an endless
    input, a new pass (as `resume_policy` decides where a position cannot
    be used)."""
    if self._endless:
      return self.start(fresh=True)
    return dataclasses.replace(start, state=None, taken=0,
                               skip=self.steps_of_pass)

  @property
  def resumed(self) -> bool:
    """Whether this start continued a pass (restored or skipped)."""
    return self._resumed

  @property
  def steps_of_pass(self) -> int:
    """Steps of the current pass trained on before this start."""
    return self._group.start_step - self._pass_start

  @property
  def checkpoint(self) -> Optional[str]:
    return self._group.checkpoint

  def begin(self, skip: int, taken: int, state: Optional[bytes]) -> None:
    """After the iterator is initialized (and restored to `state`, unless
    None): `skip` elements are read and dropped next; the take had given
    `taken` before."""
    self._skip = skip
    self._states.begin(taken, state)

  # The host thread's side.

  def fill_started(self, session, reads: int, asked: int) -> None:
    """Host thread: a fill of up to `asked` elements starts, `reads`
    elements read since `begin`. Reads the iterator's state first if a
    save is expected at a step the fill's elements end."""
    self._states.fill_started(
        session, reads, asked, lambda first, last: self._saves_state and (
            self._group.expected(max(self._step_of(first),
                                     self._step_of(last)))))

  def fill_ended(self, reads: int, complete: bool = True,
                 input_ended: bool = False) -> None:
    """Host thread: the fill ended (see `states.StateLog.fill_ended`)."""
    self._states.fill_ended(reads, complete, input_ended)

  def consumed(self, steps: int) -> None:
    """At least `steps` elements past the dropped ones were trained on."""
    self._states.consumed(self._skip + steps)

  def _step_of(self, reads: int) -> int:
    """The global step once `reads` elements (since `begin`) were trained
    on."""
    return self._group.start_step + reads - self._skip

  def _read_state(self, session) -> Optional[bytes]:
    """The iterator's state now, or None (with the position disabled) if
    it cannot be saved."""
    if not self._saves_state:
      return None
    try:
      state = session.run(self._serialize)
    except tf.errors.OpError as error:
      self.disable(f"the input pipeline's state cannot be saved: "
                   f"{tf_message.first_line(error.message)}")
      return None
    if len(state) > record.MAX_STATE_BYTES:
      self.disable(f"its state is {len(state):,} bytes, over the "
                   f"{record.MAX_STATE_BYTES:,} a checkpoint may hold per "
                   f"host")
      return None
    return state

  # The save's side.

  def at_step(self, session, global_step: int
              ) -> Tuple[bytes, List[int], List[int]]:
    """(state, [skip, taken, pass_start, used_up], seeds) to save with the
    checkpoint of `global_step`. The state is empty where the position is
    the pass's start and the elements read since (`skip`: those trained
    on), or where no state is saved (`skip` 0): the counts and seeds then
    restart the pass and skip to the step."""
    needed = self._skip + global_step - self._group.start_step
    if self._states.used_up_at(needed):
      return b"", [0, 0, self._pass_start, 1], list(self._seeds)
    found = None
    if self._saves_state and self._serialize is not None:
      found = self._states.state_at(session, needed)
    if found is None:
      return b"", [0, 0, self._pass_start, 0], list(self._seeds)
    reads, state, taken = found
    return (state, [needed - reads, taken, self._pass_start, 0],
            list(self._seeds))

  def before_save(self, session, global_step: int) -> None:
    """Assigns the position's variables what a save at `global_step`
    holds, unless they hold it already (see `needs_start`)."""
    at_start = self._at_start(global_step)
    if at_start is None:
      self._assign_values(session, *self.at_step(session, global_step))
      return
    kind, decision, seeds = at_start
    if kind == "new pass":
      self._assign_values(session, b"", [0, 0, decision.pass_start, 0],
                          seeds)

  def _assign_values(self, session, state: bytes, counts: List[int],
                     seeds: List[int]) -> None:
    fingerprint = (self._fingerprint.to_json()
                   if self._fingerprint is not None else "")
    session.run(self._assign, {self._state_in: state,
                               self._counts_in: counts,
                               self._seeds_in: np.asarray(seeds, np.int64),
                               self._fingerprint_in: fingerprint})

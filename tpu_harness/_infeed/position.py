"""The input pipeline's position, saved with each checkpoint: resume exactly
without reading again the input already trained on.

`RunConfig.resume_input` chooses what a resumed `train()` feeds first:

- `exact` (default): the element an uninterrupted run would have fed next.
  The training `input_fn` runs with its shuffles and in-memory caches made
  resumable (`tpu_harness._infeed.rewrite`), and tf.data saves the
  iterator symbolically: a checkpoint holds where each source and
  transformation is (a few KB, whatever the buffers), and a restore
  recomputes what they held (one shuffle window, the cache's input). Where
  the pipeline holds something a position cannot (a `py_function`, a
  shuffle made outside `input_fn`, a file cache, a parallel map giving
  elements in no fixed order), or a checkpoint holds no usable position
  (an earlier version's, a user's Saver's), the run falls back to `skip`,
  saying why once, for an input that ends; an endless one (`repeat()`)
  starts a new pass instead, as TPUEstimator did, since dropping every
  step of a pass that never ends costs more at every resume and every
  later `train()` (`tpu_harness._infeed.resume_policy`). Stateful random
  ops in the pipeline (`tf.image.random_*`) restart their random stream
  from their seeds: a resumed run's augmentations differ from an
  uninterrupted run's, its elements and their order do not.
- `skip`: read and drop the steps of the current pass already trained on;
  exact (the same rewritten pipeline, its seeds saved), but a resume at
  step N reads those N steps of input first.
- `restart`: call `input_fn` afresh and start from its first element, as
  TPUEstimator did; fastest, not exact.

A pass over the input starts with the first `train()` of a run and
continues across `train()` calls and restarts, so a `train(steps=N)` loop
feeds new input each call. When a resumed `train()` finds the pass's input
used up (a finite input that an earlier call read to its end), the call
starts a new pass from the input's first element, as TPUEstimator's
`train()` always did: an epoch loop of `train(one_epoch_input_fn)` trains
every epoch. Checkpoints record the global step the pass started at.

When the position is read: once per save, at the fill where a save is
expected, not per fill (serializing an iterator costs tens of ms); see
`tpu_harness._infeed.states`. What a checkpoint holds of it:
`tpu_harness._infeed.record`. The variables a save writes it to are
outside every collection (the model's variables, `check_matches`,
warm-starting and evaluation do not see them), saved by the training
Saver and assigned by `_Listener` just before each save. The save at a
start's own step need not wait for the infeed's start (the iterator's
initialization, which can read a cache's whole input, and a restore):
where the start restores the checkpoint's position (its iterator state,
or its pass's start, replayed), the variables, restored with the model,
hold it already; where it begins a new pass, the position
is the pass's first element and its seeds, planned before the start runs
(see `HostPosition.needs_start`). Restore reads them from the checkpoint
file. Where the checkpoint restored holds them,
that Saver restores the model too (it restores them as well, and the
start's own save can keep them as they are); a checkpoint without them is
restored by a Saver of the model alone, as before. A host's position:
`tpu_harness._infeed.host_position`; which of restore, skip or a new pass
its start takes: `tpu_harness._infeed.resume_policy`.
"""

from __future__ import annotations

from typing import Callable, List, Optional

from absl import logging
import tensorflow as tf

from tpu_harness import _tf_message as tf_message
from tpu_harness._infeed.host_position import HostPosition

EXACT = "exact"
SKIP = "skip"
RESTART = "restart"
MODES = (EXACT, SKIP, RESTART)

# Warnings logged once per process (see `InputPosition.warn_once`).
_WARNED = set()


class RestoredPositionError(Exception):
  """Reading the input right after restoring the position saved in
  `checkpoint` failed (e.g. a record offset that no longer fits a file
  rewritten with the same size): the training runner restarts the session
  reading and dropping the steps of the pass instead (`InputPosition(
  restore_state=False)`)."""

  def __init__(self, checkpoint: Optional[str], error: BaseException):
    self.checkpoint = checkpoint
    self.error = error
    message = getattr(error, "message", None) or str(error)
    super().__init__(
        f"Reading the training input right after restoring the input "
        f"position saved in {checkpoint} failed (resume_input='exact'): "
        f"{type(error).__name__}: {tf_message.first_line(message)}")


class InputPosition:
  """Saves the training input's position with each checkpoint and restores
  it on resume (`exact` and `skip` modes): one `HostPosition` per host's
  infeed."""

  def __init__(self, mode: str, checkpoint: Optional[str], start_step: int,
               restore_state: bool = True):
    """Args:
      mode: `EXACT` or `SKIP`.
      checkpoint: the checkpoint training resumes from, or None.
      start_step: its global step (0 without one).
      restore_state: whether the iterator state saved there is restored;
        False after reading right after restoring it failed
        (`RestoredPositionError`): the steps of its pass are read and
        dropped instead, in the same order.
    """
    self._exact = mode == EXACT
    self._checkpoint = checkpoint
    self._start_step = start_step
    self.restore_state = restore_state
    # Set by the trainer where its Saver restores the position's variables
    # from `checkpoint` (with the model).
    self.variables_restored = False
    self._hosts: List[HostPosition] = []
    self._warned = set()
    self._expect: Callable[[int], bool] = lambda step: False

  @property
  def exact(self) -> bool:
    return self._exact

  @property
  def checkpoint(self) -> Optional[str]:
    return self._checkpoint

  @property
  def start_step(self) -> int:
    return self._start_step

  def host(self, index: int) -> HostPosition:
    """Host `index`'s position (its variables built in the default graph
    when first asked for; hosts in order)."""
    while len(self._hosts) <= index:
      self._hosts.append(HostPosition(self, len(self._hosts)))
    return self._hosts[index]

  @property
  def variables(self) -> List[tf.Variable]:
    """What the training Saver saves besides the model."""
    return [v for host in self._hosts for v in host.variables]

  def disable(self, why: str) -> None:
    """Saves no iterator state from now on (checkpoints hold counts only:
    a resumed run skips)."""
    for host in self._hosts:
      host.disable(why)

  def expect_saves(self, expected: Callable[[int], bool]) -> None:
    """`expected(step)` says whether a checkpoint may be saved at global
    step `step` soon (called on the host threads, when they start a fill
    that ends at that step)."""
    self._expect = expected

  def expected(self, step: int) -> bool:
    return self._expect(step)

  def warn_once(self, key: str, message: str, *args,
                per_process: bool = False) -> None:
    """Logs `message` once for this position's hosts; with `per_process`,
    once per process (a train() loop would repeat it)."""
    text = message % args
    if key in self._warned or (per_process and text in _WARNED):
      return
    self._warned.add(key)
    if per_process:
      _WARNED.add(text)
    logging.warning("%s", text)

  def listener(self) -> tf.compat.v1.train.CheckpointSaverListener:
    """Assigns the positions at the step being saved, before each save."""
    return _Listener(self._hosts)


class _Listener(tf.compat.v1.train.CheckpointSaverListener):

  def __init__(self, hosts: List[HostPosition]):
    self._hosts = hosts

  def needs_start(self, global_step_value: int) -> bool:
    """Whether a save at `global_step_value` reads a host's position from
    its infeed, once started (`HostPosition.needs_start`)."""
    return any(host.needs_start(global_step_value) for host in self._hosts)

  def before_save(self, session, global_step_value):
    for host in self._hosts:
      host.before_save(session, global_step_value)

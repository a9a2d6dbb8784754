"""How a host's training input resumes from a checkpoint's input position:
the decision alone, no I/O.

Given what the checkpoint holds of the position (`record.Saved`, read by
the caller) and how this run saves and restores it, `ResumePolicy.decide`
says where the input starts (restore the saved iterator state, read and
drop the steps of the pass already trained on, or start a new pass), with
which shuffle seeds, and what to log about it. `host_position.HostPosition`
acts on the decision: it reads the checkpoint, feeds the seeds, and runs
the restore in the session.

The rules, in order:

1. A fresh start, or no checkpoint: a new pass from its first element.
2. A checkpoint without a position (an earlier version's, a user's Saver's,
   resume_input='restart'): a new pass that reads and drops the steps
   trained on (warned).
3. A pass that was used up: a new pass from its first element (logged).
4. A position saved for another pipeline (its fingerprint differs; only
   where this run saves states): read and drop the steps of the pass, in a
   new order (warned).
5. Seeds that do not fit the pipeline's shuffles: the same (warned in
   `exact` mode).
6. An iterator state, where this run saves states and may restore them:
   restore it, then drop what was read after it.
7. The pass's start (no state, and the pass's steps to drop: the save came
   before the infeed read a state in this pass): read and drop the steps
   of the pass with its seeds, as exact as a restore ("replay").
8. Else the same (warned where a state was expected).

In `exact` mode, an endless input (`repeat()`, `length.endless`) is not
read and dropped from its pass's start (rules 2, 4, 5 and 8): its pass
never ends, so the steps to drop grow with every step trained, and with
them the cost of every resume and of every later `train()` call (a
train-and-evaluate loop). Such a start begins a new pass from its first
element, as TPUEstimator's `train()` did (warned). A replay (7) drops no
more than the steps between two saves; `skip` mode drops what the user
asked for.
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Tuple

from tpu_harness._infeed import fingerprint as fingerprint_lib
from tpu_harness._infeed import record


# Rules that read and drop the steps of the pass from its first element.
_SKIPS_THE_PASS = ("none", "fingerprint", "seeds", "stateless", "no state")
# Why the position is not restored, for an endless input's new pass, by
# the rule that would have dropped the steps ("fingerprint": what changed).
_NEW_PASS_CAUSES = {
    "none": "it holds no input position (saved by TPUEstimator, a user's "
            "Saver, an earlier version, or with resume_input='restart')",
    "seeds": "it does not fit this input pipeline's shuffles",
    "stateless": "it holds no iterator state (saved with "
                 "resume_input='skip', or where the pipeline's position "
                 "could not be saved)",
}


@dataclasses.dataclass(frozen=True)
class Decision:
  """Where a host's input starts, and what to log about it.

  Attributes:
    why: which rule decided: "fresh", "no checkpoint", "none" (no position
      saved), "used up", "fingerprint", "seeds", "restore", "replay" (the
      pass's start saved), "stateless" (where a state was expected; else
      "no state"), or "endless" (a new pass where one of "none",
      "fingerprint", "seeds", "stateless" or "no state" would drop the
      steps of an endless pass). Where `warning` is set, its key: it is
      logged once per `InputPosition`.
    pass_start: the global step at which the pass this start continues (or
      begins) began.
    seeds: the pass's saved shuffle seeds to feed again; None: fresh ones
      (a new order).
    state: the saved iterator state to restore; None: none.
    taken: the elements the pipeline's `take` had given at `state` (0
      without one).
    skip: the elements to read and drop: after `state`, or from the pass's
      first element.
    resumed: whether the start continues the checkpoint's run (restoring
      or skipping), not a new pass from its first element.
    warning: what to log as a warning, or None.
    info: what to log as information, or None.
  """
  why: str
  pass_start: int
  seeds: Optional[Tuple[int, ...]] = None
  state: Optional[bytes] = None
  taken: int = 0
  skip: int = 0
  resumed: bool = True
  warning: Optional[str] = None
  info: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ResumePolicy:
  """How this run resumes a host's input.

  Attributes:
    exact: whether `resume_input` is 'exact' (else 'skip').
    saves_state: whether this run saves the iterator's state (exact, and
      the pipeline's position can be saved).
    restore_state: whether a saved state may be restored (False after
      reading right after restoring one failed).
    seeds_needed: the pipeline's window shuffles, each seeded.
    fingerprint: the pipeline's fingerprint; None where unknown.
    endless: whether the input is endless (`length.endless`).
  """
  exact: bool
  saves_state: bool
  restore_state: bool = True
  seeds_needed: int = 0
  fingerprint: Optional[fingerprint_lib.Fingerprint] = None
  endless: bool = False

  def decide(self, checkpoint: Optional[str], start_step: int,
             saved: Optional[record.Saved], fresh: bool = False
             ) -> Decision:
    """Where the input starts.

    Args:
      checkpoint: the checkpoint training resumes from, or None.
      start_step: its global step (0 without one).
      saved: the position `checkpoint` holds for the host, or None (none
        saved, or not read: a fresh start or no checkpoint).
      fresh: start a new pass whatever the checkpoint holds.

    Returns:
      The decision; see the module's rules.
    """
    decision = self._by_rules(checkpoint, start_step, saved, fresh)
    if (self.exact and self.endless and decision.why in _SKIPS_THE_PASS
        and decision.skip):
      return self._new_pass(checkpoint, start_step, saved, decision)
    return decision

  def _by_rules(self, checkpoint: Optional[str], start_step: int,
                saved: Optional[record.Saved], fresh: bool) -> Decision:
    """`decide`'s rules 1 to 8."""
    if fresh or checkpoint is None:
      return Decision("fresh" if fresh else "no checkpoint",
                      pass_start=start_step, resumed=False)
    if saved is None:
      # The steps trained on are read and dropped from the input's start:
      # the pass is taken to have started at step 0.
      return Decision(
          "none", pass_start=0, skip=start_step, warning=(
              f"Checkpoint {checkpoint} holds no input position (saved by "
              f"an earlier version, with resume_input='restart', or by a "
              f"user's Saver): reading and dropping the {start_step} steps "
              f"of input already trained on."))
    if saved.used_up:
      return Decision(
          "used up", pass_start=start_step, resumed=False, info=(
              f"The training input's pass that started at step "
              f"{saved.pass_start} was used up at step {start_step} "
              f"({checkpoint}): a new pass starts from its first element."))
    steps = start_step - saved.pass_start
    changed = self._changed(saved)
    if changed:
      return Decision(
          "fingerprint", pass_start=saved.pass_start, skip=steps, warning=(
              f"The input position saved in {checkpoint} is not restored: "
              f"it was saved for another input pipeline "
              f"({'; '.join(changed)}), and restoring it would feed "
              f"examples of the old one or fail reading "
              f"(resume_input='exact'). Reading and dropping the {steps} "
              f"steps of its pass instead, in a new order."))
    if len(saved.seeds) != self.seeds_needed:
      return Decision(
          "seeds", pass_start=saved.pass_start, skip=steps, warning=(
              f"The input position saved in {checkpoint} does not fit this "
              f"input pipeline ({self.seeds_needed} shuffles, "
              f"{len(saved.seeds)} saved; was `input_fn` changed?): reading "
              f"and dropping the {steps} steps of its pass instead, in a "
              f"new order.") if self.exact else None)
    seeds = tuple(saved.seeds)
    if saved.state and self.saves_state and self.restore_state:
      return Decision("restore", pass_start=saved.pass_start, seeds=seeds,
                      state=saved.state, taken=saved.taken, skip=saved.skip)
    if not saved.state and steps and saved.skip == steps:
      return Decision("replay", pass_start=saved.pass_start, seeds=seeds,
                      skip=steps)
    if self.saves_state and self.restore_state and steps:
      return Decision(
          "stateless", pass_start=saved.pass_start, seeds=seeds, skip=steps,
          warning=(
              f"Checkpoint {checkpoint} holds no iterator state (its "
              f"pipeline's position could not be saved, or it was saved "
              f"with resume_input='skip'): reading and dropping the {steps} "
              f"steps of input already trained on."))
    return Decision("no state", pass_start=saved.pass_start, seeds=seeds,
                    skip=steps)

  def _new_pass(self, checkpoint: str, start_step: int,
                saved: Optional[record.Saved], instead: Decision
                ) -> Decision:
    """A new pass of an endless input, where `instead` would read and drop
    the steps of its pass: warned, but logged as information where this
    run keeps no position (its warning said that a new pass starts)."""
    if instead.why == "no state" and not self.saves_state:
      return Decision(
          "endless", pass_start=start_step, resumed=False, info=(
              f"The endless training input starts a new pass at step "
              f"{start_step} ({checkpoint}): its position is not kept."))
    if instead.why == "fingerprint":
      cause = (f"it was saved for another input pipeline "
               f"({'; '.join(self._changed(saved))})")
    else:
      cause = _NEW_PASS_CAUSES.get(
          instead.why, "this run cannot restore it (a warning before says "
          "why)")
    return Decision(
        "endless", pass_start=start_step, resumed=False, warning=(
            f"The training input's position in {checkpoint} is not "
            f"restored: {cause}. The input is endless (repeat()), so "
            f"reading and dropping the {instead.skip} steps of it already "
            f"trained on would read and decode them all again, a cost that "
            f"grows at every resume and later train(). It starts a new "
            f"pass from its first element instead (a new order where its "
            f"shuffles have no seed), as TPUEstimator's train() did; "
            f"resume_input='skip' reads and drops them."))

  def _changed(self, saved: record.Saved) -> List[str]:
    """What differs between this pipeline and the one `saved` was saved
    for; empty when nothing does or either is unknown (or this run saves
    no states)."""
    if not self.saves_state or self.fingerprint is None:
      return []
    then = fingerprint_lib.Fingerprint.from_json(saved.fingerprint)
    return [] if then is None else self.fingerprint.differences(then)

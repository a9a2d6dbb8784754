"""tpu_harness._infeed.resume_policy: where a resumed host's input starts,
as pure decisions (the checkpoint's position given, nothing read or run)."""

import dataclasses

import pytest

from tpu_harness._infeed import fingerprint
from tpu_harness._infeed import record
from tpu_harness._infeed.resume_policy import Decision
from tpu_harness._infeed.resume_policy import ResumePolicy

CHECKPOINT = "/m/model.ckpt-30"
START = 30  # The checkpoint's step; its pass began at step 10.
PIPELINE = fingerprint.Fingerprint(graph="g1", files={"/d/a": 100})
ELSEWHERE = fingerprint.Fingerprint(graph="g1", files={"/d/a": 104})


def _saved(state=b"it", seeds=(5, 6), used_up=False, saved_for=PIPELINE,
           skip=3):
  return record.Saved(
      state=state, skip=skip, taken=17, pass_start=10, seeds=seeds,
      used_up=used_up,
      fingerprint=saved_for.to_json() if saved_for is not None else "")


EXACT = ResumePolicy(exact=True, saves_state=True, seeds_needed=2,
                     fingerprint=PIPELINE)
# Exact, but the pipeline's position cannot be saved (disabled).
DISABLED = ResumePolicy(exact=True, saves_state=False, seeds_needed=2,
                        fingerprint=PIPELINE)
SKIP = ResumePolicy(exact=False, saves_state=False, seeds_needed=2,
                    fingerprint=None)
# Reading right after restoring the state failed: the run skips instead.
NO_RESTORE = ResumePolicy(exact=True, saves_state=True, restore_state=False,
                          seeds_needed=2, fingerprint=PIPELINE)


@pytest.mark.parametrize("policy, checkpoint, saved, fresh, expected", [
    # A fresh start: a new pass, whatever the checkpoint holds.
    (EXACT, CHECKPOINT, _saved(), True,
     Decision("fresh", pass_start=START, resumed=False)),
    (EXACT, None, None, False,
     Decision("no checkpoint", pass_start=START, resumed=False)),
    # The saved state restored, the elements read after it dropped, the
    # pass's seeds fed again.
    (EXACT, CHECKPOINT, _saved(), False,
     Decision("restore", pass_start=10, seeds=(5, 6), state=b"it", taken=17,
              skip=3)),
    # A fingerprint that cannot be read (an earlier version's): restored.
    (EXACT, CHECKPOINT, _saved(saved_for=None), False,
     Decision("restore", pass_start=10, seeds=(5, 6), state=b"it", taken=17,
              skip=3)),
    # The pass used up: a new one from its first element.
    (EXACT, CHECKPOINT, _saved(used_up=True), False,
     Decision("used up", pass_start=START, resumed=False)),
    # No state where one could be restored: the pass's 20 steps skipped,
    # in its order.
    (EXACT, CHECKPOINT, _saved(state=b""), False,
     Decision("stateless", pass_start=10, seeds=(5, 6), skip=20)),
    # The pass's start saved, with its 20 steps to skip (saved before the
    # infeed read a state in the pass): the same, as exact as a restore.
    (EXACT, CHECKPOINT, _saved(state=b"", skip=20), False,
     Decision("replay", pass_start=10, seeds=(5, 6), skip=20)),
    (SKIP, CHECKPOINT, _saved(state=b"", skip=20), False,
     Decision("replay", pass_start=10, seeds=(5, 6), skip=20)),
    # Its start changed: skipped in a new order.
    (EXACT, CHECKPOINT, _saved(state=b"", skip=20, saved_for=ELSEWHERE),
     False, Decision("fingerprint", pass_start=10, skip=20)),
    # Skip mode, a position that cannot be saved, or a state whose restore
    # failed (the runner said so): skipped, no warning. Only a run that
    # saves states asks the fingerprint.
    (NO_RESTORE, CHECKPOINT, _saved(), False,
     Decision("no state", pass_start=10, seeds=(5, 6), skip=20)),
    (SKIP, CHECKPOINT, _saved(), False,
     Decision("no state", pass_start=10, seeds=(5, 6), skip=20)),
    (SKIP, CHECKPOINT, _saved(saved_for=ELSEWHERE), False,
     Decision("no state", pass_start=10, seeds=(5, 6), skip=20)),
    (DISABLED, CHECKPOINT, _saved(saved_for=ELSEWHERE), False,
     Decision("no state", pass_start=10, seeds=(5, 6), skip=20)),
    # Another pipeline, or other shuffles: skipped in a new order.
    (EXACT, CHECKPOINT, _saved(saved_for=ELSEWHERE), False,
     Decision("fingerprint", pass_start=10, skip=20)),
    (EXACT, CHECKPOINT, _saved(seeds=(5,)), False,
     Decision("seeds", pass_start=10, skip=20)),
    (SKIP, CHECKPOINT, _saved(seeds=(5, 6, 7)), False,
     Decision("seeds", pass_start=10, skip=20)),
    # No position: the steps trained on skipped in a new pass, taken to
    # have started at step 0 (a later save without a state then skips all
    # of them again, not only those after this start).
    (EXACT, CHECKPOINT, None, False,
     Decision("none", pass_start=0, skip=START)),
])
def test_decides_where_the_input_starts(policy, checkpoint, saved, fresh,
                                        expected):
  decision = policy.decide(checkpoint, START, saved, fresh=fresh)
  # What is logged: below.
  assert dataclasses.replace(decision, warning=None, info=None) == expected


def test_no_steps_of_the_pass_to_skip_is_not_warned_about():
  saved = record.Saved(state=b"", skip=0, taken=0, pass_start=START,
                       seeds=(5, 6), fingerprint=PIPELINE.to_json())
  assert EXACT.decide(CHECKPOINT, START, saved) == Decision(
      "no state", pass_start=START, seeds=(5, 6), skip=0)


@pytest.mark.parametrize("policy, saved, warning", [
    (EXACT, None, "Checkpoint /m/model.ckpt-30 holds no input position "
     "(saved by an earlier version, with resume_input='restart', or by a "
     "user's Saver): reading and dropping the 30 steps of input already "
     "trained on."),
    (EXACT, _saved(saved_for=ELSEWHERE), "The input position saved in "
     "/m/model.ckpt-30 is not restored: it was saved for another input "
     "pipeline (/d/a has 100 bytes, 104 then), and restoring it would "
     "feed examples of the old one or fail reading (resume_input='exact'). "
     "Reading and dropping the 20 steps of its pass instead, in a new "
     "order."),
    (EXACT, _saved(seeds=(5,)), "The input position saved in "
     "/m/model.ckpt-30 does not fit this input pipeline (2 shuffles, 1 "
     "saved; was `input_fn` changed?): reading and dropping the 20 steps "
     "of its pass instead, in a new order."),
    (SKIP, _saved(seeds=(5,)), None),
    (EXACT, _saved(state=b""), "Checkpoint /m/model.ckpt-30 holds no "
     "iterator state (its pipeline's position could not be saved, or it "
     "was saved with resume_input='skip'): reading and dropping the 20 "
     "steps of input already trained on."),
    (EXACT, _saved(), None),
    (EXACT, _saved(state=b"", skip=20), None),
    (EXACT, _saved(used_up=True), None),
    (NO_RESTORE, _saved(), None),
])
def test_says_why_it_does_not_restore(policy, saved, warning):
  assert policy.decide(CHECKPOINT, START, saved).warning == warning


def test_a_used_up_pass_is_logged_as_information():
  decision = EXACT.decide(CHECKPOINT, START, _saved(used_up=True))
  assert decision.info == (
      "The training input's pass that started at step 10 was used up at "
      "step 30 (/m/model.ckpt-30): a new pass starts from its first "
      "element.")
  assert EXACT.decide(CHECKPOINT, START, _saved()).info is None


def _endless(policy):
  return dataclasses.replace(policy, endless=True)


NEW_PASS = Decision("endless", pass_start=START, resumed=False)


@pytest.mark.parametrize("policy, saved, expected", [
    # Where a finite input reads and drops the steps of its pass, an
    # endless one starts a new pass: its steps to drop only grow.
    (_endless(EXACT), None, NEW_PASS),
    (_endless(EXACT), _saved(state=b""), NEW_PASS),
    (_endless(EXACT), _saved(saved_for=ELSEWHERE), NEW_PASS),
    (_endless(EXACT), _saved(seeds=(5,)), NEW_PASS),
    (_endless(DISABLED), _saved(), NEW_PASS),
    (_endless(NO_RESTORE), _saved(), NEW_PASS),
    # Restores, replays (the steps since the last state read) and used-up
    # passes as before; skip mode drops what it was asked to.
    (_endless(EXACT), _saved(),
     Decision("restore", pass_start=10, seeds=(5, 6), state=b"it", taken=17,
              skip=3)),
    (_endless(EXACT), _saved(state=b"", skip=20),
     Decision("replay", pass_start=10, seeds=(5, 6), skip=20)),
    (_endless(EXACT), _saved(used_up=True),
     Decision("used up", pass_start=START, resumed=False)),
    (_endless(SKIP), _saved(),
     Decision("no state", pass_start=10, seeds=(5, 6), skip=20)),
    (_endless(SKIP), None, Decision("none", pass_start=0, skip=START)),
])
def test_an_endless_input_is_not_skipped_from_its_pass_start(policy, saved,
                                                             expected):
  decision = policy.decide(CHECKPOINT, START, saved)
  assert dataclasses.replace(decision, warning=None, info=None) == expected


def test_an_endless_input_with_no_steps_to_drop_goes_on():
  saved = record.Saved(state=b"", skip=0, taken=0, pass_start=START,
                       seeds=(5, 6), fingerprint=PIPELINE.to_json())
  assert _endless(DISABLED).decide(CHECKPOINT, START, saved) == Decision(
      "no state", pass_start=START, seeds=(5, 6), skip=0)


@pytest.mark.parametrize("policy, saved, cause", [
    (EXACT, None, "it holds no input position (saved by TPUEstimator, a "
     "user's Saver, an earlier version, or with resume_input='restart')"),
    (EXACT, _saved(state=b""), "it holds no iterator state (saved with "
     "resume_input='skip', or where the pipeline's position could not be "
     "saved)"),
    (NO_RESTORE, _saved(), "this run cannot restore it (a warning before "
     "says why)"),
])
def test_says_why_an_endless_input_starts_a_new_pass(policy, saved, cause):
  steps = 30 if saved is None else 20
  assert _endless(policy).decide(CHECKPOINT, START, saved).warning == (
      f"The training input's position in /m/model.ckpt-30 is not restored: "
      f"{cause}. The input is endless (repeat()), so reading and dropping "
      f"the {steps} steps of it already trained on would read and decode "
      f"them all again, a cost that grows at every resume and later train(). "
      f"It starts a new pass from its first element instead (a new order "
      f"where its shuffles have no seed), as TPUEstimator's train() did; "
      f"resume_input='skip' reads and drops them.")


def test_an_endless_input_whose_position_is_not_kept_is_not_warned_again():
  # Its position's own warning (once per train()) said a new pass starts.
  decision = _endless(DISABLED).decide(CHECKPOINT, START, _saved())
  assert decision.warning is None
  assert decision.info == (
      "The endless training input starts a new pass at step 30 "
      "(/m/model.ckpt-30): its position is not kept.")

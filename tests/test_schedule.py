"""Table-driven tests of the pure StepOrSecondsSchedule (no TF, no disk)."""

import pytest

from hooks import Elapsed
from hooks import StepOrSecondsSchedule


# (every_steps, every_secs, [(step, now, expect_due)]); a due query is marked
# triggered before the next one, as the hooks do.
CASES = [
    ("first query always due", 10, None,
     [(0, 0.0, True), (5, 1.0, False), (10, 2.0, True), (19, 3.0, False),
      (25, 4.0, True)]),
    ("same step never twice", 1, None,
     [(7, 0.0, True), (7, 1.0, False), (8, 2.0, True)]),
    ("steps jump past the boundary", 100, None,
     [(0, 0.0, True), (99, 0.0, False), (250, 0.0, True), (349, 0.0, False),
      (350, 0.0, True)]),
    ("seconds, not steps", None, 10,
     [(0, 0.0, True), (1000, 9.9, False), (1001, 10.0, True),
      (1002, 19.0, False), (1003, 20.5, True)]),
    ("seconds ignore step distance", None, 5,
     [(3, 100.0, True), (4, 104.0, False), (4, 200.0, True),
      (4, 300.0, False)]),
]


@pytest.mark.parametrize("name,every_steps,every_secs,queries", CASES,
                         ids=[c[0] for c in CASES])
def test_schedule_table(name, every_steps, every_secs, queries):
  del name
  schedule = StepOrSecondsSchedule(every_steps=every_steps,
                                   every_secs=every_secs)
  got = []
  for step, now, _ in queries:
    due = schedule.should_trigger(step, now)
    got.append(due)
    if due:
      schedule.mark_triggered(step, now)
  assert got == [due for _, _, due in queries]


def test_mark_triggered_reports_elapsed():
  schedule = StepOrSecondsSchedule(every_steps=5)
  assert schedule.mark_triggered(10, 1.0) == Elapsed(secs=None, steps=None)
  assert schedule.mark_triggered(30, 3.5) == Elapsed(secs=2.5, steps=20)
  assert schedule.last_triggered_step == 30


def test_reset_makes_next_query_due():
  schedule = StepOrSecondsSchedule(every_steps=100)
  schedule.mark_triggered(0, 0.0)
  assert not schedule.should_trigger(1, 0.0)
  schedule.reset()
  assert schedule.last_triggered_step is None
  assert schedule.should_trigger(1, 0.0)


BAD = [
    (dict(), ValueError, "Exactly one of `every_steps` and `every_secs`"),
    (dict(every_steps=1, every_secs=1), ValueError, "every_steps=1"),
    (dict(every_steps=0), ValueError, "`every_steps` (0) must be a positive"),
    (dict(every_secs=-3), ValueError, "`every_secs` (-3) must be a positive"),
    (dict(every_steps=1.5), TypeError, "`every_steps` (1.5)"),
    (dict(every_steps=True), TypeError, "`every_steps` (True)"),
    (dict(every_secs="10"), TypeError, "`every_secs` ('10')"),
]


@pytest.mark.parametrize("kwargs,error,message", BAD)
def test_bad_arguments(kwargs, error, message):
  with pytest.raises(error) as info:
    StepOrSecondsSchedule(**kwargs)
  assert message in str(info.value)


def test_errors_use_callers_names():
  with pytest.raises(ValueError, match=r"`save_steps` \(0\)"):
    StepOrSecondsSchedule(every_steps=0, steps_name="save_steps",
                          secs_name="save_secs")

"""hooks.trigger.StepTrigger: when a hook acts, as pure decisions."""

import pytest

from hooks import RunIncrement
from hooks import StepOrSecondsSchedule
from hooks.trigger import StepTrigger


class _Steps:
  """A fake step reader: the real step after each run, and how often it
  was read."""

  def __init__(self):
    self.value = 0
    self.reads = 0

  def __call__(self):
    self.reads += 1
    return self.value


@pytest.mark.parametrize("declared, runs, fired, reads", [
    # steps_per_run declared right: the real step is read on the first run
    # (the first query fires; it also calibrates) and when stale + 10 may
    # be due (at 40 and 70, every 25 steps or more).
    (10, [10] * 9, [10, 40, 70], 3),
    # Declared 1 while each run advances 10: learned on the first run, so
    # no trigger is missed or late.
    (1, [10] * 9, [10, 40, 70], 3),
    # Uneven runs (a shortened loop): decided on the real step.
    (10, [10, 10, 5, 10], [10, 35], 2),
])
def test_fires_on_the_real_step_and_reads_it_only_when_needed(
    declared, runs, fired, reads):
  trigger = StepTrigger(StepOrSecondsSchedule(every_steps=25),
                        RunIncrement(declared))
  steps = _Steps()
  got = []
  for increment in runs:
    stale = steps.value
    steps.value += increment
    result = trigger.poll(stale, now=0.0, read_step=steps)
    if result is not None:
      got.append(result[0])
  assert got == fired
  assert steps.reads == reads


def test_reports_what_passed_since_the_last_trigger():
  trigger = StepTrigger(StepOrSecondsSchedule(every_secs=5.0),
                        RunIncrement(10))
  steps = _Steps()
  results = []
  for now in (1.0, 3.0, 7.0, 13.0):
    stale = steps.value
    steps.value += 10
    results.append(trigger.poll(stale, now, steps))
  assert results[0][0] == 10 and results[0][1].secs is None
  assert results[1] is None
  assert results[2][0] == 30 and results[2][1].secs == 6.0
  assert results[2][1].steps == 20
  assert results[3][0] == 40 and results[3][1].secs == 6.0

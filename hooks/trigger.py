"""When a hook acts after a run: its schedule, asked about the run's step.

One `Session.run` may advance the global step by many steps, and the step
fetched with a run is the step from before it (the "stale" step). Reading
the real step costs a second run, so, as TF's hooks do, the trigger first
asks the schedule about `stale + increment` (the step the run should have
reached) and reads the real step only if that may be due, or if the
increment still needs measuring (`RunIncrement.needs_real_step`). Only
the real step then decides.

No I/O: the caller passes the time and a function that reads the step.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from hooks.run_increment import RunIncrement
from hooks.schedule import Elapsed
from hooks.schedule import StepOrSecondsSchedule


class StepTrigger:
  """A schedule and a per-run increment, asked once after each run."""

  def __init__(self, schedule: StepOrSecondsSchedule,
               increment: RunIncrement):
    self._schedule = schedule
    self._increment = increment

  def poll(self, stale_step: int, now: float,
           read_step: Callable[[], int]) -> Optional[Tuple[int, Elapsed]]:
    """After a run whose fetched (stale) step was `stale_step`, at `now`:
    (the real step, what passed since the last trigger) if the schedule
    fires, else None. Calls `read_step()` at most once."""
    self._increment.observe_stale(stale_step)
    due = self._schedule.should_trigger(
        stale_step + self._increment.estimate(), now)
    if not (due or self._increment.needs_real_step):
      return None
    step = read_step()
    self._increment.observe_real(stale_step, step)
    if not self._schedule.should_trigger(step, now):
      return None
    return step, self._schedule.mark_triggered(step, now)

"""When to act: a pure every-N-steps-or-seconds schedule.

No I/O and no clock: the caller passes the current time in, so tests drive it
with plain numbers. This is the logic of TF's `SecondOrStepTimer`, whose
decisions `CheckpointSaverHook` and `StepCounterHook` must reproduce.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

from hooks import validation


@dataclasses.dataclass(frozen=True)
class Elapsed:
  """What passed between two triggers; both None on the first trigger."""
  secs: Optional[float]
  steps: Optional[int]


class StepOrSecondsSchedule:
  """Triggers at most once every `every_steps` steps or `every_secs` seconds.

  Exactly one of the two is set. The first query always triggers; a step that
  already triggered never triggers again.
  """

  def __init__(self,
               *,
               every_steps: Optional[int] = None,
               every_secs: Optional[float] = None,
               steps_name: str = "every_steps",
               secs_name: str = "every_secs"):
    """Initializes the schedule.

    Args:
      every_steps: trigger when at least this many steps passed.
      every_secs: trigger when at least this many seconds passed.
      steps_name: the caller's name for `every_steps`, used in errors.
      secs_name: the caller's name for `every_secs`, used in errors.

    Raises:
      ValueError: both or neither are set, or one is not positive.
      TypeError: `every_steps` is not an integer, or `every_secs` not a
        number.
    """
    validation.exactly_one({steps_name: every_steps, secs_name: every_secs})
    if every_steps is not None:
      validation.positive_int(steps_name, every_steps)
    if every_secs is not None:
      validation.positive_number(secs_name, every_secs)
    self._every_steps = every_steps
    self._every_secs = every_secs
    self._last_step: Optional[int] = None
    self._last_time: Optional[float] = None

  @property
  def every_steps(self) -> Optional[int]:
    return self._every_steps

  @property
  def every_secs(self) -> Optional[float]:
    return self._every_secs

  @property
  def last_triggered_step(self) -> Optional[int]:
    """The step of the last trigger, or None before the first."""
    return self._last_step

  def reset(self) -> None:
    """Forgets the last trigger: the next query triggers."""
    self._last_step = None
    self._last_time = None

  def should_trigger(self, step: int, now: float) -> bool:
    """Returns whether `step`, reached at time `now`, is due."""
    if self._last_step is None:
      return True
    if step == self._last_step:
      return False
    if self._every_secs is not None:
      return now >= self._last_time + self._every_secs
    return step >= self._last_step + self._every_steps

  def mark_triggered(self, step: int, now: float) -> Elapsed:
    """Records a trigger at `step`/`now`; returns what passed since the last."""
    if self._last_step is None:
      elapsed = Elapsed(secs=None, steps=None)
    else:
      elapsed = Elapsed(secs=now - self._last_time,
                        steps=step - self._last_step)
    self._last_step = step
    self._last_time = now
    return elapsed

  def state(self) -> Tuple[Optional[int], Optional[float]]:
    """(last triggered step, its time), for tests and debugging."""
    return self._last_step, self._last_time

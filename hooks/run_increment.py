"""How far one `Session.run` moves `global_step`: declared, then learned.

A hook sees the global step as it was fetched with the run (the "stale" step).
To avoid an extra read of the real step after every run, TF's hooks ask
"would stale + steps_per_run be due?" first. That is only right when
`steps_per_run` is the true per-run increment; with a wrong one (1 while each
run advances 100), TF's hooks miss saves until a later run happens to pass the
pre-check.

`RunIncrement` keeps the declared value and learns the observed one from
(a) the real step read after a run, minus that run's stale step, and
(b) the difference between consecutive stale steps. Its `estimate` is the
larger of the declared and the largest observed increment, so with a correct
declaration it equals the declaration (and hooks decide exactly as TF's do),
and with a wrong one the pre-check is right from the first observation on.
`needs_real_step` asks the hook to read the real step on the first run of
each session, so that first observation exists before it can cost a save.
Pure logic: no TensorFlow, no I/O.
"""

from __future__ import annotations

from typing import Optional

from hooks import validation


class RunIncrement:
  """Declared and observed per-run increments of the global step."""

  def __init__(self, declared: int, *, name: str = "steps_per_run"):
    """Initializes the tracker.

    Args:
      declared: the steps one run is declared to advance.
      name: the caller's argument name, used in errors.

    Raises:
      TypeError, ValueError: `declared` is not a positive integer.
    """
    validation.positive_int(name, declared)
    self._declared = int(declared)
    self._observed = 0
    self._last_stale: Optional[int] = None
    self._calibrated = False

  @property
  def declared(self) -> int:
    return self._declared

  @property
  def observed(self) -> int:
    """The largest increment seen so far (0 before any observation)."""
    return self._observed

  def new_session(self) -> None:
    """Starts a new session: the next run is measured against the real step.

    What was learned is kept; only the stale-step chain is cut, because the
    step may jump between sessions (a restore, another worker's progress).
    """
    self._last_stale = None
    self._calibrated = False

  @property
  def needs_real_step(self) -> bool:
    """Whether the hook should read the real step after this run anyway."""
    return not self._calibrated

  def estimate(self) -> int:
    """The increment to assume for the pre-check of a run."""
    return max(self._declared, self._observed)

  def observe_stale(self, stale_step: int) -> None:
    """Records the stale step fetched with a run."""
    if self._last_stale is not None and stale_step > self._last_stale:
      self._observed = max(self._observed, stale_step - self._last_stale)
    self._last_stale = stale_step

  def observe_real(self, stale_step: int, real_step: int) -> None:
    """Records the real step read after the run whose stale step is given."""
    self._calibrated = True
    if real_step > stale_step:
      self._observed = max(self._observed, real_step - stale_step)

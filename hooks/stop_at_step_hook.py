"""`StopAtStepHook`: stop at `last_step` when each run advances N steps.

Two levels of exactness:

* Always: it requests stop after the first run that reaches `last_step`,
  pre-checking `stale_step + steps_per_run` like the other hooks (TF's own
  `StopAtStepHook` pre-checks `stale_step + 1` and, with N steps per run,
  overshoots by a whole extra run).
* With `iterations_per_run`: the train loop reads its iteration count from
  that scalar placeholder, and the hook feeds `min(steps_per_run,
  last_step - global_step)` to every run, so the last run is shortened and
  training ends exactly at `last_step` even when it is not a multiple of N.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from hooks import _tf_internals
from hooks import validation
from hooks.run_increment import RunIncrement


class StopAtStepHook(tf.compat.v1.train.SessionRunHook):
  """Requests stop once the global step reaches a last step."""

  def __init__(self,
               num_steps: Optional[int] = None,
               last_step: Optional[int] = None,
               steps_per_run: int = 1,
               *,
               iterations_per_run: Optional[tf.Tensor] = None):
    """Initializes a `StopAtStepHook`.

    Args:
      num_steps: steps to run after the session is created.
      last_step: the step to stop at. Exactly one of `num_steps` and
        `last_step` must be set.
      steps_per_run: steps one `Session.run` advances.
      iterations_per_run: optional scalar integer placeholder (plain or
        with default) that the train loop uses as its iteration count; the
        hook feeds it every run.

    Raises:
      ValueError: both or neither of `num_steps` and `last_step`; a
        non-positive `num_steps` or `steps_per_run`; a negative `last_step`;
        an `iterations_per_run` that is not a scalar integer placeholder.
      TypeError: a non-integer `num_steps`, `last_step` or `steps_per_run`.
    """
    validation.exactly_one({"num_steps": num_steps, "last_step": last_step})
    if num_steps is not None:
      num_steps = validation.positive_int("num_steps", num_steps)
    if last_step is not None:
      last_step = validation.non_negative_int("last_step", last_step)
    self._increment = RunIncrement(steps_per_run, name="steps_per_run")
    if iterations_per_run is not None:
      if (not isinstance(iterations_per_run, tf.Tensor)
          or iterations_per_run.op.type not in ("Placeholder",
                                                "PlaceholderWithDefault")
          or not iterations_per_run.dtype.is_integer
          or iterations_per_run.shape.rank not in (0, None)):
        raise ValueError(
            f"`iterations_per_run` ({iterations_per_run!r}) must be a scalar "
            f"integer tf.compat.v1.placeholder that the train loop uses as "
            f"its iteration count.")
    self._num_steps = num_steps
    self._last_step = last_step
    self._iterations_per_run = iterations_per_run
    self._global_step_tensor = None
    self._known_step: Optional[int] = None

  @property
  def last_step(self) -> Optional[int]:
    """The step to stop at; known after the session is created."""
    return self._last_step

  def steps_for_next_run(self, global_step: int) -> int:
    """The iterations the next run should do, starting at `global_step`."""
    return max(0, min(self._increment.declared, self._last_step - global_step))

  def begin(self) -> None:
    self._global_step_tensor = _tf_internals.global_step_read()
    if self._global_step_tensor is None:
      raise RuntimeError(
          "StopAtStepHook needs a global step in the graph: create it with "
          "tf.compat.v1.train.get_or_create_global_step() before the session "
          "is created, and advance it in the train op.")

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._increment.new_session()
    self._known_step = int(session.run(self._global_step_tensor))
    if self._last_step is None:
      self._last_step = self._known_step + self._num_steps

  def before_run(self, run_context):
    if self._known_step is not None and self._known_step >= self._last_step:
      # Nothing left to do (e.g. resumed at or past last_step): do not run.
      run_context.request_stop()
    feed = None
    if self._iterations_per_run is not None:
      feed = {self._iterations_per_run:
              self.steps_for_next_run(self._known_step)}
    return tf.compat.v1.train.SessionRunArgs(self._global_step_tensor,
                                             feed_dict=feed)

  def after_run(self, run_context, run_values) -> None:
    stale_step = int(run_values.results)
    # The gap to the previous run's stale step is that run's increment.
    self._increment.observe_stale(stale_step)
    self._known_step = None
    if (self._iterations_per_run is not None
        or self._increment.needs_real_step
        or stale_step + self._increment.estimate() >= self._last_step):
      # With a fed loop the next feed needs the exact step.
      global_step = int(run_context.session.run(self._global_step_tensor))
      self._increment.observe_real(stale_step, global_step)
      self._known_step = global_step
      if global_step >= self._last_step:
        run_context.request_stop()

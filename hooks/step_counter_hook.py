"""`StepCounterHook`: global_step/sec and examples/sec, steps_per_run-aware.

Every `every_n_steps` steps (or `every_n_secs` seconds) it logs and writes
TensorBoard scalars `<global step name>/sec` (`global_step/sec`, as TF's
hook names it) and, given `batch_size`,
`examples/sec` (= steps/sec x global batch size). Rates are measured between
two reads of the real global step, so with N steps per `Session.run` they
count N steps per run, not 1.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

from absl import logging
import tensorflow as tf

from hooks import _tf_internals
from hooks import validation
from hooks.run_increment import RunIncrement
from hooks.schedule import StepOrSecondsSchedule
from hooks.trigger import StepTrigger

STEPS_PER_SEC_TAG = "global_step/sec"  # With the default global step name.
EXAMPLES_PER_SEC_TAG = "examples/sec"


class StepCounterHook(tf.compat.v1.train.SessionRunHook):
  """Counts steps (and examples) per second."""

  def __init__(self,
               every_n_steps: Optional[int] = 100,
               every_n_secs: Optional[float] = None,
               output_dir: Optional[str] = None,
               summary_writer: Optional[tf.compat.v1.summary.FileWriter] = None,
               steps_per_run: int = 1,
               batch_size: Optional[int] = None,
               *,
               clock: Callable[[], float] = time.monotonic):
    """Initializes a `StepCounterHook`.

    Args:
      every_n_steps: report every N steps. Set it to None to use
        `every_n_secs`; exactly one of the two must be set.
      every_n_secs: report every N seconds (a fraction is fine).
      output_dir: where to write summaries (through the shared
        `FileWriterCache`), unless `summary_writer` is given. With neither,
        rates are only logged.
      summary_writer: the writer to use.
      steps_per_run: steps one `Session.run` advances.
      batch_size: global examples per step; enables `examples/sec`.
      clock: returns the current time in seconds; a fake one in tests.

    Raises:
      ValueError: both or neither of `every_n_steps` and `every_n_secs`; a
        non-positive integer argument; both `output_dir` and `summary_writer`.
      TypeError: a non-integer `every_n_steps`, `steps_per_run` or
        `batch_size`; a non-number `every_n_secs`.
    """
    self._schedule = StepOrSecondsSchedule(
        every_steps=every_n_steps, every_secs=every_n_secs,
        steps_name="every_n_steps", secs_name="every_n_secs")
    self._increment = RunIncrement(steps_per_run, name="steps_per_run")
    self._trigger = StepTrigger(self._schedule, self._increment)
    validation.at_most_one({"output_dir": output_dir,
                            "summary_writer": summary_writer})
    if output_dir is not None:
      output_dir = validation.non_empty_path("output_dir", output_dir)
    if batch_size is not None:
      batch_size = validation.positive_int("batch_size", batch_size)
    self._output_dir = output_dir
    self._summary_writer = summary_writer
    self._batch_size = batch_size
    self._clock = clock
    self._global_step_tensor = None
    self._steps_tag = STEPS_PER_SEC_TAG
    self._last_stale_step = None

  def begin(self) -> None:
    if self._summary_writer is None and self._output_dir:
      self._summary_writer = tf.compat.v1.summary.FileWriterCache.get(
          self._output_dir)
    self._global_step_tensor = _tf_internals.global_step_read()
    if self._global_step_tensor is None:
      raise RuntimeError(
          "StepCounterHook needs a global step in the graph: create it with "
          "tf.compat.v1.train.get_or_create_global_step() before the session "
          "is created, and advance it in the train op.")
    # As TF's hook: the tag is named after the global step variable.
    self._steps_tag = (
        tf.compat.v1.train.get_global_step().op.name + "/sec")

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._increment.new_session()
    # Rates must not span a session restart (a restore may move the step).
    self._schedule.reset()

  def before_run(self, run_context):
    del run_context  # Unused.
    return tf.compat.v1.train.SessionRunArgs(self._global_step_tensor)

  def after_run(self, run_context, run_values) -> None:
    stale_step = int(run_values.results)
    fired = self._trigger.poll(
        stale_step, self._clock(),
        lambda: int(run_context.session.run(self._global_step_tensor)))
    if fired is not None:
      global_step, elapsed = fired
      if elapsed.secs is not None and elapsed.secs > 0:
        self._record(elapsed.steps / elapsed.secs, global_step)
    if stale_step == self._last_stale_step:
      logging.log_first_n(
          logging.WARNING,
          "global_step did not advance in the last run (still %d): pass "
          "the global step to the optimizer or increment it in the loop.", 5,
          stale_step)
    self._last_stale_step = stale_step

  def end(self, session) -> None:
    del session  # Unused.
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def _record(self, steps_per_sec: float, global_step: int) -> None:
    values = [tf.compat.v1.Summary.Value(tag=self._steps_tag,
                                         simple_value=steps_per_sec)]
    if self._batch_size is None:
      logging.info("%s: %g", self._steps_tag, steps_per_sec)
    else:
      examples_per_sec = steps_per_sec * self._batch_size
      values.append(tf.compat.v1.Summary.Value(tag=EXAMPLES_PER_SEC_TAG,
                                               simple_value=examples_per_sec))
      logging.info("%s: %g, %s: %g", self._steps_tag, steps_per_sec,
                   EXAMPLES_PER_SEC_TAG, examples_per_sec)
    if self._summary_writer is not None:
      self._summary_writer.add_summary(tf.compat.v1.Summary(value=values),
                                       global_step)

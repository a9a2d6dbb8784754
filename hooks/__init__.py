"""SessionRunHooks that know one `Session.run` may advance many steps.

Public surface::

  CheckpointSaverHook      save every N steps/secs, steps_per_run-aware
  CheckpointSaveError      a save failed (not retried as a "preemption")
  CheckpointSaverListener  callbacks around each save
  NonFiniteWeightsError    a save refused because a weight was NaN/Inf
  StepCounterHook          global_step/sec and examples/sec
  StopAtStepHook           stop exactly at a last step
  StepOrSecondsSchedule    the pure "is it due?" schedule the hooks use
  RunIncrement             declared vs. observed steps per run
  global_step_read         the shared global-step read tensor of a graph
"""

from hooks._tf_internals import global_step_read
from hooks.checkpoint_saver_hook import CheckpointSaverHook
from hooks.checkpoint_saver_listener import CheckpointSaverListener
from hooks.checkpointer import CheckpointSaveError
from hooks.checkpointer import NonFiniteWeightsError
from hooks.run_increment import RunIncrement
from hooks.schedule import Elapsed
from hooks.schedule import StepOrSecondsSchedule
from hooks.step_counter_hook import StepCounterHook
from hooks.stop_at_step_hook import StopAtStepHook

__all__ = [
    "CheckpointSaveError",
    "CheckpointSaverHook",
    "CheckpointSaverListener",
    "Elapsed",
    "NonFiniteWeightsError",
    "RunIncrement",
    "StepCounterHook",
    "StepOrSecondsSchedule",
    "StopAtStepHook",
    "global_step_read",
]

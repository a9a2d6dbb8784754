"""Stop on a NaN loss before a checkpoint of NaN weights can be saved.

The hook fetches the loop's per-step losses (the same outfeed tensor the
runner fetches, so nothing is computed twice) and raises in `after_run`. The
runner places it before the checkpoint saver, whose `after_run` then never
runs for that loop, and a session that ends with an error does not call the
hooks' `end()`: no checkpoint is saved after the NaN. Weights can turn NaN in
the last update of a loop whose losses were all finite; the saver checks the
weights themselves before every save (`check_finite`), so the newest
checkpoint is one whose weights were finite.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

import hooks
from tpu_harness.errors import NanLossError


class NanLossHook(tf.compat.v1.train.SessionRunHook):
  """Raises NanLossError if any step of a loop had a non-finite loss."""

  def __init__(self, losses: tf.Tensor,
               latest_saved: Callable[[], Optional[str]] = lambda: None):
    """Initializes the hook.

    Args:
      losses: the loop's per-step losses, shape [steps].
      latest_saved: the newest checkpoint saved so far, once any write in
        flight is complete (for the message).
    """
    self._losses = losses
    self._latest_saved = latest_saved
    self._global_step = None

  def begin(self) -> None:
    self._global_step = hooks.global_step_read()

  def before_run(self, run_context):
    del run_context  # Unused.
    return tf.compat.v1.train.SessionRunArgs(
        {"losses": self._losses, "start": self._global_step})

  def after_run(self, run_context, run_values) -> None:
    del run_context  # Unused.
    losses = np.asarray(run_values.results["losses"])
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
      step = int(run_values.results["start"]) + int(bad[0]) + 1
      latest = self._latest_saved()
      resume = (f"it resumes from {latest}, saved before the NaN with its "
                f"weights checked finite" if latest else
                "it resumes from the newest checkpoint in model_dir")
      raise NanLossError(
          f"Loss is {losses[bad[0]]} at step {step}; training stopped and no "
          f"checkpoint was saved after it. Lower the learning rate or check "
          f"the input, then train again: {resume}.")

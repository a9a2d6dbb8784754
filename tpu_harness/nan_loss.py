"""Stop on a NaN loss before a checkpoint of NaN weights can be saved.

The hook fetches the loop's per-step losses (the same outfeed tensor the
runner fetches, so nothing is computed twice) and raises in `after_run`. The
runner places it before the checkpoint saver, whose `after_run` then never
runs for that loop, and a session that ends with an error does not call the
hooks' `end()`: the newest checkpoint stays the last good one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import hooks


class NanLossError(RuntimeError):
  """The training loss became NaN or infinite."""


class NanLossHook(tf.compat.v1.train.SessionRunHook):
  """Raises NanLossError if any step of a loop had a non-finite loss."""

  def __init__(self, losses: tf.Tensor):
    """Args: losses: the loop's per-step losses, shape [steps]."""
    self._losses = losses
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
      raise NanLossError(
          f"Loss is {losses[bad[0]]} at step {step}; training stopped and no "
          f"checkpoint was saved after it. Lower the learning rate or check "
          f"the input, then train again: it resumes from the last good "
          f"checkpoint.")

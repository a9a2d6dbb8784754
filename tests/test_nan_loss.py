"""NanLossHook: raises in after_run, naming the global step of the bad loss."""

import numpy as np
import pytest
import tensorflow as tf

import hooks
from tpu_harness._run.nan_loss import NanLossError
from tpu_harness._run.nan_loss import NanLossHook


class _Values:

  def __init__(self, results):
    self.results = results


@pytest.mark.parametrize("losses,start,message", [
    ([0.5, np.nan, 0.2], 10, "Loss is nan at step 12"),
    ([np.inf], 0, "Loss is inf at step 1"),
])
def test_non_finite_losses_raise(losses, start, message):
  tf.compat.v1.train.get_or_create_global_step()
  hook = NanLossHook(tf.constant([0.0]))
  hook.begin()
  with pytest.raises(NanLossError, match=message):
    hook.after_run(None, _Values({"losses": np.array(losses),
                                  "start": start}))


def test_finite_losses_pass_and_fetches_are_requested():
  tf.compat.v1.train.get_or_create_global_step()
  losses = tf.constant([1.0, 2.0])
  hook = NanLossHook(losses)
  hook.begin()
  args = hook.before_run(None)
  assert args.fetches["losses"] is losses
  assert args.fetches["start"] is hooks.global_step_read()
  hook.after_run(None, _Values({"losses": np.array([1.0, 2.0]),
                                "start": 3}))

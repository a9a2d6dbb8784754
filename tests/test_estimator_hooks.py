"""tpu_harness.estimator's hook names: TF's own session-hook classes, as
TF's estimator module exported them."""

import pytest
import tensorflow as tf

from support import estimator_base_program as program
from tpu_harness import estimator as tf_estimator
from tpu_harness.estimator import _hooks


@pytest.mark.parametrize("name", _hooks.NAMES)
def test_each_name_is_tfs_own_class(name):
  assert getattr(tf_estimator, name) is getattr(tf.compat.v1.train, name)
  assert name in tf_estimator.__all__


def test_a_hook_written_against_the_estimators_names_runs(tmp_path):
  # As ELECTRA's ETAHook: tf.estimator.SessionRunHook, SessionRunArgs.
  class StepsSeen(tf_estimator.SessionRunHook):

    def __init__(self):
      self.steps = []

    def begin(self):
      self._step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
      return tf_estimator.SessionRunArgs(self._step)

    def after_run(self, run_context, run_values):
      self.steps.append(int(run_values.results))

  hook = StepsSeen()
  estimator = program.estimator(str(tmp_path / "model"))
  estimator.train(program.train_input_fn, max_steps=3, hooks=[hook])
  assert hook.steps == [0, 1, 2]

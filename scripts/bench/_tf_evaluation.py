"""TensorFlow's own evaluation loop, as Estimator's `evaluate()` ran it.

The benchmark's baseline evaluates as TPUEstimator(use_tpu=False) did,
through `tensorflow.python.training.evaluation`: its `_evaluate_once` (an
eval step counter updated with the metrics, a FinalOpsHook reading their
values) and its `_StopAfterNEvalsHook` (which logs the progress). Both are
private TensorFlow names with no public equivalent in TF 2.x; they are
used here, in one module, so that the baseline runs the code Estimator
ran rather than a copy that could drift from it.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import tensorflow.compat.v1 as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.training import evaluation
# pylint: enable=g-direct-tensorflow-import


def evaluate_once(checkpoint: str, updates: tf.Operation,
                  values: Dict[str, tf.Tensor],
                  hooks: Sequence[tf.train.SessionRunHook],
                  steps: int) -> Dict[str, Any]:
  """Runs `updates` `steps` times in a session restored from
  `checkpoint`, with `hooks` and then the step counter's, as Estimator's
  `_evaluate_run` did; returns the values of `values` read at the end."""
  stop = evaluation._StopAfterNEvalsHook(  # pylint: disable=protected-access
      num_evals=steps)
  return evaluation._evaluate_once(  # pylint: disable=protected-access
      checkpoint_path=checkpoint, eval_ops=updates, final_ops=values,
      hooks=list(hooks) + [stop])

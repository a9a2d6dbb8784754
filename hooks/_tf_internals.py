"""The one place where the hooks touch TensorFlow internals.

Why: TF's own hooks fetch the global step through a shared read tensor that
`training_util._get_or_create_global_step_read` creates once per graph and
caches in a collection. Using the same tensor (a) lets our hooks and TF's share
one fetch per run, and (b) lets a training loop put its increment under a
control dependency on that read, so the step fetched with a run is the step
before the run. TF has no public name for it. A background checkpoint write
saves what the Saver it stands in for saves (`saver_variables`). Nothing here
leaks into a public signature: callers get plain tensors, variables or None.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
from tensorflow.python.training import training_util  # pylint: disable=g-direct-tensorflow-import


def global_step_read(graph: Optional[tf.Graph] = None) -> Optional[tf.Tensor]:
  """Returns the graph's cached global-step read tensor, creating it if needed.

  Args:
    graph: the graph; the default graph if None.

  Returns:
    An int64 scalar tensor, or None if the graph has no global step.
  """
  return training_util._get_or_create_global_step_read(graph)  # pylint: disable=protected-access


def saver_variables(saver) -> Optional[list]:
  """The variables `saver` saves, if it was built with a list of variables
  (what it saves is otherwise not public: None).

  Why: a background checkpoint write (`AsyncCheckpointWriter`) saves the
  same variables as the Saver it stands in for; `tf.compat.v1.train.Saver`
  keeps its `var_list` in a private attribute.
  """
  var_list = getattr(saver, "_var_list", None)  # pylint: disable=protected-access
  if isinstance(var_list, (list, tuple)) and var_list and all(
      isinstance(v, tf.Variable) for v in var_list):
    return list(var_list)
  return None

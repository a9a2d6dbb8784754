"""Hooks that fetch tensors built in `model_fn`, in a device loop.

    training_hooks=[tf.compat.v1.train.LoggingTensorHook({'loss': loss},
                                                          every_n_iter=10)]

`model_fn` runs inside the device loop, whose tensors a session cannot
fetch: a hook that asks for `loss` would fail ("not fetchable"). TPUEstimator
with `use_tpu=False` ran `model_fn` in the session's graph, where this
worked. So the tensors a spec's hooks hold when `model_fn` returns (as
attributes, or in a dict or list attribute, e.g. LoggingTensorHook's
tensors, NanTensorHook's loss) go through the loop's outfeed with each step,
and the hooks are pointed at the last step's value on the host before they
begin: a hook sees the value of the last step of each loop, once per loop
(`every_n_iter=N` counts loops). Tensors of unknown shape are left as they
are, with a warning (the outfeed needs static shapes), except in a loop
whose batches have no fixed size (`dynamic`), whose outfeed pads them and
the host trims them back (`device_loop.with_shapes`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness.loops import device_loop

PREFIX = "hook_tensor/"


class HookTensors:
  """The tensors a spec's hooks hold, sent out of the loop and rebound."""

  def __init__(self, hooks: Sequence[tf.compat.v1.train.SessionRunHook],
               dynamic: bool = False):
    """Finds the tensors `hooks` hold (one replica's spec's hooks).

    Args:
      hooks: the hooks.
      dynamic: take tensors of no static shape too (of known rank).
    """
    self._dynamic = dynamic
    self._found: List[Tuple[Any, Any, tf.Tensor]] = []
    for hook in hooks:
      for attr, value in list(vars(hook).items()):
        if isinstance(value, tf.Tensor):
          self._add(hook, vars(hook), attr, value)
        elif isinstance(value, dict):
          for key, item in value.items():
            if isinstance(item, tf.Tensor):
              self._add(hook, value, key, item)
        elif isinstance(value, list):
          for index, item in enumerate(value):
            if isinstance(item, tf.Tensor):
              self._add(hook, value, index, item)

  def _add(self, hook, container, key, tensor: tf.Tensor) -> None:
    if not tensor.shape.is_fully_defined() and not (
        self._dynamic and tensor.shape.rank is not None):
      logging.warning(
          "%s holds %s, of shape %s: a tensor of a device loop reaches the "
          "host with a static shape only, so the hook cannot fetch it. Give "
          "it a static shape (tf.ensure_shape).", type(hook).__name__,
          tensor.name, tensor.shape)
      return
    self._found.append((container, key, tensor))

  def outfeed(self) -> Dict[str, tf.Tensor]:
    """{outfeed name: tensor} to send out with each step."""
    return {f"{PREFIX}{index}": tensor
            for index, (_, _, tensor) in enumerate(self._found)}

  def rebind(self, stacked: Mapping[str, tf.Tensor]) -> None:
    """Points the hooks at the last step's values (trimmed to their real
    shape where the outfeed padded them).

    Args:
      stacked: the loop's outfeed, {name: [steps, ...]} (replica 0's).
    """
    for index, (container, key, _) in enumerate(self._found):
      container[key] = device_loop.trimmed_tensor(stacked,
                                                  f"{PREFIX}{index}", -1)

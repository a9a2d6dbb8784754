"""`Job`: what a Runner's train, evaluate and predict run with.

`tpu_harness.Runner` checks its arguments and makes one `Job` per call
(`params` hold that mode's per-replica batch size); `training.train`,
`evaluation.evaluate` and `prediction.predict` run their sessions with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict

import tensorflow as tf

from tpu_harness.config import RunConfig
from tpu_harness.loops.device_loop import DeviceLoop


@dataclasses.dataclass(frozen=True)
class Job:
  """What a Runner trains, evaluates and predicts with.

  Attributes:
    model_fn: the user's `model_fn`.
    config: the `RunConfig`.
    device: how loops are built.
    params: `params` for `model_fn` and `input_fn`, with the mode's
      per-replica `batch_size`.
    session_config: the sessions' config (the device loop's, with
      `config.session_config` merged in).
    clock: seconds, for the progress log.
  """
  model_fn: Callable[..., Any]
  config: RunConfig
  device: DeviceLoop
  params: Dict[str, Any]
  session_config: tf.compat.v1.ConfigProto
  clock: Callable[[], float]

"""The `Runner`'s constructor arguments, checked before anything is built.

`model_fn` must take (features, labels, mode, params); `params` must leave
`batch_size` and `input_context` to the runner, which sets them for each
call; each batch size is split evenly among the replicas
(`config.tpu.num_shards`); a `device_loop` given for a pod
(`config.tpu.hosts`) builds for as many hosts as it has.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Mapping, Optional

from hooks import validation
from tpu_harness.config import RunConfig
from tpu_harness.loops.device_loop import DeviceLoop


def checked(model_fn: Callable[..., Any], config: RunConfig,
            params: Optional[Mapping[str, Any]],
            batch_sizes: Mapping[str, Optional[int]],
            device_loop: Optional[DeviceLoop]) -> Dict[str, Any]:
  """The Runner's arguments checked; returns a copy of `params`.

  Args:
    model_fn: `Runner`'s `model_fn`.
    config: its `config`.
    params: its `params`.
    batch_sizes: `{argument name: value}` of its batch sizes.
    device_loop: its `device_loop`.

  Raises:
    TypeError, ValueError: what `tpu_harness.Runner.__init__` documents.
  """
  if not callable(model_fn):
    raise TypeError(f"`model_fn` ({model_fn!r}) must be callable.")
  try:
    inspect.signature(model_fn).bind(None, None, None, None)
  except (TypeError, ValueError):
    raise TypeError(
        f"`model_fn` ({model_fn!r}) must accept (features, labels, mode, "
        f"params); its signature is {_signature(model_fn)}.") from None
  if not isinstance(config, RunConfig):
    raise TypeError(f"`config` ({config!r}) must be a "
                    f"tpu_harness.RunConfig.")
  if params is not None and not isinstance(params, Mapping):
    raise TypeError(f"`params` ({params!r}) must be a dict or None.")
  params = dict(params or {})
  if "batch_size" in params:
    raise ValueError(
        f"`params` ({params!r}) must not contain 'batch_size': the runner "
        f"sets it to the per-replica batch size; pass train_batch_size / "
        f"eval_batch_size / predict_batch_size instead.")
  if "input_context" in params:
    raise ValueError(
        f"`params` ({params!r}) must not contain 'input_context': the "
        f"runner sets it for `input_fn` (a tf.distribute.InputContext "
        f"saying which host's input it makes).")
  shards = config.tpu.num_shards
  for name, value in batch_sizes.items():
    if value is None:
      continue
    validation.positive_int(name, value)
    if value % shards:
      raise ValueError(f"`{name}` ({value}) must be a multiple of "
                       f"`num_shards` ({shards}).")
  if (device_loop is not None and config.tpu.hosts
      and device_loop.num_hosts != config.tpu.num_hosts):
    raise ValueError(
        f"`device_loop` ({type(device_loop).__name__}) builds for "
        f"{device_loop.num_hosts} host(s), `config.tpu.hosts` names "
        f"{config.tpu.num_hosts}; leave `device_loop` unset for a pod.")
  return params


def _signature(fn: Callable) -> str:
  try:
    return str(inspect.signature(fn))
  except (TypeError, ValueError):
    return "unknown"

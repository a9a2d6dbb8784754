"""The interface between the runner and a device loop implementation.

A device loop builds, for one mode, the graph that runs many steps inside one
`Session.run`: an infeed the host fills, a loop that dequeues one element per
step and calls `model_fn` once per replica, and an outfeed that brings each
step's values back to the host. The runner drives it the same way whatever
the device: request infeed steps, run `fetches` with `iterations` fed, repeat.

`tpu_harness.cpu_loop.CpuEmulationLoop` implements it on virtual CPU devices,
`tpu_harness.tpu_loop.TpuLoop` with `tf.compat.v1.tpu` ops.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from tpu_harness.infeed import HostInfeed


@dataclasses.dataclass(frozen=True)
class BuiltLoop:
  """The graph of one mode's loop.

  Attributes:
    infeed: the host side of the input.
    iterations: scalar int32 placeholder with default `iterations_per_loop`:
      the steps the next run does; feed it only to run fewer (a feed costs
      host time on every run).
    fetches: what one run returns: `outfeed` (per-step values stacked on a
      first axis of length `iterations`), for TRAIN `end_step`, the global
      step after the run, for EVAL `update` (the metrics' updates).
    host_call: the spec's `host_call` built on the host (TRAIN, EVAL), or
      None; run it on each loop's outfeed.
    metrics: EVAL: `{name: value tensor}` of the streaming metrics, updated by
      running `fetches`.
    hooks: session hooks the loop needs (e.g. TPU system initialization, the
      host_call's summary writers), run before the runner's own.
    spec: the first replica's ModelSpec (its scaffold_fn, hooks and
      export outputs).
  """
  infeed: HostInfeed
  iterations: tf.Tensor
  fetches: Dict[str, Any]
  host_call: Optional[Any] = None
  metrics: Optional[Dict[str, tf.Tensor]] = None
  hooks: Tuple[tf.compat.v1.train.SessionRunHook, ...] = ()
  spec: Optional[Any] = None


class DeviceLoop(abc.ABC):
  """Builds train, eval and predict loops for one kind of device."""

  @property
  @abc.abstractmethod
  def num_shards(self) -> int:
    """Replicas each step is split across."""

  @abc.abstractmethod
  def session_config(self) -> tf.compat.v1.ConfigProto:
    """The session configuration the loop needs (devices, threads)."""

  def check_target(self, master: str) -> None:
    """Raises if session target `master` cannot run this loop; called
    before any graph is built. The default accepts any target."""
    del master  # Any target will do.

  @abc.abstractmethod
  def build_train(self, model_fn: Callable, input_fn: Callable,
                  params: Dict[str, Any], skip_steps: int,
                  max_steps: Optional[int] = None) -> BuiltLoop:
    """Builds the training loop, skipping `skip_steps` steps of input and
    reading at most `max_steps` after them."""

  @abc.abstractmethod
  def build_eval(self, model_fn: Callable, input_fn: Callable,
                 params: Dict[str, Any],
                 steps: Optional[int] = None) -> BuiltLoop:
    """Builds the evaluation loop and its metrics; reads at most `steps`
    steps of input (None: until it ends)."""

  @abc.abstractmethod
  def build_predict(self, model_fn: Callable, input_fn: Callable,
                    params: Dict[str, Any]) -> BuiltLoop:
    """Builds the prediction loop; fetches carry `valid` row counts."""

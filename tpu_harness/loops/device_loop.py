"""The interface between the runner and a device loop implementation.

A device loop builds, for one mode, the graph that runs many steps inside one
`Session.run`: an infeed the host fills, a loop that dequeues one element per
step and calls `model_fn` once per replica, and an outfeed that brings each
step's values back to the host. The runner drives it the same way whatever
the device: request infeed steps, run `fetches` with `iterations` fed, repeat.

`tpu_harness.loops.cpu_loop.CpuEmulationLoop` implements it on virtual CPU
devices, `tpu_harness.loops.tpu_loop.TpuLoop` with `tf.compat.v1.tpu` ops;
`LoopBuilder` is what the two share.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from typing import (Any, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple)

import tensorflow as tf

import hooks as hooks_lib
from tpu_harness._infeed.layout import DEFAULT_LAYOUT
from tpu_harness._infeed.layout import InfeedLayout
from tpu_harness._infeed.position import InputPosition
from tpu_harness._infeed.protocol import Infeed

# Outfeed names every loop uses: each step's mean loss (TRAIN, EVAL), the
# count of real rows in each replica's predict batch, and predictions given
# as one tensor rather than a dict.
LOSS = "loss"
VALID = "__valid__"
SINGLE_PREDICTION = "__single__"
# The outfeed name of the shape of each step's value of another outfeed
# value whose static shape is not fully defined (an evaluation batch of no
# fixed size; see `with_shapes`).
SHAPE_PREFIX = "__shape__/"


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
      step after the run.
    host_call: the spec's `host_call` built on the host (TRAIN, EVAL), or
      None; run it on each loop's outfeed.
    metrics: EVAL: the streaming metrics (`eval_metrics.HostMetrics`: their
      `values`, and `update(outfeed, count)` after each loop; one of
      `hooks`).
    hooks: session hooks the loop needs (e.g. TPU system initialization, the
      host_call's summary writers), run before the runner's own.
    spec: the first replica's ModelSpec (its scaffold_fn, hooks and
      export outputs).
    summaries: TRAIN: the `summaries.LoopSummaries` of the
      `tf.compat.v1.summary` ops `model_fn` made, or None (none made, or a
      loop that does not send them).
  """
  infeed: Infeed
  iterations: tf.Tensor
  fetches: Dict[str, Any]
  host_call: Optional[Any] = None
  metrics: Optional[Any] = None
  hooks: Tuple[tf.compat.v1.train.SessionRunHook, ...] = ()
  spec: Optional[Any] = None
  summaries: Optional[Any] = None


class DeviceLoop(abc.ABC):
  """Builds train, eval and predict loops for one kind of device."""

  @property
  @abc.abstractmethod
  def num_shards(self) -> int:
    """Replicas each step is split across."""

  @abc.abstractmethod
  def session_config(self) -> tf.compat.v1.ConfigProto:
    """The session configuration the loop needs (devices, threads)."""

  @property
  def per_host_input(self) -> bool:
    """Whether `input_fn` gets the global batch size and its batches are
    split among the replicas (else: it gets the per-replica batch size)."""
    return False

  @property
  def compiles_for_tpu(self) -> bool:
    """Whether the loop's steps run on a TPU, so that the runner checks
    that they compile for one (`tpu_harness.tpu.check`) before building."""
    return False

  @property
  def variable_device(self) -> str:
    """Where the model's variables and the global step live ("": wherever
    TF places them)."""
    return ""

  @property
  def num_hosts(self) -> int:
    """Hosts, each with its own input pipeline (see `tpu_harness.tpu.pod`)."""
    return 1

  def input_params(self, params: Dict[str, Any], host: int = 0
                   ) -> Dict[str, Any]:
    """The params `input_fn` gets on `host`, from `model_fn`'s: with
    `input_context` (a `tf.distribute.InputContext`: the number of hosts,
    this host's index, the replicas), and with `per_host_input` the host's
    batch size."""
    params = dict(params, input_context=tf.distribute.InputContext(
        num_input_pipelines=self.num_hosts, input_pipeline_id=host,
        num_replicas_in_sync=self.num_shards))
    if self.per_host_input:
      params["batch_size"] *= self.num_shards // self.num_hosts
    return params

  def check_target(self, master: str) -> None:
    """Raises if session target `master` cannot run this loop; called
    before any graph is built. The default accepts any target."""
    del master  # Any target will do.

  @abc.abstractmethod
  def build_train(self, model_fn: Callable, input_fn: Callable,
                  params: Dict[str, Any], skip_steps: int,
                  max_steps: Optional[int] = None,
                  position: Optional[InputPosition] = None) -> BuiltLoop:
    """Builds the training loop: its infeed drops `skip_steps` steps of
    input first (unless `position` restores a saved position) and reads at
    most `max_steps` after them; `position` is saved with checkpoints."""

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


class LoopBuilder(DeviceLoop):
  """What `CpuEmulationLoop` and `TpuLoop` share: replicas split evenly
  over hosts, the loop and infeed sizes, and the checks and assembly
  around the device-specific step and loop."""

  def __init__(self, *, num_shards: int, num_hosts: int,
               iterations_per_loop: int, max_infeed_bytes: Optional[int],
               per_host_input: bool, host_call_every_n_steps: int,
               infeed_layout: InfeedLayout = DEFAULT_LAYOUT,
               hosts_name: str = "num_hosts"):
    """Args: see the subclasses; `hosts_name` is how their caller names
    the number of hosts, for the error.

    Raises:
      ValueError: `num_shards` is not a multiple of `num_hosts`.
    """
    if num_shards % num_hosts:
      raise ValueError(f"`num_shards` ({num_shards}) must be a multiple of "
                       f"{hosts_name} ({num_hosts}).")
    self._num_shards = num_shards
    self._num_hosts = num_hosts
    self._cores = num_shards // num_hosts
    self._iterations_per_loop = iterations_per_loop
    self._max_infeed_bytes = max_infeed_bytes
    self._per_host_input = per_host_input
    self._host_call_every = host_call_every_n_steps
    self._infeed_layout = infeed_layout

  @property
  def num_shards(self) -> int:
    return self._num_shards

  @property
  def num_hosts(self) -> int:
    return self._num_hosts

  @property
  def per_host_input(self) -> bool:
    return self._per_host_input

  def _layout(self, name: str, params: Dict[str, Any]) -> str:
    """How a host's infeed was sized, for its memory error."""
    return (f"iterations_per_loop={self._iterations_per_loop}, "
            f"{name}_batch_size={params['batch_size'] * self._cores}")

  def _refuse_predict_on_pod(self, system: str) -> None:
    if self._num_hosts > 1:
      raise NotImplementedError(
          f"predict() on a {system} of several hosts is not supported: "
          f"predict with a Runner of one host (TPUConfig without `hosts`).")

  def _built(self, infeed, iterations, fetches, holder,
             host_device: Optional[str] = None,
             hooks: Sequence[tf.compat.v1.train.SessionRunHook] = (),
             **kwargs) -> BuiltLoop:
    """The BuiltLoop: replica 0's host_call built on the host
    (`host_device`), after the loop's own `hooks`."""
    call = holder.get("host_call")
    if call is not None:
      with tf.device(host_device) if host_device else (
          contextlib.nullcontext()):
        call.build(fetches["outfeed"])
    found = holder.get("hook_tensors")
    if found is not None:
      with tf.device(host_device) if host_device else (
          contextlib.nullcontext()):
        found.rebind(fetches["outfeed"])
    own = [hook for hook in (call, kwargs.get("metrics")) if hook is not None]
    return BuiltLoop(infeed=infeed, iterations=iterations, fetches=fetches,
                     host_call=call, spec=holder.get("spec"),
                     hooks=tuple(hooks) + tuple(own), **kwargs)


def hooks_step_reads() -> List[tf.Tensor]:
  """The global step as the run's hooks fetch it: TF's shared read tensor
  (TF's and our hooks) and the variable's own read (a hook that fetches
  `tf.compat.v1.train.get_global_step()`). A run's steps start after
  these, so every hook sees the step from before the run, whatever the
  scheduling; empty where the graph has no global step."""
  reads = [hooks_lib.global_step_read()]
  global_step = tf.compat.v1.train.get_global_step()
  if global_step is not None:  # What Session.run fetches for it.
    reads.append(global_step.graph.as_graph_element(global_step))
  return [read for read in reads if read is not None]


def prediction_outfeed(per_replica: List[Any], valid: tf.Tensor
                       ) -> Dict[str, tf.Tensor]:
  """One step's predict outfeed: {name: the replicas' predictions stacked
  on a first axis}, with `valid`, the replicas' counts of real rows.

  Args:
    per_replica: each replica's `predictions` (a tensor, or a dict).
    valid: [replicas] int32.
  """
  values = {VALID: valid}
  if isinstance(per_replica[0], tf.Tensor):
    values[SINGLE_PREDICTION] = tf.stack(per_replica)
    return values
  for name in per_replica[0]:
    if name in (VALID, SINGLE_PREDICTION):
      raise ValueError(f"A prediction may not be named {name!r}.")
    values[name] = tf.stack([predictions[name]
                             for predictions in per_replica])
  return values


def with_shapes(values: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """One step's outfeed `values` with, for each whose static shape is not
  fully defined, its shape under `SHAPE_PREFIX + name`: the outfeed pads
  such values, and the host trims them back (`trimmed`, `trimmed_tensor`).

  Raises:
    ValueError: a value of unknown rank.
  """
  shapes = {}
  for name, value in values.items():
    if value.shape.is_fully_defined():
      continue
    if value.shape.rank is None:
      raise ValueError(
          f"A step's value {name!r} ({value.name}) has no known rank: it "
          f"cannot leave the device loop. Give it a static rank "
          f"(tf.ensure_shape).")
    shapes[SHAPE_PREFIX + name] = tf.shape(value, out_type=tf.int32)
  return dict(values, **shapes)


def trimmed(outfeed: Mapping[str, Any], count: int) -> Mapping[str, Any]:
  """A loop's outfeed ({name: [steps, ...]} as numpy arrays) with each
  padded value (see `with_shapes`) a list of its `count` steps' values,
  each trimmed to its real shape; `outfeed` itself if none is padded.
  Either way `result[name][step]` is that step's value."""
  if not any(name.startswith(SHAPE_PREFIX) for name in outfeed):
    return outfeed
  result = {}
  for name, value in outfeed.items():
    if name.startswith(SHAPE_PREFIX):
      continue
    shapes = outfeed.get(SHAPE_PREFIX + name)
    if shapes is None:
      result[name] = value
      continue
    result[name] = [
        value[step][tuple(slice(0, int(size)) for size in shapes[step])]
        for step in range(count)]
  return result


def trimmed_tensor(stacked: Mapping[str, tf.Tensor], name: str,
                   step: int) -> tf.Tensor:
  """Step `step` of the loop's outfeed value `name` (a graph tensor),
  trimmed to its real shape if the outfeed padded it (see `with_shapes`)."""
  value = stacked[name][step]
  shape = stacked.get(SHAPE_PREFIX + name)
  if shape is None:
    return value
  return tf.slice(value, tf.zeros_like(shape[step]), shape[step])

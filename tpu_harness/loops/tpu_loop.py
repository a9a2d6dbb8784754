"""The device loop on a Cloud TPU, built with `tf.compat.v1.tpu`.

The same interface as `cpu_loop.CpuEmulationLoop`, with TPU parts:

* host: the input pipeline runs on the TPU host's CPU; the runner's infeed
  thread runs an in-graph loop of `InfeedEnqueueTuple` ops, one per core
  (`device_ordinal`), each with that core's per-replica part of the step's
  element (see `step_input` for the layouts), while the device loop runs
  when tf.data knows the input's length, as TPUEstimator's infeed thread
  did (a TPU's infeed holds a few steps, not a loop), else before it;
* device: `tf.compat.v1.tpu.replicate` over `num_shards` cores of a
  `tf.while_loop` whose body dequeues (`InfeedDequeueTuple`), calls
  `model_fn` (its `tpu_harness.CrossShardOptimizer` becomes TF's TPU
  `CrossShardOptimizer`, i.e. a `CrossReplicaSum` of gradients), and sends
  the step's values out (`OutfeedEnqueueTuple`): the loss and host_call
  tensors in TRAIN, also the `eval_metrics` tensors in EVAL, the
  predictions and the count of real rows in PREDICT;
* host again: after the loop, `OutfeedDequeueTuple` per core per step, in
  the same `Session.run`, merged across cores as the CPU emulation merges
  replicas (the loss averaged, eval and host_call tensors concatenated,
  predictions stacked); `metric_fn` and `host_call` run there;
* session start: `tf.compat.v1.tpu.initialize_system()`.

With `num_hosts` > 1 (a pod slice: the TPU system's hosts are tasks 0.. of
job `worker`), each host runs its own input pipeline (`input_fn` called with
its `params['input_context']`) and infeed thread, enqueues to its own cores
and dequeues their outfeed on its CPU; replica r is core r % cores_per_host
of host r // cores_per_host, as TPUEstimator placed them.

It cannot run without a TPU: on CPU, tests check the graphs' ops and shapes
for all three modes (tests/test_tpu_loop.py). It was not run on a TPU.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

from hooks import validation
from tpu_harness import spec as spec_lib
from tpu_harness._infeed import pod as pod_infeed
from tpu_harness._infeed.host import HostInfeed
from tpu_harness._infeed.layout import DEFAULT_LAYOUT
from tpu_harness._infeed.layout import InfeedLayout
from tpu_harness._infeed.position import InputPosition
from tpu_harness.loops import cross_shard
from tpu_harness.loops import device_loop
from tpu_harness.loops import eval_metrics as eval_metrics_lib
from tpu_harness.loops import hook_tensors
from tpu_harness.loops import step_input
from tpu_harness.loops.device_loop import BuiltLoop
from tpu_harness.loops.device_loop import LoopBuilder
from tpu_harness.loops.device_loop import LOSS
from tpu_harness.loops.device_loop import prediction_outfeed
from tpu_harness.loops.eval_metrics import EvalMetrics
from tpu_harness.loops.hook_tensors import HookTensors
from tpu_harness.loops.host_call import HostCall
from tpu_harness.tpu import cluster
from tpu_harness.tpu import pod

# Outfeed values whose per-core parts are stacked on a new first axis (the
# predict outfeed); the loss is averaged; the rest concatenated on axis 0.
_STACKED = "stacked"


class TpuSystemHook(tf.compat.v1.train.SessionRunHook):
  """Initializes the TPU system when a session starts."""

  def __init__(self, host_device: str):
    self._host_device = host_device
    self._init = None

  def begin(self) -> None:
    with tf.device(self._host_device):
      self._init = tf.compat.v1.tpu.initialize_system()

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    session.run(self._init)


class TpuLoop(LoopBuilder):
  """`iterations_per_loop` steps on `num_shards` TPU cores per Session.run."""

  def __init__(self, *, num_shards: int, iterations_per_loop: int,
               host_device: str = "/job:worker/task:0/device:CPU:0",
               max_infeed_bytes: Optional[int] = None,
               per_host_input: bool = False,
               host_call_every_n_steps: int = 1,
               num_hosts: int = 1,
               infeed_layout: InfeedLayout = DEFAULT_LAYOUT):
    """Initializes the loop builder.

    Args:
      num_shards: TPU cores.
      iterations_per_loop: steps per `Session.run`.
      host_device: the TPU host's CPU, where the input pipeline runs (one
        host).
      max_infeed_bytes: host memory the infeed may hold (see
        `RunConfig.max_infeed_bytes`); None: no limit.
      per_host_input: `input_fn` gets the global batch size and its batches
        are split among the cores (else: per-core batches).
      host_call_every_n_steps: run a `host_call` on every n-th step of a
        loop only.
      num_hosts: the TPU system's hosts (a pod slice), tasks 0.. of job
        `worker`: host h feeds and drains its own `num_shards / num_hosts`
        cores from its own input pipeline, on its CPU
        (`tpu_harness.tpu.pod.host_device(h)`). Replica r runs on host
        r // cores_per_host, core r % cores_per_host: TF's default device
        assignment for data parallelism, which TPUEstimator assumed too.
      infeed_layout: how the infeeds size their reads.

    Raises:
      ValueError: `num_shards` is not a multiple of `num_hosts`.
    """
    validation.positive_int("num_hosts", num_hosts)
    super().__init__(
        num_shards=num_shards, num_hosts=num_hosts,
        iterations_per_loop=iterations_per_loop,
        max_infeed_bytes=max_infeed_bytes, per_host_input=per_host_input,
        host_call_every_n_steps=host_call_every_n_steps,
        infeed_layout=infeed_layout, hosts_name="`num_hosts`")
    self._host_devices = ([host_device] if num_hosts == 1 else
                          [pod.host_device(h) for h in range(num_hosts)])
    self._host_device = self._host_devices[0]

  def session_config(self) -> tf.compat.v1.ConfigProto:
    return tf.compat.v1.ConfigProto(allow_soft_placement=True,
                                    isolate_session_state=True)

  def check_target(self, master: str) -> None:
    """Raises errors.NoTPUError unless `master` has TPU devices."""
    cluster.check_tpu_devices(master)

  @property
  def per_host_input(self) -> bool:
    return self._per_host_input

  @property
  def compiles_for_tpu(self) -> bool:
    return True

  # The three modes.

  def build_train(self, model_fn: Callable, input_fn: Callable,
                  params: Dict[str, Any], skip_steps: int,
                  max_steps: Optional[int] = None,
                  position: Optional[InputPosition] = None) -> BuiltLoop:
    mode = spec_lib.ModeKeys.TRAIN
    datasets = self._per_step(input_fn, params, mode, position)

    def step_fn(element, holder):
      spec, values = self._step(model_fn, element, mode, params, holder)
      return [spec.train_op], values

    infeed, iterations, stacked, holder = self._build(
        mode, datasets, params, step_fn, max_steps, skip_steps, position)
    with tf.device(self._host_device):
      with tf.control_dependencies(list(stacked.values())):
        end_step = tf.compat.v1.train.get_global_step().read_value()
    return self._built(infeed, iterations,
                       {"outfeed": stacked, "end_step": end_step}, holder)

  def build_eval(self, model_fn, input_fn, params, steps=None) -> BuiltLoop:
    mode = spec_lib.ModeKeys.EVAL
    datasets = self._per_step(input_fn, params, mode)

    def step_fn(element, holder):
      spec, values = self._step(model_fn, element, mode, params, holder)
      if spec.eval_metrics is not None:
        metrics = EvalMetrics(*spec.eval_metrics)
        holder["eval_metrics"] = metrics
        values.update(metrics.outfeed([spec.eval_metrics[1]]))
      return [], values

    infeed, iterations, stacked, holder = self._build(
        mode, datasets, params, step_fn, steps)
    with tf.device(self._host_device):
      metrics = eval_metrics_lib.HostMetrics(stacked,
                                             holder.get("eval_metrics"))
    return self._built(infeed, iterations, {"outfeed": stacked}, holder,
                       metrics=metrics)

  def build_predict(self, model_fn, input_fn, params) -> BuiltLoop:
    mode = spec_lib.ModeKeys.PREDICT
    self._refuse_predict_on_pod("TPU system")
    with tf.device(self._host_device):
      dataset = step_input.padded_predict_input(
          step_input.make_input(input_fn, self.input_params(params), mode),
          params["batch_size"], self._num_shards, self._per_host_input)

    def step_fn(element, holder):
      features, valid = element
      spec = spec_lib.check_spec(model_fn(features, None, mode, params),
                                 mode)
      holder["spec"] = spec
      holder[_STACKED] = True
      # One core's values; the host stacks the cores' on a first axis.
      values = prediction_outfeed([spec.predictions],
                                  tf.reshape(valid, [1]))
      return [], {name: value[0] for name, value in values.items()}

    infeed, iterations, stacked, holder = self._build(
        mode, [dataset], params, step_fn)
    return self._built(infeed, iterations, {"outfeed": stacked}, holder)

  # Building blocks.

  def _per_step(self, input_fn, params, mode,
                position: Optional[InputPosition] = None
                ) -> List[tf.data.Dataset]:
    """Per host, on its CPU: `input_fn`'s batches for its cores, one
    element per step with the cores' parts stacked on a first axis."""
    datasets = []
    for host, device in enumerate(self._host_devices):
      with tf.device(device):
        datasets.append(step_input.per_step(
            step_input.make_input(
                input_fn, self.input_params(params, host), mode,
                position=position.host(host) if position else None),
            self._cores, self._per_host_input, stack_one=True))
    return datasets

  def _step(self, model_fn, element, mode, params, holder) -> tuple:
    """`model_fn` on one core's (features, labels) or features alone;
    returns its spec and the values it sends out: the loss, and the
    host_call's tensors."""
    features, labels = step_input.features_and_labels(element)
    spec = spec_lib.check_spec(model_fn(features, labels, mode, params),
                               mode)
    holder["spec"] = spec
    values = {LOSS: spec.loss}
    values.update(self._host_call(spec, holder))
    found = HookTensors(spec.hooks_for_mode)
    holder["hook_tensors"] = found
    values.update(found.outfeed())
    return spec, values

  def _host_call(self, spec, holder) -> Dict[str, tf.Tensor]:
    """This core's host_call outfeed values; the call goes in `holder`."""
    if spec.host_call is None:
      return {}
    call = HostCall(*spec.host_call, every_n_steps=self._host_call_every)
    holder["host_call"] = call
    return call.outfeed([spec.host_call[1]])

  def _build(self, mode: str, datasets: List[tf.data.Dataset],
             params: Dict[str, Any], step_fn: Callable,
             max_steps: Optional[int] = None, skip_steps: int = 0,
             position: Optional[InputPosition] = None) -> tuple:
    """The infeed, the replicated device loop and the host's outfeed loop.

    Args:
      mode: a ModeKeys value.
      datasets: per host, one element per step, each leaf [cores of the
        host, ...].
      params: `model_fn`'s params (for the infeed's messages).
      step_fn: `step_fn(element, holder)` on one core's part of a step's
        element returns (ops to run, {name: tensor} to send out); it
        records the spec and calls in `holder`.
      max_steps: read at most this many steps of input.
      skip_steps: steps of input to drop first, unless `position`
        restores a saved one.
      position: the input position saved with checkpoints (TRAIN).

    Returns:
      (infeed, iterations, {name: [steps, ...]} merged outfeed, holder).
    """
    shards = self._num_shards
    structure = datasets[0].element_spec
    per_core = [spec.shape[1:] for spec in tf.nest.flatten(structure)]
    dtypes = [spec.dtype for spec in tf.nest.flatten(structure)]
    name = {spec_lib.ModeKeys.PREDICT: "predict"}.get(mode, mode)

    def enqueue(values: List[tf.Tensor]) -> tf.Operation:
      # The host's cores (on its device), by their ordinal on the host.
      return tf.group([
          tf.raw_ops.InfeedEnqueueTuple(
              inputs=[value[core] for value in values],
              shapes=per_core, device_ordinal=core)
          for core in range(self._cores)])

    infeed = pod_infeed.per_host(
        name, self._host_devices, lambda host, infeed_name: (
        HostInfeed(
            datasets[host], self._iterations_per_loop, infeed_name,
            enqueue_fn=enqueue, max_steps=max_steps,
            max_bytes=self._max_infeed_bytes,
            layout=self._layout(name, params), sizes=self._infeed_layout,
            skip_steps=skip_steps,
            position=(position.host(host) if position is not None
                      else None))), as_pod=self._num_hosts > 1)
    iterations = tf.compat.v1.placeholder_with_default(
        self._iterations_per_loop, [], name="iterations")
    outfeed: Dict[str, Any] = {}
    holder: Dict[str, Any] = {}

    def computation(steps):
      def body(i):
        flat = tf.raw_ops.InfeedDequeueTuple(dtypes=dtypes, shapes=per_core)
        ops, values = step_fn(tf.nest.pack_sequence_as(structure, flat),
                              holder)
        names = sorted(values)
        outfeed["names"] = names
        outfeed["dtypes"] = [values[n].dtype for n in names]
        outfeed["shapes"] = [values[n].shape for n in names]
        with tf.control_dependencies(ops):
          sent = tf.raw_ops.OutfeedEnqueueTuple(
              inputs=[tf.identity(values[n]) for n in names])
        with tf.control_dependencies([sent]):
          return i + 1

      with cross_shard.tpu_replicas(shards) as context:
        done = tf.while_loop(lambda i: i < steps, body, [tf.constant(0)],
                             name="device_loop")
      cross_shard.require_used(context.used, mode == spec_lib.ModeKeys.TRAIN,
                               shards, "summed across TPU cores")
      return done

    # The steps start after the hooks' global-step reads, so they see the
    # step from before the run.
    with tf.control_dependencies(device_loop.hooks_step_reads()):
      replicated = tf.compat.v1.tpu.replicate(
          computation, inputs=[[iterations]] * shards)
    with tf.device(self._host_device):
      stacked = self._dequeue_outfeed(iterations, outfeed,
                                      [r[0] for r in replicated],
                                      stack=holder.get(_STACKED, False))
    return infeed, iterations, stacked, holder

  def _dequeue_outfeed(self, iterations, spec, done,
                       stack: bool) -> Dict[str, tf.Tensor]:
    """Host loop: each step's outfeed from every core, stacked by step.

    Per name: [steps] for the loss (mean over cores); with `stack`, the
    cores' values stacked: [steps, cores, ...]; else concatenated on their
    first axis: [steps, cores * d, ...].
    """
    names, dtypes, shapes = spec["names"], spec["dtypes"], spec["shapes"]
    arrays = [tf.TensorArray(dtype, size=iterations) for dtype in dtypes]

    def body(step, *arrays):
      per_core = []
      for replica in range(self._num_shards):
        host, core = divmod(replica, self._cores)
        with tf.device(self._host_devices[host]):
          per_core.append(tf.raw_ops.OutfeedDequeueTuple(
              dtypes=dtypes, shapes=shapes, device_ordinal=core))
      out = []
      for index, (name, array) in enumerate(zip(names, arrays)):
        values = [core_values[index] for core_values in per_core]
        if name == LOSS:
          merged = tf.add_n(values) / self._num_shards
        elif name.startswith(hook_tensors.PREFIX):
          merged = values[0]  # Replica 0's, whose hooks the session runs.
        elif stack:
          merged = tf.stack(values)
        else:
          merged = tf.concat(values, axis=0)
        out.append(array.write(step, merged))
      return [step + 1] + out

    with tf.control_dependencies(done):
      result = tf.while_loop(lambda step, *_: step < iterations, body,
                             [tf.constant(0)] + arrays, name="outfeed_loop")
    return {name: array.stack() for name, array in zip(names, result[1:])}

  def _built(self, infeed, iterations, fetches, holder,
             **kwargs) -> BuiltLoop:
    """The BuiltLoop: the TPU system initialized with each session, the
    host_call built on the host."""
    return super()._built(infeed, iterations, fetches, holder,
                          host_device=self._host_device,
                          hooks=(TpuSystemHook(self._host_device),),
                          **kwargs)

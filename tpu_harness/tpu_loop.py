"""The device loop on a Cloud TPU, built with `tf.compat.v1.tpu`.

The same interface as `cpu_loop.CpuEmulationLoop`, with TPU parts:

* host: the input pipeline runs on the TPU host's CPU; the runner's infeed
  thread runs an in-graph loop of `InfeedEnqueueTuple` ops, one per core
  (`device_ordinal`), each with that core's per-replica batch;
* device: `tf.compat.v1.tpu.replicate` over `num_shards` cores of a
  `tf.while_loop` whose body dequeues (`InfeedDequeueTuple`), calls
  `model_fn` (its `tpu_harness.CrossShardOptimizer` becomes TF's TPU
  `CrossShardOptimizer`, i.e. a `CrossReplicaSum` of gradients), and sends
  the step's loss and host_call tensors out (`OutfeedEnqueueTuple`);
* host again: after the loop, `OutfeedDequeueTuple` per core per step, in
  the same `Session.run`;
* session start: `tf.compat.v1.tpu.initialize_system()`.

This build only covers training (evaluate and predict raise
NotImplementedError). It cannot run without a TPU: on CPU, tests check the
graph's ops and shapes (tests/test_tpu_loop.py). It was not run on a TPU.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

import hooks
from tpu_harness import cluster
from tpu_harness import cross_shard
from tpu_harness import spec as spec_lib
from tpu_harness.cpu_loop import LOSS
from tpu_harness.cpu_loop import make_input
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.host_call import HostCall
from tpu_harness.infeed import HostInfeed


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


class TpuLoop(DeviceLoop):
  """`iterations_per_loop` steps on `num_shards` TPU cores per Session.run."""

  def __init__(self, *, num_shards: int, iterations_per_loop: int,
               host_device: str = "/job:worker/task:0/device:CPU:0"):
    self._num_shards = num_shards
    self._iterations_per_loop = iterations_per_loop
    self._host_device = host_device

  @property
  def num_shards(self) -> int:
    return self._num_shards

  def session_config(self) -> tf.compat.v1.ConfigProto:
    return tf.compat.v1.ConfigProto(allow_soft_placement=True,
                                    isolate_session_state=True)

  def check_target(self, master: str) -> None:
    """Raises cluster.NoTPUError unless `master` has TPU devices."""
    cluster.check_tpu_devices(master)

  def build_train(self, model_fn: Callable, input_fn: Callable,
                  params: Dict[str, Any], skip_steps: int,
                  max_steps: Optional[int] = None) -> BuiltLoop:
    mode = spec_lib.ModeKeys.TRAIN
    shards = self._num_shards
    with tf.device(self._host_device):
      dataset = make_input(input_fn, params, mode).batch(
          shards, drop_remainder=True).skip(skip_steps)
      structure = dataset.element_spec
      per_replica = [spec.shape[1:] for spec in tf.nest.flatten(structure)]
      dtypes = [spec.dtype for spec in tf.nest.flatten(structure)]

      def enqueue(values: List[tf.Tensor]) -> tf.Operation:
        return tf.group([
            tf.raw_ops.InfeedEnqueueTuple(
                inputs=[value[core] for value in values],
                shapes=per_replica, device_ordinal=core)
            for core in range(shards)])

      infeed = HostInfeed(dataset, self._iterations_per_loop, "train",
                          enqueue_fn=enqueue, max_steps=max_steps)
    iterations = tf.compat.v1.placeholder_with_default(
        self._iterations_per_loop, [], name="iterations")
    outfeed_spec: Dict[str, Any] = {}
    holder: Dict[str, Any] = {}

    def computation(steps):
      def body(i):
        flat = tf.raw_ops.InfeedDequeueTuple(dtypes=dtypes,
                                             shapes=per_replica)
        features, labels = tf.nest.pack_sequence_as(structure, flat)
        spec = spec_lib.check_spec(model_fn(features, labels, mode, params),
                                   mode)
        holder["spec"] = spec
        values = {LOSS: spec.loss}
        if spec.host_call is not None:
          # Each core sends its own tensors; the host concatenates them.
          call = HostCall(*spec.host_call)
          holder["host_call"] = call
          values.update(call.outfeed([spec.host_call[1]]))
        names = sorted(values)
        outfeed_spec["names"] = names
        outfeed_spec["dtypes"] = [values[n].dtype for n in names]
        outfeed_spec["shapes"] = [values[n].shape for n in names]
        with tf.control_dependencies([spec.train_op]):
          sent = tf.raw_ops.OutfeedEnqueueTuple(
              inputs=[tf.identity(values[n]) for n in names])
        with tf.control_dependencies([sent]):
          return i + 1

      with cross_shard.tpu_replicas(shards) as context:
        done = tf.while_loop(lambda i: i < steps, body, [tf.constant(0)],
                             name="device_loop")
      if not context.used and shards > 1:
        raise ValueError(
            f"With num_shards={shards}, `model_fn` must wrap its optimizer in "
            f"tpu_harness.CrossShardOptimizer so that gradients are summed "
            f"across TPU cores.")
      return done

    read = hooks.global_step_read()
    with tf.control_dependencies([read] if read is not None else []):
      replicated = tf.compat.v1.tpu.replicate(
          computation, inputs=[[iterations]] * shards)
    with tf.device(self._host_device):
      stacked = self._dequeue_outfeed(iterations, outfeed_spec,
                                      [r[0] for r in replicated])
      with tf.control_dependencies(list(stacked.values())):
        end_step = tf.compat.v1.train.get_global_step().read_value()
      call = holder.get("host_call")
      if call is not None:
        call.build(stacked)
    return BuiltLoop(infeed=infeed, iterations=iterations,
                     fetches={"outfeed": stacked, "end_step": end_step},
                     host_call=call, spec=holder.get("spec"),
                     hooks=(TpuSystemHook(self._host_device),)
                     + ((call,) if call is not None else ()))

  def _dequeue_outfeed(self, iterations, spec, done) -> Dict[str, tf.Tensor]:
    """Host loop: each step's outfeed from every core, stacked by step.

    Per name: [steps] for the loss (mean over cores), else the cores'
    values concatenated on their first axis: [steps, cores * d, ...].
    """
    names, dtypes, shapes = spec["names"], spec["dtypes"], spec["shapes"]
    arrays = [tf.TensorArray(dtype, size=iterations) for dtype in dtypes]

    def body(step, *arrays):
      per_core = [tf.raw_ops.OutfeedDequeueTuple(
          dtypes=dtypes, shapes=shapes, device_ordinal=core)
                  for core in range(self._num_shards)]
      out = []
      for index, (name, array) in enumerate(zip(names, arrays)):
        values = [core_values[index] for core_values in per_core]
        merged = (tf.add_n(values) / self._num_shards if name == LOSS
                  else tf.concat(values, axis=0))
        out.append(array.write(step, merged))
      return [step + 1] + out

    with tf.control_dependencies(done):
      result = tf.while_loop(lambda step, *_: step < iterations, body,
                             [tf.constant(0)] + arrays, name="outfeed_loop")
    return {name: array.stack() for name, array in zip(names, result[1:])}

  def build_eval(self, model_fn, input_fn, params, steps=None) -> BuiltLoop:
    raise NotImplementedError(
        "TpuLoop builds training loops only so far; evaluate with the CPU "
        "emulation (CpuEmulationLoop, --use_tpu=false).")

  def build_predict(self, model_fn, input_fn, params) -> BuiltLoop:
    raise NotImplementedError(
        "TpuLoop builds training loops only so far; predict with the CPU "
        "emulation (CpuEmulationLoop, --use_tpu=false).")

"""The device loop emulated on CPU: same infeed, loop and outfeed, no TPU.

Per step, the loop dequeues one infeed element holding every replica's batch
(with num_shards > 1, stacked on a first axis of length num_shards), calls
`model_fn` once per replica on its own virtual CPU device (`/device:CPU:i`,
made by the session's `device_count`; see `tpu_harness.loops.replicas` for
what is shared and what is per replica), and enqueues the step's values (loss,
host_call tensors, eval tensors or predictions) into an outfeed queue. The
host dequeues the loop's values in the same `Session.run`, after the loop.

Input: by default `input_fn` gets the per-replica batch size and each
replica takes its own consecutive batch (TPUEstimator's PER_HOST_V2); with
`per_host_input`, `input_fn` gets the global batch size and each batch is
split among the replicas along its first axis (PER_HOST_V1, and
TPUEstimator's evaluation and prediction input). With `dynamic_batch`
(one replica), training and evaluation batches of no fixed size are padded
in the infeed and cut back to their real rows before `model_fn`; values of no
static shape leave through a padding outfeed with their shapes
(`device_loop.with_shapes`), and the host trims them.

With iterations_per_loop=1 the run is a single step with no while loop and
no outfeed queue: their fixed cost per run (about 110 us in a trace on a
2-core machine) is a third of a small model's step, and one step needs
neither. `scripts/bench/loop.py` measures the result (runner/1).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from tpu_harness import _tf_internals
from tpu_harness import spec as spec_lib
from tpu_harness._infeed import pod as pod_infeed
from tpu_harness._infeed.host import HostInfeed
from tpu_harness._infeed.layout import DEFAULT_LAYOUT
from tpu_harness._infeed.layout import InfeedLayout
from tpu_harness._infeed.position import InputPosition
from tpu_harness._infeed.protocol import Infeed
from tpu_harness.loops import device_loop
from tpu_harness.loops import eval_metrics as eval_metrics_lib
from tpu_harness.loops import replicas as replicas_lib
from tpu_harness.loops import step_input
from tpu_harness.loops.device_loop import LoopBuilder
from tpu_harness.loops.device_loop import LOSS
from tpu_harness.loops.device_loop import prediction_outfeed
from tpu_harness.loops.eval_metrics import EvalMetrics
from tpu_harness.loops.hook_tensors import HookTensors
from tpu_harness.loops.host_call import HostCall
from tpu_harness.loops.step_input import make_input
from tpu_harness.loops.summaries import LoopSummaries
from tpu_harness.tpu import pod


class CpuEmulationLoop(LoopBuilder):
  """Runs `iterations_per_loop` steps of `num_shards` replicas on CPU."""

  def __init__(self, *, num_shards: int, iterations_per_loop: int,
               max_infeed_bytes: Optional[int] = None,
               per_host_input: bool = False,
               host_call_every_n_steps: int = 1,
               hosts: Sequence[str] = (),
               infeed_layout: InfeedLayout = DEFAULT_LAYOUT,
               dynamic_batch: bool = False):
    """Initializes the loop builder.

    Args:
      num_shards: replicas, each on its own virtual CPU device (of its
        host's TF server, on a pod).
      iterations_per_loop: steps per `Session.run`.
      max_infeed_bytes: host memory the infeed may hold (see
        `RunConfig.max_infeed_bytes`); None: no limit.
      per_host_input: `input_fn` gets the global batch size and its batches
        are split among the replicas (else: per-replica batches).
      host_call_every_n_steps: run a `host_call` on every n-th step of a
        loop only.
      hosts: a pod's hosts (see `tpu_harness.tpu.pod`): each runs
        `num_shards / len(hosts)` replicas on its virtual CPUs and its own
        infeed; the variables live on host 0. Empty: this process, or one
        session target, with `num_shards` virtual CPUs.
      infeed_layout: how the infeeds size their reads.
      dynamic_batch: training and evaluation batches may be of any size up
        to the batch size, as TF's Estimator (and TPUEstimator with
        use_tpu=False) took them, e.g. a partial last batch: `model_fn` gets
        each batch's real rows, with a first dimension of unknown size (one
        replica on one host only).

    Raises:
      ValueError: `num_shards` is not a multiple of the number of hosts;
        `dynamic_batch` with several replicas or hosts.
    """
    if dynamic_batch and (num_shards != 1 or hosts):
      raise ValueError(
          f"`dynamic_batch` needs one replica on one host, not "
          f"num_shards={num_shards} on {max(1, len(hosts))} host(s): "
          f"replicas run batches of fixed shape.")
    super().__init__(
        num_shards=num_shards, num_hosts=max(1, len(hosts)),
        iterations_per_loop=iterations_per_loop,
        max_infeed_bytes=max_infeed_bytes, per_host_input=per_host_input,
        host_call_every_n_steps=host_call_every_n_steps,
        infeed_layout=infeed_layout, hosts_name="the number of `hosts`")
    self._hosts = tuple(hosts)
    self._dynamic_batch = dynamic_batch

  @property
  def variable_device(self) -> str:
    return pod.host_device(0) if self._hosts else ""

  def session_config(self) -> tf.compat.v1.ConfigProto:
    if self._hosts:
      # The hosts' servers have their virtual CPUs; each session's queues,
      # iterators and variables on them are its own.
      config = tf.compat.v1.ConfigProto(allow_soft_placement=False,
                                        isolate_session_state=True)
    else:
      config = tf.compat.v1.ConfigProto(
          device_count={"CPU": self._num_shards}, allow_soft_placement=False)
    # Grappler optimizes the graph of every new set of fetches, and a
    # train() has a dozen (restore, saves, the infeed's runs, the loop);
    # one pass of its optimizers instead of TF's default two is 10 ms less
    # for each small one (60 variables read: 22 ms instead of 32), about
    # 0.1 s less per train() or evaluate() of the bench's resnet program,
    # and gave the same loop graph for both bench programs but one NoOp.
    # Of what is left, the MLIR (TFG) passes, the memory optimizer and
    # the layout optimizer (it converts data layouts for GPUs) took 6.6
    # of the 14 ms a 184-node run's optimization took, and changed
    # nothing in the graphs the train and eval loops of both bench
    # programs ran: without them the resnet program's evaluate()
    # then train() took 2.38 s instead of 2.54 (medians of 8 alternating;
    # see docs/benchmarks.md). A session_config that sets rewrite options
    # keeps its own (`tpu_harness.Runner`).
    options = config.graph_options.rewrite_options
    options.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
    options.disable_tfg_optimizer = True
    options.memory_optimization = rewriter_config_pb2.RewriterConfig.NO_MEM_OPT
    options.layout_optimizer = rewriter_config_pb2.RewriterConfig.OFF
    return config

  # Building blocks.

  def _input(self, input_fn: Callable, params: Dict[str, Any], mode: str,
             name: str, skip_steps: int = 0,
             max_steps: Optional[int] = None,
             position: Optional[InputPosition] = None,
             cut: Optional[List[Callable]] = None):
    """The infeed of `input_fn`'s input: a HostInfeed, or on a pod a
    PodInfeed of one per host, each calling `input_fn` with its host's
    `input_context` and reading its input on its host.

    Given a list `cut` (one replica on one host), batches of no fixed size
    are accepted: padded (`step_input.padded_batches`), with the function
    that cuts a step's element back to its real rows appended to `cut`."""
    devices = ([pod.host_device(host) for host in range(self.num_hosts)]
               if self._hosts else [None])

    def build(host, infeed_name):
      dataset = make_input(
          input_fn, self.input_params(params, host), mode,
          position=position.host(host) if position else None,
          dynamic_batch=cut is not None)
      if cut is not None and step_input.has_dynamic_batch(
          dataset.element_spec):
        dataset, cut_fn = step_input.padded_batches(dataset,
                                                    params["batch_size"])
        cut.append(cut_fn)
      return self._infeed(dataset, infeed_name, params, skip_steps,
                          max_steps, position=position, host=host)

    return pod_infeed.per_host(name, devices, build, as_pod=bool(self._hosts))

  def _infeed(self, dataset: tf.data.Dataset, name: str,
              params: Dict[str, Any], skip_steps: int = 0,
              max_steps: Optional[int] = None,
              batched: bool = False,
              position: Optional[InputPosition] = None,
              host: int = 0) -> HostInfeed:
    """The infeed of one element per step: with several replicas on the
    host, their batches stacked (unless already `batched`); the first
    `skip_steps` steps' elements dropped, or `position` restored; at most
    `max_steps` read."""
    if not batched:
      dataset = step_input.per_step(dataset, self._cores,
                                    self._per_host_input)
    return HostInfeed(dataset, self._iterations_per_loop, name,
                      max_steps=max_steps, max_bytes=self._max_infeed_bytes,
                      layout=self._layout(name, params),
                      skip_steps=skip_steps, sizes=self._infeed_layout,
                      position=(position.host(host) if position is not None
                                else None))

  def _replicas(self, model_fn: Callable, element: Any, mode: str,
                params: Dict[str, Any], stacked: bool,
                summaries: Optional[List[tf.Tensor]] = None
                ) -> List[spec_lib.ModelSpec]:
    return replicas_lib.call_replicas(
        model_fn, element, mode, params, self._num_shards, stacked,
        devices=([pod.replica_device(*divmod(index, self._cores))
                  for index in range(self._num_shards)]
                 if self._hosts else None),
        variable_device=self.variable_device,
        cores_per_host=self._cores if self._hosts else None,
        summaries=summaries, in_loop=self._iterations_per_loop != 1)

  def _mean_loss(self, specs: List[spec_lib.ModelSpec]) -> tf.Tensor:
    if len(specs) == 1:
      return specs[0].loss
    return tf.add_n([spec.loss for spec in specs]) / len(specs)

  def _host_call(self, specs: List[spec_lib.ModelSpec], holder: Dict
                 ) -> Dict[str, tf.Tensor]:
    """Replica 0's host_call, recorded in `holder`; its outfeed values."""
    if not _all_or_none(specs, "host_call"):
      return {}
    fn, tensors = specs[0].host_call
    call = HostCall(fn, tensors, every_n_steps=self._host_call_every)
    holder["host_call"] = call
    return call.outfeed([spec.host_call[1] for spec in specs])

  def _loop(self, infeed: Infeed, step_fn: Callable[[Any], tuple],
            last: Optional[List[tf.Tensor]] = None) -> tuple:
    """Builds one run's steps; returns (iterations, stacked outfeed values).

    `step_fn(element)` returns (ops to run, {name: tensor} to outfeed).
    While it builds, `last` (if given) holds one function that makes a
    boolean tensor: whether the step is the run's last.
    """
    iterations = tf.compat.v1.placeholder_with_default(
        self._iterations_per_loop, [], name="iterations")
    # The steps start after the hooks' global-step reads, so they see the
    # step from before the run.
    with tf.control_dependencies(device_loop.hooks_step_reads()):
      if self._iterations_per_loop == 1:
        if last is not None:
          last[:] = [lambda: tf.constant(True)]
        ops, values = _step(infeed, step_fn)
        with tf.control_dependencies(ops):
          return iterations, {name: tf.expand_dims(value, 0)
                              for name, value in values.items()}
      return iterations, self._while_loop(infeed, step_fn, iterations,
                                          last)

  def _while_loop(self, infeed: Infeed, step_fn: Callable[[Any], tuple],
                  iterations: tf.Tensor,
                  last: Optional[List[tf.Tensor]] = None
                  ) -> Dict[str, tf.Tensor]:
    """`iterations` steps; their values through an outfeed queue that the
    host dequeues after the loop (a padding one if some value's shape is
    not fully defined: see `device_loop.with_shapes`). `last`: as
    `_loop`'s."""
    holder = {}

    def body(i):
      if last is not None:
        last[:] = [lambda: tf.equal(i + 1, iterations)]
      ops, values = _step(infeed, step_fn)
      names = sorted(values)
      fixed = all(values[n].shape.is_fully_defined() for n in names)
      with tf.init_scope():  # The outfeed lives outside the loop.
        holder["outfeed"] = (tf.queue.FIFOQueue if fixed
                             else tf.queue.PaddingFIFOQueue)(
            self._iterations_per_loop, [values[n].dtype for n in names],
            shapes=[values[n].shape for n in names], names=names,
            name="outfeed")
      with tf.control_dependencies(ops):
        enqueue = holder["outfeed"].enqueue(
            {n: tf.identity(values[n]) for n in names})
      with tf.control_dependencies([enqueue]):
        return i + 1

    (done,) = tf.while_loop(lambda i: i < iterations, body, [tf.constant(0)],
                            name="device_loop")
    with tf.control_dependencies([done]):
      return holder["outfeed"].dequeue_many(iterations)

  # The three modes.

  def build_train(self, model_fn, input_fn, params, skip_steps,
                  max_steps=None, position=None):
    with tf.device(self.variable_device):
      return self._build_train(model_fn, input_fn, params, skip_steps,
                               max_steps, position)

  def _replica_step(self, model_fn, element, mode, params, holder,
                    dynamic: bool = False,
                    summaries: Optional[List[tf.Tensor]] = None) -> tuple:
    """The replicas' `model_fn` on a step's element; returns their specs
    and what every mode sends out: the mean loss, the host_call's and the
    hooks' tensors (the host_call, hook tensors and replica 0's spec go in
    `holder`). `dynamic`: the batch has no fixed size; hook tensors of no
    static shape are sent too. `summaries`: see `call_replicas`."""
    specs = self._replicas(model_fn, element, mode, params,
                           stacked=self._cores > 1, summaries=summaries)
    holder["spec"] = specs[0]
    values = {LOSS: self._mean_loss(specs)}
    values.update(self._host_call(specs, holder))
    values.update(_hook_tensors(specs[0], holder, dynamic))
    return specs, values

  def _build_train(self, model_fn, input_fn, params, skip_steps, max_steps,
                   position):
    mode = spec_lib.ModeKeys.TRAIN
    cut = [] if self._dynamic_batch else None
    infeed = self._input(input_fn, params, mode, "train", skip_steps,
                         max_steps, position, cut=cut)
    global_step = tf.compat.v1.train.get_global_step()
    holder = {}
    last = []

    def step_fn(element):
      summaries = []
      specs, values = self._replica_step(model_fn, element, mode, params,
                                         holder, dynamic=bool(cut),
                                         summaries=summaries)
      if summaries:
        holder["summaries"] = LoopSummaries()
        values.update(holder["summaries"].outfeed(summaries, last[0]()))
      return [s.train_op for s in specs], values

    iterations, stacked = self._loop(infeed, _on_real_rows(cut, step_fn),
                                     last)
    with tf.control_dependencies(list(stacked.values())):
      end_step = global_step.read_value()
    return self._built(infeed, iterations,
                       {"outfeed": stacked, "end_step": end_step}, holder,
                       summaries=holder.get("summaries"))

  def build_eval(self, model_fn, input_fn, params, steps=None):
    with tf.device(self.variable_device):
      return self._build_eval(model_fn, input_fn, params, steps)

  def _build_eval(self, model_fn, input_fn, params, steps):
    mode = spec_lib.ModeKeys.EVAL
    cut = [] if self._dynamic_batch else None
    infeed = self._input(input_fn, params, mode, "eval", max_steps=steps,
                         cut=cut)
    holder = {}

    def step_fn(element):
      specs, values = self._replica_step(model_fn, element, mode, params,
                                         holder, dynamic=bool(cut))
      if _all_or_none(specs, "eval_metrics"):
        metrics = EvalMetrics(*specs[0].eval_metrics)
        holder["eval_metrics"] = metrics
        values.update(metrics.outfeed([s.eval_metrics[1] for s in specs]))
      return self._step_metric_updates(specs[0], holder), values

    iterations, stacked = self._loop(infeed, _on_real_rows(cut, step_fn))
    metrics = eval_metrics_lib.HostMetrics(
        stacked, holder.get("eval_metrics"),
        step_metrics=holder.get("step_metrics"))
    return self._built(infeed, iterations, {"outfeed": stacked}, holder,
                       metrics=metrics)

  def _step_metric_updates(self, spec: spec_lib.ModelSpec, holder: Dict
                           ) -> List[Any]:
    """The update ops of a base Estimator's `eval_metric_ops` (see
    `spec.with_step_metrics`), run by the step; their values go in
    `holder`. Only a step outside a while loop, on one replica, can
    run them."""
    metric_ops = spec_lib.step_metrics(spec)
    if metric_ops is None:
      return []
    if self._iterations_per_loop != 1 or self._num_shards != 1 or self._hosts:
      raise ValueError(
          f"`eval_metric_ops` built in `model_fn` run only with one step "
          f"per Session.run on one replica (iterations_per_loop=1, "
          f"num_shards=1, as tpu_harness.estimator.Estimator runs), not "
          f"with iterations_per_loop={self._iterations_per_loop}, "
          f"num_shards={self._num_shards}; use eval_metrics=(metric_fn, "
          f"tensors).")
    holder["step_metrics"] = {name: pair[0]
                              for name, pair in metric_ops.items()}
    return [pair[1] for pair in metric_ops.values()]

  def build_predict(self, model_fn, input_fn, params):
    self._refuse_predict_on_pod("pod")
    mode = spec_lib.ModeKeys.PREDICT
    dataset = step_input.padded_predict_input(
        make_input(input_fn, self.input_params(params), mode),
        params["batch_size"], self._num_shards, self._per_host_input)
    infeed = self._infeed(dataset, "predict", params, batched=True)
    holder = {}

    def step_fn(element):
      features, valid = element
      specs = self._replicas(model_fn, (features, None), mode, params,
                             stacked=True)
      holder["spec"] = specs[0]
      return [], prediction_outfeed([s.predictions for s in specs], valid)

    iterations, stacked = self._loop(infeed, step_fn)
    return self._built(infeed, iterations, {"outfeed": stacked}, holder)


def _step(infeed: Infeed, step_fn: Callable[[Any], tuple]) -> tuple:
  """One step: `step_fn` on the next element, with every read of the global
  step in it running before the step's increment (see `_tf_internals`)."""
  graph = tf.compat.v1.get_default_graph()
  first = len(graph.get_operations())
  result = step_fn(infeed.dequeue())
  global_step = tf.compat.v1.train.get_global_step()
  if global_step is not None:
    _tf_internals.reads_before_update(global_step,
                                      graph.get_operations()[first:])
  return result


def _on_real_rows(cut: Optional[List[Callable]],
                  step_fn: Callable[[Any], tuple]) -> Callable[[Any], tuple]:
  """`step_fn` for batches of no fixed size: where the input had them
  (`cut` holds the function that cuts a padded element), it gets each
  step's element cut back to its real rows, as Estimator gave them, and
  its values leave with their shapes (`device_loop.with_shapes`)."""

  def on_real_rows(element):
    if not cut:
      return step_fn(element)
    ops, values = step_fn(cut[0](element))
    return ops, device_loop.with_shapes(values)

  return on_real_rows


def _all_or_none(specs: List[spec_lib.ModelSpec], field: str) -> bool:
  """Whether every replica's spec has `field`; ValueError if only some do."""
  given = [getattr(spec, field) is not None for spec in specs]
  if any(given) and not all(given):
    raise ValueError(f"`{field}` must be given by every replica or by none.")
  return all(given)


def _hook_tensors(spec, holder, dynamic: bool = False
                  ) -> Dict[str, tf.Tensor]:
  """The outfeed values of the tensors replica 0's hooks hold (with
  `dynamic`, those of no static shape too); the HookTensors go in
  `holder`."""
  found = HookTensors(spec.hooks_for_mode, dynamic=dynamic)
  holder["hook_tensors"] = found
  return found.outfeed()

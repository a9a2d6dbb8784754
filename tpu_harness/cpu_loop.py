"""The device loop emulated on CPU: same infeed, loop and outfeed, no TPU.

Per step, the loop dequeues one infeed element holding every replica's batch
(with num_shards > 1, stacked on a first axis of length num_shards), calls
`model_fn` once per replica on its own virtual CPU device (`/device:CPU:i`,
made by the session's `device_count`; see `tpu_harness.replicas` for what is
shared and what is per replica), and enqueues the step's values (loss,
host_call tensors, eval tensors or predictions) into an outfeed queue. The
host dequeues the loop's values in the same `Session.run`, after the loop.

Input: by default `input_fn` gets the per-replica batch size and each
replica takes its own consecutive batch (TPUEstimator's PER_HOST_V2); with
`per_host_input`, `input_fn` gets the global batch size and each batch is
split among the replicas along its first axis (PER_HOST_V1, and
TPUEstimator's evaluation and prediction input).

With iterations_per_loop=1 the run is a single step with no while loop and
no outfeed queue: their fixed cost per run (about 110 us in a trace on a
2-core machine) is a third of a small model's step, and one step needs
neither. `scripts/bench_loop.py` measures the result (runner/1).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

import hooks
from tpu_harness import _tf_internals
from tpu_harness import cross_shard
from tpu_harness import replicas as replicas_lib
from tpu_harness import spec as spec_lib
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.host_call import HostCall
from tpu_harness.infeed import HostInfeed
from tpu_harness.infeed import InputShapeError
from tpu_harness.infeed import leaf_paths

VALID = "__valid__"
LOSS = "loss"
# The outfeed name of predictions given as one tensor, not a dict.
SINGLE_PREDICTION = "__single__"


class CpuEmulationLoop(DeviceLoop):
  """Runs `iterations_per_loop` steps of `num_shards` replicas on CPU."""

  def __init__(self, *, num_shards: int, iterations_per_loop: int,
               max_infeed_bytes: Optional[int] = None,
               per_host_input: bool = False,
               host_call_every_n_steps: int = 1):
    """Initializes the loop builder.

    Args:
      num_shards: replicas, each on its own virtual CPU device.
      iterations_per_loop: steps per `Session.run`.
      max_infeed_bytes: host memory the infeed may hold (see
        `RunConfig.max_infeed_bytes`); None: no limit.
      per_host_input: `input_fn` gets the global batch size and its batches
        are split among the replicas (else: per-replica batches).
      host_call_every_n_steps: run a `host_call` on every n-th step of a
        loop only.
    """
    self._num_shards = num_shards
    self._iterations_per_loop = iterations_per_loop
    self._max_infeed_bytes = max_infeed_bytes
    self._per_host_input = per_host_input
    self._host_call_every = host_call_every_n_steps

  @property
  def num_shards(self) -> int:
    return self._num_shards

  def session_config(self) -> tf.compat.v1.ConfigProto:
    return tf.compat.v1.ConfigProto(
        device_count={"CPU": self._num_shards}, allow_soft_placement=False)

  def input_params(self, params: Dict[str, Any]) -> Dict[str, Any]:
    """The params `input_fn` gets, from `model_fn`'s."""
    if not self._per_host_input:
      return params
    return dict(params, batch_size=params["batch_size"] * self._num_shards)

  # Building blocks.

  def _infeed(self, dataset: tf.data.Dataset, name: str,
              params: Dict[str, Any], skip_steps: int = 0,
              max_steps: Optional[int] = None,
              batched: bool = False) -> HostInfeed:
    """The infeed of one element per step: with several replicas, their
    batches stacked (unless already `batched`); the first `skip_steps`
    steps' elements skipped; at most `max_steps` read."""
    if self._num_shards > 1 and not batched:
      if self._per_host_input:
        dataset = dataset.map(self._split_among_replicas)
      else:
        dataset = dataset.batch(self._num_shards, drop_remainder=True)
    if skip_steps:
      dataset = dataset.skip(skip_steps)
    layout = (f"iterations_per_loop={self._iterations_per_loop}, "
              f"{name}_batch_size="
              f"{params['batch_size'] * self._num_shards}")
    return HostInfeed(dataset, self._iterations_per_loop, name,
                      max_steps=max_steps, max_bytes=self._max_infeed_bytes,
                      layout=layout)

  def _split_among_replicas(self, *element):
    """One global batch -> [num_shards, batch / num_shards, ...] per tensor."""
    n = self._num_shards

    def split(tensor):
      rows = tensor.shape[0]
      if rows % n:
        raise InputShapeError(
            f"A batch of {rows} rows cannot be split among {n} replicas; "
            f"the batch size must be a multiple of the number of replicas.")
      return tf.reshape(tensor, [n, rows // n] + tensor.shape[1:].as_list())

    split_element = tf.nest.map_structure(split, element)
    return split_element if len(element) > 1 else split_element[0]

  def _replicas(self, model_fn: Callable, element: Any, mode: str,
                params: Dict[str, Any], stacked: bool
                ) -> List[spec_lib.ModelSpec]:
    """Calls `model_fn` once per replica on its slice of `element` (or on
    `element` itself when it is not `stacked` by replica)."""
    specs = [None] * self._num_shards
    group = replicas_lib.Group(self._num_shards)
    with cross_shard.replica_group(self._num_shards) as replica:
      # Replica 0 last: the gradients are applied (and the global step
      # advanced) in the replica built last, and replica 0's values are the
      # ones a TPU program reads back (host_call's [0], the checkpoint).
      for index in reversed(range(self._num_shards)):
        features, labels = (
            part if part is None or not stacked else
            tf.nest.map_structure(lambda t, i=index: t[i], part)
            for part in element)
        with replica(index) as context, replicas_lib.building(
            group, index, mode):
          specs[index] = spec_lib.check_spec(
              model_fn(features, labels, mode, params), mode)
      if (mode == spec_lib.ModeKeys.TRAIN and self._num_shards > 1
          and not context.used):
        raise ValueError(
            f"With num_shards={self._num_shards}, `model_fn` must wrap its "
            f"optimizer in tpu_harness.CrossShardOptimizer (or "
            f"tf.compat.v1.tpu.CrossShardOptimizer) so that gradients are "
            f"averaged across replicas.")
    return specs

  def _mean_loss(self, specs: List[spec_lib.ModelSpec]) -> tf.Tensor:
    if len(specs) == 1:
      return specs[0].loss
    return tf.add_n([spec.loss for spec in specs]) / len(specs)

  def _concat(self, per_replica: List[tf.Tensor]) -> tf.Tensor:
    """Concatenates replicas' values on axis 0 (scalars become [n])."""
    return tf.concat([tf.reshape(t, [1]) if t.shape.rank == 0 else t
                      for t in per_replica], axis=0)

  def _host_call(self, specs: List[spec_lib.ModelSpec], holder: Dict
                 ) -> Dict[str, tf.Tensor]:
    """Replica 0's host_call, recorded in `holder`; its outfeed values."""
    if not _all_or_none(specs, "host_call"):
      return {}
    fn, tensors = specs[0].host_call
    call = HostCall(fn, tensors, every_n_steps=self._host_call_every)
    holder["host_call"] = call
    return call.outfeed([spec.host_call[1] for spec in specs])

  def _loop(self, infeed: HostInfeed, step_fn: Callable[[Any], tuple],
            ) -> tuple:
    """Builds one run's steps; returns (iterations, stacked outfeed values).

    `step_fn(element)` returns (ops to run, {name: tensor} to outfeed).
    """
    iterations = tf.compat.v1.placeholder_with_default(
        self._iterations_per_loop, [], name="iterations")
    # The steps start after the hooks' global-step read, so they see the
    # step from before the run.
    read = hooks.global_step_read()
    with tf.control_dependencies([read] if read is not None else []):
      if self._iterations_per_loop == 1:
        ops, values = _step(infeed, step_fn)
        with tf.control_dependencies(ops):
          return iterations, {name: tf.expand_dims(value, 0)
                              for name, value in values.items()}
      return iterations, self._while_loop(infeed, step_fn, iterations)

  def _while_loop(self, infeed: HostInfeed, step_fn: Callable[[Any], tuple],
                  iterations: tf.Tensor) -> Dict[str, tf.Tensor]:
    """`iterations` steps; their values through an outfeed queue that the
    host dequeues after the loop."""
    holder = {}

    def body(i):
      ops, values = _step(infeed, step_fn)
      names = sorted(values)
      with tf.init_scope():  # The outfeed lives outside the loop.
        holder["outfeed"] = tf.queue.FIFOQueue(
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

  def _built(self, infeed, iterations, fetches, holder,
             **kwargs) -> BuiltLoop:
    """The BuiltLoop, with replica 0's host_call built on the host."""
    call = holder.get("host_call")
    if call is not None:
      call.build(fetches["outfeed"])
    return BuiltLoop(infeed=infeed, iterations=iterations, fetches=fetches,
                     host_call=call, spec=holder.get("spec"),
                     hooks=(call,) if call is not None else (), **kwargs)

  # The three modes.

  def build_train(self, model_fn, input_fn, params, skip_steps,
                  max_steps=None):
    mode = spec_lib.ModeKeys.TRAIN
    infeed = self._infeed(
        make_input(input_fn, self.input_params(params), mode), "train",
        params, skip_steps, max_steps)
    global_step = tf.compat.v1.train.get_global_step()
    holder = {}

    def step_fn(element):
      specs = self._replicas(model_fn, element, mode, params,
                             stacked=self._num_shards > 1)
      holder["spec"] = specs[0]
      values = {LOSS: self._mean_loss(specs)}
      values.update(self._host_call(specs, holder))
      return [s.train_op for s in specs], values

    iterations, stacked = self._loop(infeed, step_fn)
    with tf.control_dependencies(list(stacked.values())):
      end_step = global_step.read_value()
    return self._built(infeed, iterations,
                       {"outfeed": stacked, "end_step": end_step}, holder)

  def build_eval(self, model_fn, input_fn, params, steps=None):
    mode = spec_lib.ModeKeys.EVAL
    infeed = self._infeed(
        make_input(input_fn, self.input_params(params), mode), "eval",
        params, max_steps=steps)
    holder = {}

    def step_fn(element):
      specs = self._replicas(model_fn, element, mode, params,
                             stacked=self._num_shards > 1)
      holder["spec"] = specs[0]
      values = {LOSS: self._mean_loss(specs)}
      values.update(self._host_call(specs, holder))
      if _all_or_none(specs, "eval_metrics"):
        fn, tensors = specs[0].eval_metrics
        holder["metric_fn"] = fn
        holder["as_list"] = not isinstance(tensors, dict)
        names = (sorted(tensors) if isinstance(tensors, dict)
                 else [f"arg{i}" for i in range(len(tensors))])
        holder["names"] = names
        for index, name in enumerate(names):
          key = name if isinstance(tensors, dict) else index
          values[f"metric/{name}"] = self._concat(
              [s.eval_metrics[1][key] for s in specs])
      return [], values

    iterations, stacked = self._loop(infeed, step_fn)
    # Host side: merge the loop's steps into one batch axis per tensor.
    merged = {name: tf.reshape(value, tf.concat(
        [[-1], tf.shape(value)[2:]], 0)) for name, value in stacked.items()}
    loss_value, loss_update = tf.compat.v1.metrics.mean(merged[LOSS])
    metrics = {LOSS: loss_value}
    updates = [loss_update]
    if "metric_fn" in holder:
      args = [merged[f"metric/{n}"] for n in holder["names"]]
      result = (holder["metric_fn"](*args) if holder["as_list"] else
                holder["metric_fn"](**dict(zip(holder["names"], args))))
      for name, pair in dict(result).items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
          raise ValueError(f"`eval_metrics` metric_fn must return {{name: "
                           f"(value, update_op)}}; {name!r} is {pair!r}.")
        if name == LOSS:
          raise ValueError("`eval_metrics` may not define 'loss'; the runner "
                           "computes the mean loss itself.")
        metrics[name] = pair[0]
        updates.append(pair[1])
    return self._built(infeed, iterations,
                       {"update": tf.group(updates), "outfeed": stacked},
                       holder, metrics=metrics)

  def build_predict(self, model_fn, input_fn, params):
    mode = spec_lib.ModeKeys.PREDICT
    dataset = _padded_predict_input(
        make_input(input_fn, self.input_params(params), mode),
        params["batch_size"], self._num_shards, self._per_host_input)
    infeed = self._infeed(dataset, "predict", params, batched=True)
    holder = {}

    def step_fn(element):
      features, valid = element
      specs = self._replicas(model_fn, (features, None), mode, params,
                             stacked=True)
      holder["spec"] = specs[0]
      values = {VALID: valid}
      if isinstance(specs[0].predictions, tf.Tensor):
        values[SINGLE_PREDICTION] = tf.stack([s.predictions for s in specs])
        return [], values
      for name in specs[0].predictions:
        if name in (VALID, SINGLE_PREDICTION):
          raise ValueError(f"A prediction may not be named {name!r}.")
        values[name] = tf.stack([s.predictions[name] for s in specs])
      return [], values

    iterations, stacked = self._loop(infeed, step_fn)
    return self._built(infeed, iterations, {"outfeed": stacked}, holder)


def _step(infeed: HostInfeed, step_fn: Callable[[Any], tuple]) -> tuple:
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


def _all_or_none(specs: List[spec_lib.ModelSpec], field: str) -> bool:
  """Whether every replica's spec has `field`; ValueError if only some do."""
  given = [getattr(spec, field) is not None for spec in specs]
  if any(given) and not all(given):
    raise ValueError(f"`{field}` must be given by every replica or by none.")
  return all(given)


def make_input(input_fn: Callable, params: Dict[str, Any],
               mode: str) -> tf.data.Dataset:
  """Calls `input_fn` and checks its Dataset against the contract."""
  dataset = input_fn(params)
  if not isinstance(dataset, tf.data.Dataset):
    raise TypeError(f"`input_fn` must return a tf.data.Dataset, got "
                    f"{type(dataset).__name__} ({dataset!r}).")
  spec = dataset.element_spec
  if mode != spec_lib.ModeKeys.PREDICT and not (
      isinstance(spec, tuple) and len(spec) == 2):
    raise TypeError(f"`input_fn` must return a Dataset of (features, "
                    f"labels) pairs in mode {mode!r}; its elements are "
                    f"{spec}.")
  names = (leaf_paths(spec[0], "features") + leaf_paths(spec[1], "labels")
           if isinstance(spec, tuple) and len(spec) == 2
           else leaf_paths(spec, "features"))
  for name, leaf in zip(names, tf.nest.flatten(spec)):
    if not isinstance(leaf, tf.TensorSpec):
      raise TypeError(f"`input_fn` must return a Dataset of dense tensors; "
                      f"{name} is a {type(leaf).__name__}.")
  if mode != spec_lib.ModeKeys.PREDICT:
    for name, leaf in zip(names, tf.nest.flatten(spec)):
      if not leaf.shape.is_fully_defined():
        raise InputShapeError(
            f"`input_fn` must return batches of fixed shape in mode "
            f"{mode!r} (batch with drop_remainder=True); {name} has shape "
            f"{leaf.shape}.")
  return dataset


def _pad_to(tensor: tf.Tensor, rows: int) -> tf.Tensor:
  """`tensor` with zero rows appended up to `rows` along its first axis."""
  return tf.pad(tensor, [[0, rows - tf.shape(tensor)[0]]]
                + [[0, 0]] * (tensor.shape.rank - 1))


def _padded_predict_input(dataset: tf.data.Dataset, batch_size: int,
                          num_shards: int,
                          per_host: bool = False) -> tf.data.Dataset:
  """Pads every batch to `batch_size` rows and every step to `num_shards`
  batches, pairing each batch with its count of real rows. With `per_host`,
  each input batch (up to `batch_size * num_shards` rows) is padded and then
  split among the replicas."""
  element = dataset.element_spec
  if isinstance(element, tuple) and len(element) == 2:
    dataset = dataset.map(lambda features, labels: features)
  for path, spec in zip(leaf_paths(dataset.element_spec, "features"),
                        tf.nest.flatten(dataset.element_spec)):
    if spec.shape.rank is None or not spec.shape[1:].is_fully_defined():
      raise InputShapeError(
          f"`input_fn` for predict must return batches whose dimensions "
          f"after the first are fixed; {path} has shape "
          f"{spec.shape}.")

  def pad_rows(features):
    rows = tf.shape(tf.nest.flatten(features)[0])[0]
    check = tf.debugging.assert_less_equal(
        rows, batch_size, message=f"predict batch larger than batch_size "
        f"({batch_size})")
    with tf.control_dependencies([check]):
      padded = tf.nest.map_structure(
          lambda t: tf.ensure_shape(_pad_to(t, batch_size),
                                    [batch_size] + t.shape[1:].as_list()),
          features)
    return padded, rows

  def pad_shards(features, rows):
    features = tf.nest.map_structure(
        lambda t: tf.ensure_shape(_pad_to(t, num_shards),
                                  [num_shards] + t.shape[1:].as_list()),
        features)
    rows = tf.ensure_shape(_pad_to(rows, num_shards), [num_shards])
    return features, rows

  if per_host and num_shards > 1:
    host_rows = batch_size * num_shards

    def pad_and_split(features):
      rows = tf.shape(tf.nest.flatten(features)[0])[0]
      check = tf.debugging.assert_less_equal(
          rows, host_rows, message=f"predict batch larger than the global "
          f"batch size ({host_rows})")
      with tf.control_dependencies([check]):
        split = tf.nest.map_structure(
            lambda t: tf.reshape(
                _pad_to(t, host_rows),
                [num_shards, batch_size] + t.shape[1:].as_list()), features)
      starts = tf.range(num_shards) * batch_size
      return split, tf.clip_by_value(rows - starts, 0, batch_size)

    return dataset.map(pad_and_split)
  return dataset.map(pad_rows).batch(num_shards).map(pad_shards)

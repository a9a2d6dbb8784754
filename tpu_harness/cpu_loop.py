"""The device loop emulated on CPU: same infeed, loop and outfeed, no TPU.

Per step, the loop dequeues one infeed element holding every replica's batch
(with num_shards > 1, stacked on a first axis of length num_shards), calls
`model_fn` once per replica on its own virtual CPU device (`/device:CPU:i`,
made by the session's `device_count`), and enqueues the step's values (loss, host_call tensors,
eval tensors or predictions) into an outfeed queue. The host dequeues the
loop's values in the same `Session.run`, after the loop.

With iterations_per_loop=1 the run is a single step with no while loop and
no outfeed queue: their fixed cost per run (about 110 us in a trace on a
2-core machine) is a third of a small model's step, and one step needs
neither. `scripts/bench_loop.py` measures the result (runner/1).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

import hooks
from tpu_harness import cross_shard
from tpu_harness import spec as spec_lib
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.device_loop import DeviceLoop
from tpu_harness.infeed import HostInfeed
from tpu_harness.infeed import InputShapeError
from tpu_harness.infeed import leaf_paths

VALID = "__valid__"
LOSS = "loss"


class CpuEmulationLoop(DeviceLoop):
  """Runs `iterations_per_loop` steps of `num_shards` replicas on CPU."""

  def __init__(self, *, num_shards: int, iterations_per_loop: int,
               max_infeed_bytes: Optional[int] = None):
    """Initializes the loop builder.

    Args:
      num_shards: replicas, each on its own virtual CPU device.
      iterations_per_loop: steps per `Session.run`.
      max_infeed_bytes: host memory the infeed may hold (see
        `RunConfig.max_infeed_bytes`); None: no limit.
    """
    self._num_shards = num_shards
    self._iterations_per_loop = iterations_per_loop
    self._max_infeed_bytes = max_infeed_bytes

  @property
  def num_shards(self) -> int:
    return self._num_shards

  def session_config(self) -> tf.compat.v1.ConfigProto:
    return tf.compat.v1.ConfigProto(
        device_count={"CPU": self._num_shards}, allow_soft_placement=False)

  # Building blocks.

  def _infeed(self, dataset: tf.data.Dataset, name: str,
              params: Dict[str, Any], skip_steps: int = 0,
              max_steps: Optional[int] = None,
              batched: bool = False) -> HostInfeed:
    """The infeed of one element per step: with several replicas, their
    batches stacked (unless already `batched`); the first `skip_steps`
    steps' elements skipped; at most `max_steps` read."""
    if self._num_shards > 1 and not batched:
      dataset = dataset.batch(self._num_shards, drop_remainder=True)
    if skip_steps:
      dataset = dataset.skip(skip_steps)
    layout = (f"iterations_per_loop={self._iterations_per_loop}, "
              f"{name}_batch_size="
              f"{params['batch_size'] * self._num_shards}")
    return HostInfeed(dataset, self._iterations_per_loop, name,
                      max_steps=max_steps, max_bytes=self._max_infeed_bytes,
                      layout=layout)

  def _replicas(self, model_fn: Callable, element: Any, mode: str,
                params: Dict[str, Any], stacked: bool
                ) -> List[spec_lib.ModelSpec]:
    """Calls `model_fn` once per replica on its slice of `element` (or on
    `element` itself when it is not `stacked` by replica)."""
    specs = []
    with cross_shard.replica_group(self._num_shards) as replica:
      for index in range(self._num_shards):
        features, labels = (
            part if part is None or not stacked else
            tf.nest.map_structure(lambda t, i=index: t[i], part)
            for part in element)
        reuse = tf.compat.v1.AUTO_REUSE if index else None
        with tf.device(f"/device:CPU:{index}"), replica(index) as context, \
            tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                        reuse=reuse), \
            tf.variable_creator_scope(_explain_variable_errors):
          specs.append(spec_lib.check_spec(
              model_fn(features, labels, mode, params), mode))
      if (mode == spec_lib.ModeKeys.TRAIN and self._num_shards > 1
          and not context.used):
        raise ValueError(
            f"With num_shards={self._num_shards}, `model_fn` must wrap its "
            f"optimizer in tpu_harness.CrossShardOptimizer so that gradients "
            f"are averaged across replicas.")
    return specs

  def _mean_loss(self, specs: List[spec_lib.ModelSpec]) -> tf.Tensor:
    if len(specs) == 1:
      return specs[0].loss
    return tf.add_n([spec.loss for spec in specs]) / len(specs)

  def _concat(self, per_replica: List[tf.Tensor]) -> tf.Tensor:
    """Concatenates replicas' values on axis 0 (scalars become [n])."""
    return tf.concat([tf.reshape(t, [1]) if t.shape.rank == 0 else t
                      for t in per_replica], axis=0)

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
        ops, values = step_fn(infeed.dequeue())
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
      ops, values = step_fn(infeed.dequeue())
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

  # The three modes.

  def build_train(self, model_fn, input_fn, params, skip_steps,
                  max_steps=None):
    mode = spec_lib.ModeKeys.TRAIN
    infeed = self._infeed(make_input(input_fn, params, mode), "train",
                          params, skip_steps, max_steps)
    global_step = tf.compat.v1.train.get_global_step()
    host_fn_holder = {}

    def step_fn(element):
      specs = self._replicas(model_fn, element, mode, params,
                             stacked=self._num_shards > 1)
      values = {LOSS: self._mean_loss(specs)}
      if specs[0].host_call is not None:
        host_fn_holder["fn"] = specs[0].host_call[0]
        for name in specs[0].host_call[1]:
          values[name] = self._concat([s.host_call[1][name] for s in specs])
      return [s.train_op for s in specs], values

    iterations, stacked = self._loop(infeed, step_fn)
    with tf.control_dependencies(list(stacked.values())):
      end_step = global_step.read_value()
    return BuiltLoop(infeed=infeed, iterations=iterations,
                     fetches={"outfeed": stacked, "end_step": end_step},
                     host_fn=host_fn_holder.get("fn"))

  def build_eval(self, model_fn, input_fn, params, steps=None):
    mode = spec_lib.ModeKeys.EVAL
    infeed = self._infeed(make_input(input_fn, params, mode), "eval", params,
                          max_steps=steps)
    metric_holder = {}

    def step_fn(element):
      specs = self._replicas(model_fn, element, mode, params,
                             stacked=self._num_shards > 1)
      values = {LOSS: self._mean_loss(specs)}
      if specs[0].eval_metrics is not None:
        fn, tensors = specs[0].eval_metrics
        metric_holder["fn"] = fn
        metric_holder["as_list"] = not isinstance(tensors, dict)
        names = (sorted(tensors) if isinstance(tensors, dict)
                 else [f"arg{i}" for i in range(len(tensors))])
        metric_holder["names"] = names
        if any(spec.eval_metrics is None for spec in specs):
          raise ValueError("`eval_metrics` must be given by every replica "
                           "or by none.")
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
    if "fn" in metric_holder:
      args = [merged[f"metric/{n}"] for n in metric_holder["names"]]
      result = (metric_holder["fn"](*args) if metric_holder["as_list"] else
                metric_holder["fn"](**dict(zip(metric_holder["names"],
                                               args))))
      for name, pair in dict(result).items():
        if not (isinstance(pair, tuple) and len(pair) == 2):
          raise ValueError(f"`eval_metrics` metric_fn must return {{name: "
                           f"(value, update_op)}}; {name!r} is {pair!r}.")
        if name == LOSS:
          raise ValueError("`eval_metrics` may not define 'loss'; the runner "
                           "computes the mean loss itself.")
        metrics[name] = pair[0]
        updates.append(pair[1])
    return BuiltLoop(infeed=infeed, iterations=iterations,
                     fetches={"update": tf.group(updates)}, metrics=metrics)

  def build_predict(self, model_fn, input_fn, params):
    mode = spec_lib.ModeKeys.PREDICT
    dataset = _padded_predict_input(make_input(input_fn, params, mode),
                                    params["batch_size"], self._num_shards)
    infeed = self._infeed(dataset, "predict", params, batched=True)

    def step_fn(element):
      features, valid = element
      specs = self._replicas(model_fn, (features, None), mode, params,
                             stacked=True)
      values = {VALID: valid}
      for name in specs[0].predictions:
        if name == VALID:
          raise ValueError(f"A prediction may not be named {VALID!r}.")
        values[name] = tf.stack([s.predictions[name] for s in specs])
      return [], values

    iterations, stacked = self._loop(infeed, step_fn)
    return BuiltLoop(infeed=infeed, iterations=iterations,
                     fetches={"outfeed": stacked})


def _explain_variable_errors(next_creator, **kwargs):
  """Variable creator: says in the user's terms why a variable whose initial
  value was computed inside the device loop cannot be created there."""
  try:
    return next_creator(**kwargs)
  except ValueError as error:
    if "could not be lifted out" not in str(error):
      raise
    raise ValueError(
        f"`model_fn` created the variable {kwargs.get('name')!r} with "
        f"tf.Variable from a tensor computed inside the device loop (the "
        f"loop runs `model_fn` in a tf.while_loop, where such a value does "
        f"not exist before the loop starts). Create variables with "
        f"tf.compat.v1.get_variable (or tf.compat.v1.layers), which the loop "
        f"also shares across replicas, or pass tf.Variable a callable "
        f"initial value: tf.Variable(lambda: tf.zeros([4, 1])).") from error


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


def _padded_predict_input(dataset: tf.data.Dataset, batch_size: int,
                          num_shards: int) -> tf.data.Dataset:
  """Pads every batch to `batch_size` rows and every step to `num_shards`
  batches, pairing each batch with its count of real rows."""
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
          lambda t: tf.ensure_shape(
              tf.pad(t, [[0, batch_size - tf.shape(t)[0]]]
                     + [[0, 0]] * (t.shape.rank - 1)),
              [batch_size] + t.shape[1:].as_list()), features)
    return padded, rows

  def pad_shards(features, rows):
    missing = num_shards - tf.shape(rows)[0]
    features = tf.nest.map_structure(
        lambda t: tf.ensure_shape(
            tf.pad(t, [[0, missing]] + [[0, 0]] * (t.shape.rank - 1)),
            [num_shards] + t.shape[1:].as_list()), features)
    rows = tf.ensure_shape(tf.pad(rows, [[0, missing]]), [num_shards])
    return features, rows

  return dataset.map(pad_rows).batch(num_shards).map(pad_shards)

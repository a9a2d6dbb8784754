"""The one place where the runner touches TensorFlow internals.

Why each is needed, and what it does; nothing here leaks into a public
signature.

- Summary writers (tf.compat.v2.summary.create_file_writer) that a
  `host_call` creates in graph mode must be initialized once the session
  exists and flushed when it ends, as TPUEstimator did. TF lists their
  initializers only in a private collection (`summary_ops_v2`); flushing uses
  the public raw op on each writer's resource.
- A TPUEstimator program wraps its optimizer in
  `tf.compat.v1.tpu.CrossShardOptimizer`, whose gradient all-reduce is a TPU
  op with no CPU kernel. While the CPU emulation builds its replicas, that
  class's `compute_gradients` and `apply_gradients` go through
  `tpu_harness.CrossShardOptimizer`, which combines the replicas' gradients
  on CPU as the all-reduce would. The class itself is patched, not the
  public name that exports it: a program may have bound the class at
  import (`from tensorflow.compat.v1.tpu import CrossShardOptimizer`, a
  `contrib_tpu` alias), or built the optimizer outside `model_fn`.
- BERT-style programs call `tf.compat.v1.train.init_from_checkpoint` in
  `model_fn` itself (with `use_tpu=False`; `scaffold_fn` on a TPU). It
  replaces the initializers of the variables it maps with ops it builds in
  the default graph, which in the emulation's loop is the loop body's: the
  session's initialization failed (its initializers in two graphs, the
  error naming neither the call nor the fix). While the replicas are
  built, its worker (private `checkpoint_utils._init_from_checkpoint`,
  which every way of calling it goes through) runs under
  `tf.init_scope()`, in the graph that holds the variables and their other
  initializers, as TPUEstimator's `model_fn` ran off TPU.
- `tf.compat.v1.tpu.cross_replica_sum` in `model_fn` (cross-replica batch
  norm) is a TPU op with no CPU kernel: a session that ran it failed with
  TF's "No OpKernel was registered". The emulation builds its replicas one
  after another, so no replica can read another's value. While they are
  built, the generated op wrapper every Python path ends in (private
  `gen_tpu_ops.cross_replica_sum`) returns its input for one replica (the
  sum over one core) and, for more, raises an error that says so as
  `model_fn` calls it.
- Within a step, reads of the global step in `model_fn` are made to run
  before its increment (`reads_before_update`), so they see the value from
  before the step, every time.
- The TPU-compatibility check (`tpu_harness.tpu.check`) compiles one step
  with `tf.compat.v1.xla.experimental.compile` (public, deprecated, and the
  only XLA entry point for graph-mode v1 code with variables). XLA stops at
  the first op it has no kernel for; to report every such op, the check
  reads TF's kernel registry (private `tensorflow.python.framework.kernels`)
  for XLA CPU kernels, which XLA registers there once it has compiled
  something, and tells the compiled ops by the attribute the compile
  context marks them with (`_xla_compile_id`).
- The training infeed's position is saved with checkpoints
  (`tpu_harness._infeed.position`) with the public raw ops
  `SerializeIterator` / `DeserializeIterator`, which take the iterator's
  resource handle; `tf.compat.v1.data` iterators keep it in a private
  attribute.
- For that position to be small (and restorable), the training `input_fn`
  runs with `tf.data.Dataset.shuffle`, `cache` and `interleave` replaced by
  resumable equivalents (`tpu_harness._infeed.rewrite`): the public class
  attributes are swapped for the call. `tf.data.experimental.
  shuffle_and_repeat` and `parallel_interleave` make their datasets through
  private classes of TF's modules (`shuffle_ops._ShuffleAndRepeatDataset`,
  `readers.ParallelInterleaveDataset`, whose `__init__` names it, so that
  its constructor, `__new__`, is what is replaced); those are swapped too,
  so that a program that bound the functions at import is covered. Which
  transformations a built input holds is read from the
  graph: the dataset ops behind its variant (public `Operation.inputs`) and
  the bodies of the functions they run, which the graph keeps in a private
  function library. Whether a parallel map or interleave asked for no fixed
  order keeps one anyway depends on whether
  `tf.config.experimental.enable_op_determinism()` was called, which only a
  private function tells (`op_determinism_enabled`).
- An `input_fn` may return tensors read from a tf.compat.v1 iterator
  (`make_one_shot_iterator().get_next()`), as TPUEstimator allowed; the
  loops need the dataset behind them, so while `input_fn` runs the makers
  of such iterators (private methods of `DatasetV1`, which both the
  methods and `tf.compat.v1.data.make_*_iterator` call) record it.
- An `input_fn` may give `(features, None)`, which TPUEstimator read as
  features alone; in a Dataset's element spec the None is a
  `NoneTensorSpec`, a class with no public name (`is_none_spec`).
- `export_saved_model(export_to_tpu=True)` writes the `['serve', 'tpu']`
  metagraph as TPUEstimator built it, with the same TF pieces it used and
  that have no public name: api version 1 calls `model_fn` inside
  `tpu.rewrite` in a `Defun` run by `TPUPartitionedCall` on the core
  `tpu_ordinal_selector` picks (`tpu_partitioned_call_of_rewrite`); version
  2 calls it in a TPU inference context (`tpu_inference_context`).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator, List, Optional, Set, Tuple

import tensorflow as tf
from tensorflow.python.data.experimental.ops import shuffle_ops  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.data.ops import dataset_ops  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.data.ops import readers  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import config as tf_config  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import function  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import kernels  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.framework import none_tensor  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import gen_tpu_ops  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.ops import summary_ops_v2  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.tpu import functional as tpu_functional  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.tpu import tpu as tpu_lib  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.tpu.ops import tpu_ops  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.tpu import tpu_optimizer  # pylint: disable=g-direct-tensorflow-import
from tensorflow.python.training import checkpoint_utils  # pylint: disable=g-direct-tensorflow-import


def summary_writer_init_ops() -> List[tf.Operation]:
  """Initializers of the tf2 summary writers of the default graph."""
  return list(summary_ops_v2.summary_writer_initializer_op())


def summary_writer_flush_ops(init_ops: List[tf.Operation]
                             ) -> List[tf.Operation]:
  """One flush op per writer whose initializer is in `init_ops`."""
  return [tf.raw_ops.FlushSummaryWriter(writer=op.inputs[0])
          for op in init_ops]


# TF's class, however a program reaches it (tf.compat.v1.tpu, an import).
_TF_CROSS_SHARD_OPTIMIZER = tpu_optimizer.CrossShardOptimizer
_DELEGATED = ("compute_gradients", "apply_gradients")


@contextlib.contextmanager
def cross_shard_optimizer_as(factory: Callable) -> None:
  """Within the block, every `tf.compat.v1.tpu.CrossShardOptimizer` (TF's
  class, whatever name it was bound to, wherever it was made) computes and
  applies gradients as `factory(opt, reduction=, name=, group_assignment=)`,
  called with its own arguments, would."""
  cls = _TF_CROSS_SHARD_OPTIMIZER
  saved = {name: cls.__dict__[name] for name in _DELEGATED}

  def emulated(optimizer):
    return factory(optimizer._opt, reduction=optimizer._reduction,  # pylint: disable=protected-access
                   name=optimizer.get_name(),
                   group_assignment=optimizer._group_assignment)  # pylint: disable=protected-access

  def compute_gradients(self, loss, var_list=None, **kwargs):
    return emulated(self).compute_gradients(loss, var_list=var_list,
                                            **kwargs)

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    return emulated(self).apply_gradients(grads_and_vars, global_step, name)

  cls.compute_gradients = compute_gradients
  cls.apply_gradients = apply_gradients
  try:
    yield
  finally:
    for name, method in saved.items():
      setattr(cls, name, method)


# What TF's CrossReplicaSum takes (its op definition's `T`).
_CROSS_REPLICA_SUM_DTYPES = (tf.bfloat16, tf.float16, tf.float32, tf.float64,
                             tf.int32, tf.uint32)


@contextlib.contextmanager
def cross_replica_sum_as(replicas: int) -> Iterator[None]:
  """Within the block, `tf.compat.v1.tpu.cross_replica_sum` (however it is
  reached) returns its input with one replica, and with more raises
  NotImplementedError naming the call; a dtype a TPU does not sum raises
  TypeError either way."""
  # The module's global, as cross_shard_optimizer_as patches a class: a
  # graph built on another thread meanwhile would see it (none is).
  saved = gen_tpu_ops.cross_replica_sum

  def emulated(input, group_assignment, name=None):  # pylint: disable=redefined-builtin
    del group_assignment  # One group of every replica, or refused below.
    dtype = tf.convert_to_tensor(input).dtype.base_dtype
    if dtype not in _CROSS_REPLICA_SUM_DTYPES:
      raise TypeError(
          f"tf.compat.v1.tpu.cross_replica_sum got a tensor of dtype "
          f"{dtype.name}; "
          f"a TPU sums only "
          f"{', '.join(d.name for d in _CROSS_REPLICA_SUM_DTYPES)}.")
    if replicas == 1:
      return tf.identity(input, name=name)
    raise NotImplementedError(
        f"`model_fn` called tf.compat.v1.tpu.cross_replica_sum (e.g. for a "
        f"cross-replica batch norm) on {replicas} emulated TPU cores: "
        f"cross-replica ops are not emulated on CPU (the replicas are built "
        f"one after another), only CrossShardOptimizer's gradient "
        f"combination is. Emulate 1 core (num_shards=1), run on a TPU, or "
        f"skip the call when tf.compat.v1.tpu's context has no "
        f"number_of_shards, as the emulation leaves it.")

  gen_tpu_ops.cross_replica_sum = emulated
  try:
    yield
  finally:
    gen_tpu_ops.cross_replica_sum = saved


@contextlib.contextmanager
def checkpoint_initializers_outside() -> Iterator[None]:
  """Within the block, `tf.compat.v1.train.init_from_checkpoint` (however
  it is called) builds the initializers it sets in the outermost graph,
  where the variables are, not in a loop's body."""
  saved = checkpoint_utils._init_from_checkpoint  # pylint: disable=protected-access

  def outside(ckpt_dir_or_file, assignment_map):
    with tf.init_scope():
      return saved(ckpt_dir_or_file, assignment_map)

  checkpoint_utils._init_from_checkpoint = outside  # pylint: disable=protected-access
  try:
    yield
  finally:
    checkpoint_utils._init_from_checkpoint = saved  # pylint: disable=protected-access


def reads_before_update(variable: tf.Variable,
                        ops: List[tf.Operation]) -> None:
  """Among `ops` (one step's ops, in the graph being built), makes every
  read of `variable` run before every update of it, unless the read depends
  on the update (e.g. the value an `assign_add` returns).

  Why: a TPUEstimator `model_fn` reads the global step (a `host_call`
  summary step, a learning-rate schedule) in the same step whose train op
  increments it. Ordered only by data, such a read races the increment
  (seen: summary steps skipped and repeated). With this, every read in a
  step sees the value from before the step. Adding control inputs to
  existing ops has no public API.
  """
  if not isinstance(getattr(variable, "handle", None), tf.Tensor):
    return  # A reference variable: reads are not separate ops.
  handles = {id(t) for t in _handles_of(variable, ops)}
  reads, updates = [], []
  for op in ops:
    if not op.inputs or id(op.inputs[0]) not in handles:
      continue
    if op.type == "ReadVariableOp":
      reads.append(op)
    elif op.type in ("AssignAddVariableOp", "AssignVariableOp",
                     "AssignSubVariableOp"):
      updates.append(op)
  if not reads or not updates:
    return
  after = _downstream(updates)
  independent = [op for op in reads if op not in after]
  for update in updates:
    update._add_control_inputs(  # pylint: disable=protected-access
        [op for op in independent if op not in update.control_inputs])


def _handles_of(variable: tf.Variable, ops: List[tf.Operation]) -> list:
  """The tensors that stand for `variable`'s handle among `ops`: the handle
  itself, a v2 loop body's capture of it, and (v1 control flow) what
  `Enter`/`Identity` ops pass of it into the loop."""
  graph = ops[0].graph if ops else tf.compat.v1.get_default_graph()
  if graph is variable.handle.graph:
    handles = [variable.handle]
  else:
    handles = [internal for external, internal in getattr(graph, "captures",
                                                          [])
               if external is variable.handle]
  known = {id(t) for t in handles}
  for op in ops:  # In creation order: an Enter comes before its readers.
    if (op.type in ("Enter", "Identity") and op.inputs
        and id(op.inputs[0]) in known):
      handles.append(op.outputs[0])
      known.add(id(op.outputs[0]))
  return handles


def _downstream(ops: List[tf.Operation]) -> set:
  """Ops reachable from `ops` through data and control edges."""
  seen, stack = set(), list(ops)
  while stack:
    op = stack.pop()
    for nxt in ([c for out in op.outputs for c in out.consumers()]
                + list(op._control_outputs)):  # pylint: disable=protected-access
      if nxt not in seen:
        seen.add(nxt)
        stack.append(nxt)
  return seen


# XLA's compilation device for CPU, and the attribute
# tf.compat.v1.xla.experimental.compile puts on the ops it compiles.
_XLA_CPU_JIT = "XLA_CPU_JIT"
_XLA_COMPILE_ATTR = "_xla_compile_id"


def xla_compile(computation: Callable, inputs: List[tf.Tensor]) -> List:
  """`computation(*inputs)` built for XLA in the default graph; its outputs.
  XLA compiles it when they are first run."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return tf.compat.v1.xla.experimental.compile(computation, inputs)


def in_xla_compilation(op: tf.Operation) -> bool:
  """Whether `op` is part of an `xla_compile` computation."""
  return _XLA_COMPILE_ATTR in op.node_def.attr


_xla_kernels_registered = False


def has_xla_kernel(op_type: str) -> bool:
  """Whether XLA (on CPU) has a kernel for ops of type `op_type`."""
  global _xla_kernels_registered
  if not _xla_kernels_registered:
    # XLA registers its kernels with TF's registry when it first compiles.
    with tf.Graph().as_default():
      value = tf.compat.v1.placeholder(tf.float32, [1])
      (doubled,) = xla_compile(lambda x: x * 2.0, [value])
      with tf.compat.v1.Session() as session:
        session.run(doubled, {value: [1.0]})
    _xla_kernels_registered = True
  registered = kernels.get_registered_kernels_for_op(op_type)
  return any(kernel.device_type == _XLA_CPU_JIT
             for kernel in registered.kernel)


def is_none_spec(spec) -> bool:
  """Whether `spec` (a Dataset's element spec or part of one) is a None."""
  return isinstance(spec, none_tensor.NoneTensorSpec)


def iterator_resource(iterator) -> tf.Tensor:
  """The resource handle of a `tf.compat.v1.data` iterator, which the public
  raw ops `SerializeIterator` / `DeserializeIterator` take (the iterator has
  no public accessor for it)."""
  return iterator._iterator_resource  # pylint: disable=protected-access


@contextlib.contextmanager
def iterators_made() -> List[Tuple[tf.Tensor, tf.data.Dataset]]:
  """Within the block, records (iterator resource, dataset) of each
  tf.compat.v1 iterator made (`make_one_shot_iterator`,
  `make_initializable_iterator`, as methods or functions: both go through
  DatasetV1's private makers, patched here for the block). A one-shot
  iterator is made initializable: the runner reads the dataset, never the
  iterator, and a one-shot iterator cannot capture a dataset with state
  (e.g. the resumable shuffle the training input_fn gets)."""
  made: List[Tuple[tf.Tensor, tf.data.Dataset]] = []
  cls = dataset_ops.DatasetV1
  saved = (cls._make_one_shot_iterator, cls._make_initializable_iterator)  # pylint: disable=protected-access

  def recorded(original):
    def make(self, *args, **kwargs):
      iterator = original(self, *args, **kwargs)
      made.append((iterator_resource(iterator), self))
      return iterator
    return make

  cls._make_one_shot_iterator = recorded(saved[1])  # pylint: disable=protected-access
  cls._make_initializable_iterator = recorded(saved[1])  # pylint: disable=protected-access
  try:
    yield made
  finally:
    cls._make_one_shot_iterator, cls._make_initializable_iterator = saved  # pylint: disable=protected-access


# TF's own, for the transformations the rewrite keeps.
_SHUFFLE = tf.data.Dataset.shuffle
_INTERLEAVE = tf.data.Dataset.interleave


def original_shuffle(dataset: tf.data.Dataset, buffer_size, seed,
                     reshuffle: bool) -> tf.data.Dataset:
  """TF's `Dataset.shuffle`, also while `dataset_methods_as` replaces it."""
  return _SHUFFLE(dataset, buffer_size, seed, reshuffle)


def original_interleave(dataset: tf.data.Dataset, *args, **kwargs
                        ) -> tf.data.Dataset:
  """TF's `Dataset.interleave`, also while `dataset_methods_as` replaces
  it."""
  return _INTERLEAVE(dataset, *args, **kwargs)


@contextlib.contextmanager
def dataset_methods_as(*, shuffle: Callable, cache: Callable,
                       interleave: Callable,
                       legacy_interleave: Callable) -> None:
  """Within the block, `dataset.shuffle(...)` (and the dataset of
  `tf.data.experimental.shuffle_and_repeat`) calls `shuffle(dataset, ...)`,
  `dataset.cache(...)` calls `cache(dataset, ...)`, `dataset.interleave(...)`
  (also inside `TFRecordDataset(num_parallel_reads=...)`) calls
  `interleave(dataset, ...)`, for tf.data and tf.compat.v1.data datasets
  alike (the v1 methods call the v2 ones), and the dataset of
  `tf.data.experimental.parallel_interleave` is what `legacy_interleave(
  dataset, map_func, cycle_length, block_length, sloppy,
  buffer_output_elements, prefetch_input_elements)` returns, or TF's own
  where that is None."""
  saved = (tf.data.Dataset.shuffle, tf.data.Dataset.cache,
           tf.data.Dataset.interleave,
           shuffle_ops._ShuffleAndRepeatDataset)  # pylint: disable=protected-access

  def shuffle_and_repeat(dataset, buffer_size, count=None, seed=None):
    return shuffle(dataset, buffer_size, seed).repeat(count)

  tf.data.Dataset.shuffle = shuffle
  tf.data.Dataset.cache = cache
  tf.data.Dataset.interleave = interleave
  shuffle_ops._ShuffleAndRepeatDataset = shuffle_and_repeat  # pylint: disable=protected-access
  _legacy_interleave_as(legacy_interleave)
  try:
    yield
  finally:
    (tf.data.Dataset.shuffle, tf.data.Dataset.cache,
     tf.data.Dataset.interleave,
     shuffle_ops._ShuffleAndRepeatDataset) = saved  # pylint: disable=protected-access
    _legacy_interleave_as(None)


# What constructing `readers.ParallelInterleaveDataset` calls first (see
# `_legacy_new`); None: nothing.
_LEGACY_HANDLER: List[Optional[Callable]] = [None]


def _legacy_new(cls, *args, **kwargs):
  """`readers.ParallelInterleaveDataset.__new__`: what the handler makes,
  or (the handler returning None, or none set) the class's own object.
  The class stays (its `__init__` names it: `super(Class, self)`); an
  object that is not an instance of it is not passed to its `__init__`."""
  handler = _LEGACY_HANDLER[0]
  made = handler(*args, **kwargs) if handler is not None else None
  return object.__new__(cls) if made is None else made


def _legacy_interleave_as(handler: Optional[Callable]) -> None:
  """Sets `_legacy_new`'s handler, installing it as the class's `__new__`
  once (for good: deleting a `__new__` set on a class leaves CPython's
  `object.__new__` refusing the class's arguments)."""
  cls = readers.ParallelInterleaveDataset
  if vars(cls).get("__new__") is not _legacy_new:
    cls.__new__ = _legacy_new
  _LEGACY_HANDLER[0] = handler


def op_determinism_enabled() -> bool:
  """Whether `tf.config.experimental.enable_op_determinism()` was called
  (tf.data then makes every transformation keep its input's order)."""
  return tf_config.is_op_determinism_enabled()


def dataset_op_types(dataset: tf.data.Dataset) -> Set[str]:
  """The types of the ops that make `dataset` (built in a graph), with
  those of the functions they run, recursively."""
  ops, functions = dataset_nodes(dataset)
  return {node.op for node in ops + functions}


def dataset_nodes(dataset: tf.data.Dataset
                  ) -> Tuple[List[tf.compat.v1.NodeDef],
                             List[tf.compat.v1.NodeDef]]:
  """The NodeDefs of the ops that make `dataset` (built in a graph), from
  its last transformation back to its sources; and those of the functions
  they run, recursively, each function once; in a deterministic order."""
  nodes, bodies = dataset_scopes(dataset)
  return nodes, [node for body in bodies for node in body]


def dataset_scopes(dataset: tf.data.Dataset
                   ) -> Tuple[List[tf.compat.v1.NodeDef],
                              List[List[tf.compat.v1.NodeDef]]]:
  """`dataset_nodes`, the functions' NodeDefs one list per function (the
  names an op's inputs give are those of its own function's nodes)."""
  variant = tf.data.experimental.to_variant(dataset)
  graph = variant.graph
  nodes: List[tf.compat.v1.NodeDef] = []
  bodies: List[List[tf.compat.v1.NodeDef]] = []
  seen_ops, seen_functions = set(), set()
  stack = [variant.op]
  functions: List[str] = []
  while stack:
    op = stack.pop()
    if op.name in seen_ops:
      continue
    seen_ops.add(op.name)
    nodes.append(op.node_def)
    functions.extend(_function_names(op.node_def.attr))
    stack.extend(reversed([tensor.op for tensor in op.inputs]))
    stack.extend(op.control_inputs)
  functions.reverse()
  while functions:
    name = functions.pop()
    if name in seen_functions:
      continue
    seen_functions.add(name)
    function = graph._get_function(name)  # pylint: disable=protected-access
    definition = getattr(function, "definition", None)
    if definition is None:
      continue
    called = []
    body = []
    for node in definition.node_def:
      body.append(node)
      called.extend(_function_names(node.attr))
      if graph._is_function(node.op):  # pylint: disable=protected-access
        called.append(node.op)
    bodies.append(body)
    functions.extend(reversed(called))
  return nodes, bodies


def _function_names(attrs) -> List[str]:
  """The function names an op's attributes (a map of AttrValue) refer to,
  in the order of the attributes' names: a NodeDef's map iterates in no
  fixed order, and two builds of one pipeline in a process gave an `If`'s
  `then_branch` and `else_branch` either way round (so its fingerprint
  differed, and exact resume fell back to skipping)."""
  names = []
  for key in sorted(attrs):
    value = attrs[key]
    if value.HasField("func"):
      names.append(value.func.name)
    elif value.HasField("list"):
      names.extend(item.name for item in value.list.func)
  return names


@contextlib.contextmanager
def tpu_inference_context():
  """Within the block, ops are built in a TPU inference context (what
  TPUEstimator's export api version 2 called `model_fn` in)."""
  context = tpu_lib._TPUInferenceContext(  # pylint: disable=protected-access
      "tpu_inference", check_ops=False)
  context.Enter()
  try:
    yield
  finally:
    context.Exit()


def tpu_partitioned_call_of_rewrite(computation: Callable[[], List]
                                    ) -> List[tf.Tensor]:
  """The outputs of `computation()` built inside `tpu.rewrite`, in a
  `Defun` called by `TPUPartitionedCall` on the core
  `tpu_ordinal_selector()` gives (TPUEstimator's
  `model_fn_inference_on_tpu`)."""
  @function.Defun(capture_resource_var_by_value=False)
  def tpu_subgraph():
    tensors = tpu_lib.rewrite(computation)
    tpu_lib.prune_unconnected_ops_from_xla(tf.compat.v1.get_default_graph())
    return tensors

  return list(tpu_functional.TPUPartitionedCall(
      args=tpu_subgraph.captured_inputs,
      device_ordinal=tpu_ops.tpu_ordinal_selector(),
      Tout=[o.type for o in tpu_subgraph.definition.signature.output_arg],
      f=tpu_subgraph))

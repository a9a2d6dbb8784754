"""A TPU-compatibility check that runs on CPU, in seconds.

A TPU runs each step as one XLA program with shapes fixed when it is
compiled. The check builds one replica's step of `model_fn` (TRAIN, EVAL or
PREDICT) on placeholders with the per-replica static shapes the TPU's infeed
would give it, compiles it with XLA on CPU and runs it once, and reports
each reason it cannot run on a TPU, in the user's terms (the op and the line
of the user's code that created it):

* unsupported op: an op XLA has no kernel for (`tf.py_function`, string
  ops, ...), from XLA's kernel registry, so every one is reported, not only
  the first that XLA's compiler stops at;
* dynamic shape: an op whose output shape depends on the data although its
  inputs' shapes are fixed (`tf.unique`, `tf.boolean_mask`, `tf.where` with
  one argument, ...). XLA on CPU may compile these with padded bounds; a TPU
  program needs the shapes when it is compiled;
* unsupported dtype: a tensor of a type TPUs do not have (`tf.string`,
  `tf.complex128`, ...); TF's list of TPU types is in
  tensorflow/core/tpu/tpu_defs.h (`kTpuAllTypes`);
* input: a batch without a static size (batch with `drop_remainder=True`),
  or input the TPU infeed cannot carry;
* XLA cannot compile: any other error XLA's compiler reports.

A step that calls other TPU collectives directly (`CollectivePermute`,
`AllToAll`) cannot be compiled by XLA's CPU backend: its ops, shapes and
dtypes are checked, and a warning says it was not compiled.
`tf.compat.v1.tpu.cross_replica_sum` is built as on one core (the
identity, as the check builds one replica), so the rest of such a step is
compiled.

What it does not show: XLA's TPU backend differs from its CPU backend in a
few ops and in numerics, and memory, speed and the infeed's throughput are
only known on a TPU.
"""

from __future__ import annotations

import dataclasses
import linecache
import os
import re
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

import hooks
from tpu_harness import _tf_internals
from tpu_harness import _tf_message as tf_message
from tpu_harness import spec as spec_lib
from tpu_harness.errors import TPUCompatibilityError
from tpu_harness.loops import step_input
from tpu_harness.loops.replicas import call_replicas

# Types a TPU holds (TF's kTpuAllTypes, less the float8 types TF's Python
# API has no names for); resource and variant handles are structural.
TPU_DTYPES = frozenset([
    tf.int32, tf.uint32, tf.float16, tf.bfloat16, tf.float32, tf.float64,
    tf.bool, tf.complex64, tf.int64, tf.uint64, tf.qint8, tf.quint8,
    tf.qint32, tf.int8, tf.uint8, tf.int16, tf.uint16])
_HANDLES = frozenset([tf.resource, tf.variant])
# Ops XLA compiles to nothing.
_DROPPED_BY_XLA = ("Assert",)

# Ops with XLA kernels for TPUs only (TF registers them with the TPU
# backend): a model may call them directly. A step that has them is checked
# without the compile on CPU. (cross_replica_sum is the identity in the one
# replica the check builds; CrossReplicaSum stays here for a step that
# builds the raw op.)
TPU_ONLY_OPS = frozenset(["CrossReplicaSum", "AllToAll", "CollectivePermute"])

# Dataset ops that set the batch size.
_BATCH_OPS = ("BatchDataset", "BatchDatasetV2", "PaddedBatchDataset",
              "PaddedBatchDatasetV2", "ParallelBatchDataset")

# Frames from these directories are library code, not the user's (nor are
# frames of installed packages).
_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(path)) + os.sep for path in [
        tf.__file__, os.__file__, np.__file__, logging.__file__,
        sys.modules["tpu_harness"].__file__, hooks.__file__])
_INSTALLED = (f"{os.sep}site-packages{os.sep}",
              f"{os.sep}dist-packages{os.sep}")


@dataclasses.dataclass(frozen=True)
class Problem:
  """One reason a step cannot run on a TPU.

  Attributes:
    mode: the mode whose step it is in ("train", "eval", "infer").
    kind: "unsupported op", "dynamic shape", "unsupported dtype", "input"
      or "XLA cannot compile".
    subject: what it is about: an op (its type and name) or an input leaf.
    detail: what is wrong and what a TPU needs instead.
    where: `file:line in function: code` of the user's code that created
      it, or "" when unknown.
  """
  mode: str
  kind: str
  subject: str
  detail: str
  where: str = ""

  def __str__(self) -> str:
    at = f" Created at {self.where}" if self.where else ""
    return f"[{self.mode}] {self.kind}: {self.subject}: {self.detail}{at}"


def check_model(model_fn: Callable, input_fn: Callable,
                params: Dict[str, Any], mode: str, *,
                input_params: Optional[Dict[str, Any]] = None,
                num_shards: int = 1,
                per_host_input: bool = False) -> List[Problem]:
  """Compiles one replica's step of `model_fn` with XLA on CPU.

  Args:
    model_fn: `model_fn(features, labels, mode, params) -> ModelSpec`.
    input_fn: `input_fn(params) -> Dataset`, as for the mode.
    params: `model_fn`'s params, with the per-replica `batch_size`.
    mode: a ModeKeys value.
    input_params: `input_fn`'s params (default: `params`).
    num_shards: replicas the input is laid out for.
    per_host_input: `input_fn`'s batches are global and split among the
      replicas (else: each is one replica's).

  Returns:
    The problems found, in the order of the step's ops; empty if the step
    compiled and ran.

  Raises:
    TypeError, ValueError: `model_fn` or `input_fn` breaks the runner's
      contract (not a TPU matter).
  """
  start = time.monotonic()
  with tf.Graph().as_default() as graph:
    spec_lib.create_global_step()
    problems, placeholders, structure = _input(
        input_fn, input_params or params, params, mode, num_shards,
        per_host_input)
    if structure is None:
      return problems
    first = len(graph.get_operations())
    outputs = _tf_internals.xla_compile(
        lambda *flat: _step(model_fn, flat, structure, mode, params),
        placeholders)
    compiled = [op for op in graph.get_operations()[first:]
                if _tf_internals.in_xla_compilation(op)]
    unsupported = _unsupported_ops(graph, compiled, mode)
    dtypes = _dtype_problems(compiled, mode)
    named = {p.subject for p in unsupported + dtypes}
    reported = {op for op in compiled if _op_name(op) in named}
    problems += (unsupported + dtypes
                 + _shape_problems(compiled, mode, frozenset(reported)))
    tpu_only = sorted({op.type for op in compiled
                       if op.type in TPU_ONLY_OPS})
    if tpu_only:
      # XLA's CPU backend cannot compile them; the rest was checked.
      logging.warning(
          "TPU compatibility check of %s: the step uses TPU-only ops %s, "
          "which XLA cannot compile on CPU; its ops, shapes and dtypes "
          "were checked, but it was not compiled.", mode, tpu_only)
    elif not any(p.kind in ("unsupported op", "unsupported dtype")
                 for p in problems):
      problems += _compile(outputs, placeholders, mode)
  logging.info("TPU compatibility check of %s: %s (%.1f s).", mode,
               f"{len(problems)} problem(s)" if problems else "passed",
               time.monotonic() - start)
  return problems


def check_or_raise(problems: Iterable[Problem]) -> None:
  """Raises TPUCompatibilityError if there are `problems`."""
  problems = list(problems)
  if problems:
    raise TPUCompatibilityError(problems)


# The step.


def _input(input_fn, input_params, params, mode, num_shards, per_host
           ) -> Tuple[List[Problem], List[tf.Tensor], Any]:
  """Placeholders with one replica's static input shapes.

  Returns:
    (problems, flat placeholders, their structure or None when no step can
    be built).
  """
  graph = tf.compat.v1.get_default_graph()
  first = len(graph.get_operations())
  dataset = step_input.make_input(input_fn, input_params, mode,
                                  check_shapes=False)
  spec = dataset.element_spec
  if mode == spec_lib.ModeKeys.PREDICT:
    spec = step_input.features_and_labels(spec)[0]  # Labels are dropped.
  batch_ops = [op for op in graph.get_operations()[first:]
               if op.type in _BATCH_OPS]
  batch_where = _where(batch_ops[-1]) if batch_ops else ""
  problems, placeholders, fatal = [], [], False
  names = step_input.element_names(spec)
  for name, leaf in zip(names, tf.nest.flatten(spec)):
    shape = leaf.shape
    if leaf.dtype not in TPU_DTYPES:
      problems.append(Problem(
          mode, "input", name,
          f"is {leaf.dtype.name}; a TPU's infeed carries numbers and bools "
          f"only: decode or look it up in input_fn."))
      fatal = True
      continue
    if shape.rank is None or not shape[1:].is_fully_defined():
      problems.append(Problem(
          mode, "input", name,
          f"has shape {shape}; every dimension after the batch must be "
          f"fixed (pad or resize in input_fn)."))
      fatal = True
      continue
    rows = shape[0]
    if mode == spec_lib.ModeKeys.PREDICT:
      rows = params["batch_size"]  # Padded to a full batch.
    elif rows is None:
      problems.append(Problem(
          mode, "input", name,
          f"has shape {shape}: the batch size is not static, so no TPU "
          f"program can be compiled for it; batch with "
          f"drop_remainder=True.", batch_where))
      rows = params["batch_size"]
    elif per_host:
      if rows % num_shards:
        problems.append(Problem(
            mode, "input", name,
            f"has a batch of {rows}, which cannot be split among "
            f"{num_shards} replicas.", batch_where))
        fatal = True
        continue
      rows //= num_shards
    placeholders.append(tf.compat.v1.placeholder(
        leaf.dtype, [rows] + shape[1:].as_list(),
        name=f"input_{len(placeholders)}"))
  return problems, placeholders, None if fatal else spec


def _step(model_fn, flat, structure, mode, params) -> List[tf.Tensor]:
  """One replica's step on `flat` inputs; the tensors it sends out."""
  element = tf.nest.pack_sequence_as(structure, list(flat))
  features, labels = step_input.features_and_labels(element)
  (spec,) = call_replicas(model_fn, (features, labels), mode, params,
                          num_shards=1, stacked=False)
  if mode == spec_lib.ModeKeys.PREDICT:
    return list(tf.nest.flatten(spec.predictions))
  out = [spec.loss]
  for call in (spec.host_call, spec.eval_metrics):
    if call is not None:
      out += [t for t in tf.nest.flatten(call[1]) if isinstance(t, tf.Tensor)]
  ops = [spec.train_op] if spec.train_op is not None else []
  with tf.control_dependencies(ops):
    return [tf.identity(t) for t in out]


# What it finds.


def _unsupported_ops(graph, compiled, mode) -> List[Problem]:
  """Ops of the step (and of functions it calls) without an XLA kernel."""
  problems = []
  supported: Dict[str, bool] = {}

  def has_kernel(op_type):
    if op_type in TPU_ONLY_OPS:
      return True  # On a TPU, that is.
    if op_type not in supported:
      supported[op_type] = _tf_internals.has_xla_kernel(op_type)
    return supported[op_type]

  for op in compiled:
    if not has_kernel(op.type):
      problems.append(Problem(
          mode, "unsupported op", _op_name(op),
          f"XLA has no kernel for {op.type}, so it cannot run in a TPU "
          f"step; move it into input_fn or host_call, or replace it.",
          _where(op)))
  library = {f.signature.name: f
             for f in graph.as_graph_def().library.function}
  for caller, function in _called_functions(compiled, library):
    for node in function.node_def:
      if node.op not in library and not has_kernel(node.op):
        problems.append(Problem(
            mode, "unsupported op", f"{node.op} ({node.name!r} in function "
            f"{function.signature.name!r})",
            f"XLA has no kernel for {node.op}, so it cannot run in a TPU "
            f"step.", _where(caller)))
  return problems


def _called_functions(compiled, library):
  """(calling op, FunctionDef) for each function the step calls, nested
  ones included."""
  seen, found = set(), []
  pending = [(op, name) for op in compiled
             for name in _function_names(op.node_def.attr.values())]
  while pending:
    op, name = pending.pop()
    if name in seen or name not in library:
      continue
    seen.add(name)
    function = library[name]
    found.append((op, function))
    for node in function.node_def:
      pending += [(op, n) for n in _function_names(node.attr.values())]
      if node.op in library:
        pending.append((op, node.op))
  return found


def _function_names(attrs) -> List[str]:
  names = []
  for attr in attrs:
    if attr.HasField("func"):
      names.append(attr.func.name)
    elif attr.HasField("list"):
      names += [f.name for f in attr.list.func]
  return names


def _dtype_problems(compiled, mode) -> List[Problem]:
  """Ops that make a tensor of a type TPUs lack from inputs that have
  none. (Messages of asserts are strings; XLA drops asserts, and those
  strings with them.)"""
  problems = []
  for op in compiled:
    bad = [t.dtype for t in op.outputs
           if t.dtype not in TPU_DTYPES and t.dtype not in _HANDLES
           and not all(c.type in _DROPPED_BY_XLA for c in t.consumers())]
    if bad and not any(t.dtype in bad for t in op.inputs):
      problems.append(Problem(
          mode, "unsupported dtype", _op_name(op),
          f"makes a {bad[0].name} tensor; TPUs have no {bad[0].name} type.",
          _where(op)))
  return problems


def _shape_problems(compiled, mode, skip=frozenset()) -> List[Problem]:
  """Ops whose output shape is not static although their inputs' are and
  no op they depend on is dynamic (or in `skip`, ops reported otherwise):
  the causes, not everything downstream of one."""
  problems = []
  tainted = set(skip)
  for op in compiled:  # In creation order: inputs first.
    if any(t.op in tainted for t in op.inputs) or op in tainted:
      tainted.add(op)
      continue
    # Known rank, unknown size: a data-dependent shape. (An output of
    # unknown rank is an op's scratch space, e.g. FusedBatchNormV3's, or
    # comes from an op reported as unsupported.)
    dynamic = [t for t in op.outputs
               if t.dtype not in _HANDLES and t.shape.rank is not None
               and not t.shape.is_fully_defined()]
    if dynamic:
      tainted.add(op)
      problems.append(Problem(
          mode, "dynamic shape", _op_name(op),
          f"its output has shape {dynamic[0].shape}, which depends on the "
          f"data; a TPU step needs every shape when it is compiled (use "
          f"fixed-size forms: multiply by a mask rather than "
          f"tf.boolean_mask, tf.where with three arguments).",
          _where(op)))
  return problems


def _compile(outputs, placeholders, mode) -> List[Problem]:
  """Compiles and runs the step once on zeros, in the default graph;
  XLA's error, if any."""
  feed = {ph: np.zeros(ph.shape.as_list(), ph.dtype.as_numpy_dtype)
          for ph in placeholders}
  config = tf.compat.v1.ConfigProto(device_count={"CPU": 1})
  with tf.compat.v1.Session(config=config) as session:
    session.run([tf.compat.v1.global_variables_initializer(),
                 tf.compat.v1.local_variables_initializer(),
                 tf.compat.v1.tables_initializer()])
    try:
      session.run(outputs, feed)
    except tf.errors.OpError as error:
      return [_xla_error(error, mode)]
  return []


def _xla_error(error: tf.errors.OpError, mode: str) -> Problem:
  """A Problem from an error of XLA's compiler or of the step's run."""
  message = error.message
  reason = re.sub(r"\{\{node [^}]*\}\}", "",
                  tf_message.first_line(message) or message).strip()
  nodes = re.findall(r"\{\{node ([^}]+)\}\}", message)
  graph = tf.compat.v1.get_default_graph()
  op = None
  for name in nodes:
    try:
      op = graph.get_operation_by_name(name)
      break
    except KeyError:
      continue
  if op is None and error.op is not None and error.op.graph is graph:
    op = error.op
  return Problem(mode, "XLA cannot compile",
                 _op_name(op) if op is not None else "the step", reason,
                 _where(op) if op is not None else "")


# The user's terms.


def _op_name(op: tf.Operation) -> str:
  return f"{op.type} ({op.name!r})"


def _where(op: tf.Operation) -> str:
  """`file:line in function: code` of the innermost frame of `op`'s
  creation that is the user's code (not TF's, Keras', tpu_harness')."""
  frames = [frame for frame in op.traceback
            if not os.path.abspath(frame.filename).startswith(_LIBRARY_DIRS)
            and not frame.filename.startswith("<")
            and not any(part in frame.filename for part in _INSTALLED)]
  if not frames:
    return ""
  frame = frames[-1]
  path = frame.filename
  try:
    relative = os.path.relpath(path)
    path = relative if not relative.startswith("..") else path
  except ValueError:
    pass
  code = linecache.getline(frame.filename, frame.lineno).strip()
  return f"{path}:{frame.lineno} in {frame.name}" + (
      f": `{code}`" if code else "")

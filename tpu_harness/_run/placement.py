"""Whether a session may place only each run's pruned graph.

A TF session places and optimizes a graph for every new set of fetches.
By default (`GraphOptions.place_pruned_graph=False`) it places the whole
graph once, with its functional loops and conditionals lowered to TF1
control flow, and for each new set of fetches copies that whole placed
graph and prunes the copy to what the fetches need. With the option, it
prunes first and places the small result: a restore, a save or one of the
infeed's runs no longer copies the device loop's whole lowered body (in
the bench's resnet program a trivial new run took 6.7 ms instead of 15.5,
a fresh `train()` 0.2 to 0.4 s less).

The two differ in what runs. Pruning after lowering drops an op in a
loop's body (or a branch, or a called function) that nothing the fetches
need depends on, as in any TF1 session and as TPUEstimator ran with
`use_tpu=False`; pruning first keeps the loop whole, and lowering it
afterwards runs every op of its body. A graph-mode Keras batch norm's
moving-average updates (not in `UPDATE_OPS`), a `tf.print` nothing
depends on, a random op whose value is unused: each would run in every
step with the option and never without it.

`prunes_alike` tells whether a graph has such an op: an op with side
effects in a function that the session lowers (`While`, `If`, `Case` and
function calls, nested), which not everything any run of that function
needs depends on. Only where it has none may the session prune first.
Reading a variable has no effect but on time, and is not counted.
Functions that tf.data runs (a dataset's `map`) are not the session's
and are not looked at.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Set, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness import _tf_internals

# Ops the session lowers into TF1 control flow (or inlines), and the
# attributes naming their functions.
_WHILES = frozenset(("While", "StatelessWhile"))
_BRANCHES = {"If": ("then_branch", "else_branch"),
             "StatelessIf": ("then_branch", "else_branch"),
             "Case": ("branches",), "StatelessCase": ("branches",),
             "PartitionedCall": ("f",), "StatefulPartitionedCall": ("f",)}
# Stateful in TF's registry, but running one more time changes nothing.
_READS = frozenset(("ReadVariableOp", "VarHandleOp", "VarIsInitializedOp",
                    "VariableShape", "IsVariableInitialized",
                    "ResourceGather", "ResourceGatherNd"))


def session_config(config: Optional[tf.compat.v1.ConfigProto],
                   graph: tf.Graph) -> tf.compat.v1.ConfigProto:
  """`config` (None: TF's defaults), with `place_pruned_graph` set where
  `graph` prunes alike; where it does not, `config` as it is, and why in
  the log."""
  if config is not None and config.graph_options.place_pruned_graph:
    return config
  reason = prunes_alike(graph.as_graph_def())
  if reason is not None:
    logging.info("Each new set of fetches places the whole graph (TF's "
                 "default; slower to start) because the %s.", reason)
    return config
  pruned = tf.compat.v1.ConfigProto()
  if config is not None:
    pruned.CopyFrom(config)
  pruned.graph_options.place_pruned_graph = True
  return pruned


def prunes_alike(graph_def: tf.compat.v1.GraphDef) -> Optional[str]:
  """Whether placing each run's pruned graph runs the ops placing the
  whole graph does.

  Args:
    graph_def: the session's whole graph, with its function library.

  Returns:
    None where it does; else why not, naming the first op with side effects
    that would run more often (its function and type).
  """
  return _Check(graph_def).top_level()


class _Check:
  """One graph's functions, and which of them have side effects."""

  def __init__(self, graph_def: tf.compat.v1.GraphDef):
    self._graph = graph_def
    self._functions = {f.signature.name: f for f in graph_def.library.function}
    self._effects: Dict[str, bool] = {}

  def top_level(self) -> Optional[str]:
    """Checks every call in the graph itself for each least set of its
    outputs a run may need: one output a node reads (through data edges;
    every output where no node reads it, as fetches may), none where a
    node depends on the call alone (a control edge)."""
    uses: Dict[str, Set[Optional[int]]] = {}
    for node in self._graph.node:
      for ref in node.input:
        if ref.startswith("^"):
          uses.setdefault(ref[1:], set()).add(None)
        else:
          name, _, index = ref.partition(":")
          uses.setdefault(name, set()).add(int(index or 0))
    for node in self._graph.node:
      outputs = self._output_count(node)
      if outputs is None:
        continue
      for use in uses.get(node.name, range(outputs)):
        reason = self._call(node, needed=set() if use is None else {use})
        if reason:
          return reason
    return None

  def _output_count(self, node) -> Optional[int]:
    """How many outputs a call has (None: `node` is not a call)."""
    names = self._loop_parts(node)[1:] or self._called(node)
    if not names:
      return None
    return len(self._functions[names[0]].signature.output_arg)

  # A function's body.

  def _body(self, name: str, needed: Optional[Iterable[int]]
            ) -> Tuple[Optional[str], Set[str]]:
    """Checks function `name`, of which the outputs `needed` (None: all)
    and its control outputs are needed; returns (why not, which of its
    inputs those need)."""
    function = self._functions[name]
    nodes = {node.name: node for node in function.node_def}
    outputs = [arg.name for arg in function.signature.output_arg]
    wanted = range(len(outputs)) if needed is None else needed
    roots = [function.ret[outputs[index]] for index in wanted
             if index < len(outputs)]
    roots += list(function.control_ret.values())
    visited: Set[str] = set()
    args: Set[str] = set()
    consumed: Dict[str, Set[int]] = {}
    stack = [_split(ref)[0] for ref in roots]
    while stack:
      source = stack.pop()
      if source not in nodes:
        args.add(source)
        continue
      if source in visited:
        continue
      visited.add(source)
      for ref in nodes[source].input:
        if ref.startswith("^"):
          stack.append(ref[1:])
          continue
        producer, index = _split(ref, self._output_index(nodes, ref))
        consumed.setdefault(producer, set()).add(index)
        stack.append(producer)
    for node in function.node_def:
      if node.name not in visited:
        if self._has_effects(node):
          return (f"{node.op} op {node.name!r} in function {name!r} runs "
                  f"whether or not anything needs it"), args
        continue
      reason = self._call(node, needed=consumed.get(node.name, set()))
      if reason:
        return reason, args
    return None, args

  def _output_index(self, nodes, ref: str) -> int:
    """The flat output index of `ref` ("node:arg:index") in a function."""
    parts = ref.split(":")
    if len(parts) != 3:
      return 0
    node, arg, index = parts[0], parts[1], int(parts[2])
    called = self._functions.get(nodes[node].op) if node in nodes else None
    if called is not None:  # Output args named as the function names them.
      names = [out.name for out in called.signature.output_arg]
      return names.index(arg) if arg in names else index
    return index

  # Calls: lowered ops, and functions called by name.

  def _call(self, node, needed: Set[int]) -> Optional[str]:
    """Checks the functions `node` runs, of which `needed` outputs are."""
    if node.op in _WHILES:
      return self._while(node, needed)
    names = self._called(node)
    for name in names:
      reason, _ = self._body(name, sorted(needed))
      if reason:
        return reason
    return None

  def _called(self, node) -> List[str]:
    if node.op in self._functions:
      return [node.op]
    names = []
    for attr in _BRANCHES.get(node.op, ()):
      value = node.attr[attr]
      names += ([value.func.name] if value.HasField("func")
                else [f.name for f in value.list.func])
    return [name for name in names if name in self._functions]

  def _while(self, node, needed: Set[int]) -> Optional[str]:
    """A loop's variables needed are those its condition reads, the
    outputs `needed` and, until none is added, those their next values
    read; every effect of its body must be needed by them."""
    cond, body = node.attr["cond"].func.name, node.attr["body"].func.name
    if cond not in self._functions or body not in self._functions:
      return None
    reason, cond_args = self._body(cond, None)
    if reason:
      return reason
    inputs = [arg.name for arg in self._functions[body].signature.input_arg]
    cond_inputs = [arg.name
                   for arg in self._functions[cond].signature.input_arg]
    wanted = set(needed) | {cond_inputs.index(arg) for arg in cond_args
                            if arg in cond_inputs}
    while True:
      reason, body_args = self._body(body, sorted(wanted))
      more = {inputs.index(arg) for arg in body_args if arg in inputs}
      if more <= wanted:
        return reason
      wanted |= more

  # Side effects.

  def _has_effects(self, node) -> bool:
    if node.op in self._functions or node.op in _BRANCHES \
        or node.op in _WHILES:
      return any(self._function_has_effects(name)
                 for name in self._called(node) + self._loop_parts(node))
    if node.op in _READS:
      return False
    stateful = _tf_internals.op_is_stateful(node.op)
    return True if stateful is None else stateful

  def _loop_parts(self, node) -> List[str]:
    if node.op not in _WHILES:
      return []
    return [node.attr[part].func.name for part in ("cond", "body")
            if node.attr[part].func.name in self._functions]

  def _function_has_effects(self, name: str) -> bool:
    if name not in self._effects:
      self._effects[name] = False  # A function calling itself.
      self._effects[name] = any(
          self._has_effects(node)
          for node in self._functions[name].node_def)
    return self._effects[name]


def _split(ref: str, index: int = 0) -> Tuple[str, int]:
  """(node or argument name, output index) of an input reference."""
  return ref.split(":")[0], index

"""Building N replicas of one step on CPU as a TPU would run them.

A TPU traces `model_fn` once and runs it on every core; each core holds its
own copy of the variables. The CPU emulation calls `model_fn` once per
replica, each on its own virtual CPU device, and must reproduce what that
means:

- Trainable variables are shared (`get_variable` under AUTO_REUSE); their
  gradients are combined across replicas by `CrossShardOptimizer` as on a
  TPU (`minimize()` averages them), and
  `tf.compat.v1.tpu.CrossShardOptimizer` is mapped to it while the replicas
  are built (a TPU all-reduce has no CPU kernel).
- Non-gradient state (batch-norm moving averages, EMA shadows: variables
  created with `trainable=False`) is per core on a TPU: each core updates its
  own copy from its own batch, and the checkpoint holds core 0's. Here
  replica 0 updates the real variable and replica i > 0 a local copy of its
  own, which is never saved or read outside it. (Updating one shared
  variable from every replica in turn would compound the momentum: 0.9 acting
  like 0.81 with two replicas.) In EVAL and PREDICT every replica reads the
  real, restored variables. Each copy starts from the real variable's value
  (restored, or initialized) when the session starts.
- While a replica's `model_fn` runs, the graph's collections hold what a
  TPU's one trace would see: what they held before the step, the shared
  variables this replica has created or been handed so far (in the
  collections they went into as the first-built replica created them), and
  what this replica added. `UPDATE_OPS`, `LOSSES` and `SUMMARIES` start
  empty (one replica too). So its train op depends on its own update ops,
  `tf.compat.v1.losses.get_total_loss()` sums its own losses,
  `tf.compat.v1.summary.merge_all()` merges its own summaries, a collection
  of the program's own (summaries gathered for a `host_call`) holds its own
  entries, and `tf.compat.v1.global_variables()` lists no variable that
  only an earlier-built replica made (an EMA's shadows, which a program
  that averages every variable named `moving_mean` would average again).
  Afterwards each collection holds what it held before and what each
  replica added (a shared variable once), but for summaries made in a
  loop, which are left out (`summaries` writes one replica's).
  `REGULARIZATION_LOSSES` stay shared: they are added once, when the shared
  variables are created, and belong to every replica; so do the
  control-flow contexts, plugin assets (TF keeps one object in each) and
  anything not keyed by a string (the variable store). With one replica
  only `UPDATE_OPS`, `LOSSES` and `SUMMARIES` are viewed.
- Variables created directly (`tf.Variable`, graph-mode `tf.keras` layers,
  which create new ones on every call) are shared too: those the
  first-built replica creates are handed, in the same order, to the others.
- The optimizer's own variables (slots; Adam's `beta1_power` and
  `beta2_power`, which it creates directly) are created once, by the
  replica that applies the combined gradients (`cross_shard.applying`),
  and are shared like the variables they belong to: on a TPU every core
  holds the same copy, updated with the same all-reduced gradients. They
  are not matched against the other replicas' variables, and no replica
  has its own copy of them.
- `tf.compat.v1.tpu.cross_replica_sum` is the identity with one replica;
  with more it is refused as `model_fn` calls it (no replica can read
  another's value while they are built one after another).
- A `tf.Variable` whose initial value is computed inside the loop cannot be
  created there; the error says so in the user's terms.
- `tf.compat.v1.train.init_from_checkpoint` called in `model_fn` (BERT's
  fine-tuning off TPU) sets the variables' initializers outside the loop,
  where they run once when there is no checkpoint to restore, as off TPU
  with TPUEstimator.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import tensorflow as tf

from tpu_harness import _tf_internals
from tpu_harness import spec as spec_lib
from tpu_harness.loops import cross_shard
from tpu_harness.loops import step_input
from tpu_harness.spec import ModeKeys

# Collections each replica starts empty, one replica too: its own update
# ops, losses and summaries only.
_OWN_ONLY = frozenset({tf.compat.v1.GraphKeys.UPDATE_OPS,
                       tf.compat.v1.GraphKeys.LOSSES,
                       tf.compat.v1.GraphKeys.SUMMARIES})
# Collections every replica sees whole, not viewed per replica: see the
# module's docstring. TF keeps one object in a plugin asset's collection
# (and checks it holds one).
_SHARED = frozenset({tf.compat.v1.GraphKeys.REGULARIZATION_LOSSES,
                     tf.compat.v1.GraphKeys.COND_CONTEXT,
                     tf.compat.v1.GraphKeys.WHILE_CONTEXT,
                     tf.compat.v1.GraphKeys.GLOBAL_STEP})
_SHARED_PREFIXES = ("__tensorboard_plugin_asset__",)


def _parts(variable) -> list:
  """The variables a collection holds for `variable` (a partitioned
  variable's parts)."""
  if (isinstance(variable, (tf.Variable, tf.Tensor))
      or not hasattr(variable, "__iter__")):
    return [variable]
  return list(variable)


class CollectionViews:
  """The graph's collections as each replica sees them while it is built:
  what they held before the step, the shared variables the replica has been
  handed (`show`), and what it added itself; with one replica, only
  `_OWN_ONLY` is viewed."""

  def __init__(self, count: int, in_loop: bool):
    self._count = count
    self._in_loop = in_loop
    self._graph: Optional[tf.Graph] = None
    self._before: Dict[str, list] = {}  # At the step's start.
    self._start: Dict[str, list] = {}  # The view of the replica built.
    self._added: Dict[str, list] = {}  # What the replicas built added.
    # The collections each variable the first-built replica created went
    # into as it was created (by id), and those shown to the replica built.
    self._homes: Dict[int, List[str]] = {}
    self._shown: set = set()

  def _viewed(self, key) -> bool:
    if self._count == 1:
      return key in _OWN_ONLY
    return (isinstance(key, str) and key not in _SHARED
            and not key.startswith(_SHARED_PREFIXES))

  def _keys(self) -> List[str]:
    keys = set(self._graph.get_all_collection_keys()) | set(self._start)
    return [key for key in keys if self._viewed(key)]

  def start(self) -> None:
    """Sets the view of the replica about to be built."""
    if self._graph is None:
      self._graph = tf.compat.v1.get_default_graph()
      self._before = {key: list(self._graph.get_collection(key))
                      for key in self._graph.get_all_collection_keys()
                      if self._viewed(key)}
      self._start = {key: [] for key in self._before}
    self._shown = set()
    for key in self._keys():
      view = [] if key in _OWN_ONLY else list(self._before.get(key, []))
      self._graph.get_collection_ref(key)[:] = view
      self._start[key] = list(view)

  def created(self, make: Callable[[], Any]) -> Any:
    """`make()`, a variable the first-built replica creates; notes the
    viewed collections it goes into."""
    sizes = {key: len(self._graph.get_collection_ref(key))
             for key in self._keys()}
    variable = make()
    ids = {id(part) for part in _parts(variable)}
    for key in self._keys():
      for item in self._graph.get_collection_ref(key)[sizes.get(key, 0):]:
        if id(item) in ids:
          self._homes.setdefault(id(item), []).append(key)
    return variable

  def show(self, variable) -> None:
    """Puts a shared `variable` the replica being built was handed into
    the collections the first-built replica created it into."""
    for part in _parts(variable):
      for key in self._homes.get(id(part), ()):
        if (key, id(part)) not in self._shown:
          self._shown.add((key, id(part)))
          self._graph.get_collection_ref(key).append(part)

  def end(self) -> None:
    """Takes in what the replica just built added (not what it was shown),
    and leaves each viewed collection with what it held before the step and
    what the replicas built so far added (summaries made in a loop left
    out: they cannot be merged outside it, Scaffold's default
    `merge_all()` under v1 control flow refuses them, and the loop sends
    one replica's out itself)."""
    for key in self._keys():
      ref = self._graph.get_collection_ref(key)
      start = self._start.get(key, [])
      if len(ref) >= len(start) and all(
          item is was for item, was in zip(ref, start)):
        new = ref[len(start):]
      else:  # The replica removed entries of its view.
        known = {id(item) for item in start}
        new = [item for item in ref if id(item) not in known]
      added = self._added.setdefault(key, [])
      # A shared variable each replica adds itself (an EMA's
      # MOVING_AVERAGE_VARIABLES) is kept once; other entries each time.
      variables = {id(item) for item in added
                   if isinstance(item, tf.Variable)}
      for item in new:
        if (key, id(item)) in self._shown or id(item) in variables:
          continue
        if isinstance(item, tf.Variable):
          variables.add(id(item))
        added.append(item)
      in_loop_summaries = (self._in_loop and
                           key == tf.compat.v1.GraphKeys.SUMMARIES)
      ref[:] = self._before.get(key, []) + (
          [] if in_loop_summaries else added)


class Group:
  """What the replicas of one step share while they are built: the
  variables the first-built replica created directly (`tf.Variable`, graph-
  mode `tf.keras` layers), handed in the same order to the others, and the
  graph's collections as each sees them."""

  def __init__(self, count: int, devices=None, variable_device: str = "",
               in_loop: bool = True):
    """Args: the replicas; the device of each (default: virtual CPU i of
    the session's process); where variables are created ("": on the
    replica's device); whether the step is built inside a loop."""
    self.count = count
    self.devices = (list(devices) if devices is not None
                    else [f"/device:CPU:{index}" for index in range(count)])
    self.variable_device = variable_device
    self.created = []
    self.cursor = 0
    self.in_get_variable = 0
    self.views = CollectionViews(count, in_loop)


@contextlib.contextmanager
def building(group: Group, index: int, mode: str) -> Iterator[None]:
  """While replica `index` of `group` is built in `mode` (inside the
  runner's `cross_shard.replica_group`), replicas built from the last to
  0."""
  first = index == group.count - 1
  reuse = None if first else tf.compat.v1.AUTO_REUSE
  own_state = index > 0 and mode == ModeKeys.TRAIN
  group.cursor = 0
  group.views.start()
  try:
    # Outside the loop's name scope: names derived from it (e.g. an
    # ExponentialMovingAverage's) would otherwise differ from the same
    # model_fn's outside the loop (v1 control flow).
    with tf.compat.v1.name_scope(None), tf.device(group.devices[index]), \
        tf.compat.v1.variable_scope(
            tf.compat.v1.get_variable_scope(), reuse=reuse,
            custom_getter=_getter(group, index, first, own_state)), \
        tf.variable_creator_scope(_creator(group, index, first, own_state)), \
        _tf_internals.cross_shard_optimizer_as(_cross_shard_optimizer), \
        _tf_internals.cross_replica_sum_as(group.count), \
        _tf_internals.checkpoint_initializers_outside():
      yield
    if group.count > 1 and not first and group.cursor != len(group.created):
      raise ValueError(
          f"Replica {index} created {group.cursor} variables directly "
          f"(tf.Variable, tf.keras layers), replica {group.count - 1} "
          f"{len(group.created)}: `model_fn` must build the same variables "
          f"for every replica.")
  finally:
    group.views.end()


def _is_state(variable: tf.Variable, trainable: object) -> bool:
  """Whether `variable` is non-gradient state of the model (not the global
  step): batch-norm moving averages, EMA shadows."""
  return (trainable is False
          and variable is not tf.compat.v1.train.get_global_step()
          and any(v is variable for v in tf.compat.v1.global_variables()))


def _local_copy(create, variable: tf.Variable, kwargs: dict, name: str):
  """This replica's own copy of `variable`: a local variable, never saved,
  that starts from `variable`'s value (restored or initialized before
  local variables are), as each TPU core's copy starts from the value the
  host restored (a frozen batch norm's statistics from a checkpoint)."""
  copy_kwargs = dict(kwargs)
  copy_kwargs.update(dtype=variable.dtype.base_dtype, trainable=False,
                     collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])
  copy_kwargs.pop("partitioner", None)
  with tf.init_scope():  # Read outside the loop, when the copy starts.
    start = variable.read_value()
  # A variable creator's arguments name it `initial_value`, get_variable's
  # `initializer`.
  copy_kwargs["initial_value" if "initial_value" in copy_kwargs
              else "initializer"] = start
  return create(name, copy_kwargs)


def _getter(group: Group, index: int, first: bool, own_state: bool):
  """A custom getter: marks get_variable calls (their sharing is the
  variable store's), notes the collections the first-built replica's
  variables go into and shows the others those they are handed, and gives
  replicas > 0 their own copies of state."""

  def custom_getter(getter, name, *args, **kwargs):
    group.in_get_variable += 1
    try:
      with _on(group.variable_device):
        if first and group.count > 1:
          variable = group.views.created(
              lambda: getter(name, *args, **kwargs))
        else:
          variable = getter(name, *args, **kwargs)
          group.views.show(variable)
      if (not own_state or cross_shard.applying()
          or not _is_state(variable, kwargs.get("trainable", True))):
        return variable

      def create(copy_name, copy_kwargs):
        if isinstance(copy_kwargs.get("initializer"), tf.Tensor):
          copy_kwargs.pop("shape", None)  # The initial value has it.
        else:
          copy_kwargs["shape"] = variable.shape
        return getter(copy_name, *args, **copy_kwargs)

      return _local_copy(create, variable, kwargs,
                         f"replica_{index}_state/{name}")
    finally:
      group.in_get_variable -= 1

  return custom_getter


def _creator(group: Group, index: int, first: bool, own_state: bool):
  """A variable creator: variables created directly (not by get_variable)
  by the first-built replica are handed to the others in the same order,
  but for the optimizer's, created once as it applies the gradients; errors
  of variables made inside the loop are explained."""

  def creator(next_creator, **kwargs):
    if group.in_get_variable or group.count == 1:
      return _explained(next_creator, kwargs)
    if cross_shard.applying():
      # Adam's beta powers (tf.compat.v1.Variable): made in this replica
      # only, once. Seen here when the step is built in the graph itself
      # (no loop, or a v1 tf.while_loop); in a v2 loop tf.init_scope lifts
      # them out of the loop's graph, and of this creator.
      with _on(group.variable_device):
        return _explained(next_creator, kwargs)
    if first:
      with _on(group.variable_device):
        variable = group.views.created(
            lambda: _explained(next_creator, kwargs))
      group.created.append(variable)
    else:
      if group.cursor >= len(group.created):
        raise ValueError(
            f"Replica {index} creates more variables directly (tf.Variable, "
            f"tf.keras layers) than replica {group.count - 1} did: "
            f"`model_fn` must build the same variables for every replica.")
      variable = group.created[group.cursor]
      group.cursor += 1
      group.views.show(variable)
    if own_state and _is_state(variable, kwargs.get("trainable")):
      return _local_copy(
          lambda name, copy_kwargs: _explained(next_creator, dict(
              copy_kwargs, name=name)), variable, kwargs,
          f"replica_{index}_state/{variable.op.name}")
    return variable

  return creator


def _on(device: str):
  """Places what is built inside on `device` ("": no change)."""
  return tf.device(device) if device else contextlib.nullcontext()


def _explained(next_creator, kwargs):
  """Creates the variable; says in the user's terms why one whose initial
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


def _cross_shard_optimizer(opt, reduction=tf.compat.v1.losses.Reduction.MEAN,
                           name="CrossShardOptimizer", group_assignment=None):
  """`tf.compat.v1.tpu.CrossShardOptimizer`'s signature, emulated."""
  if group_assignment is not None:
    raise NotImplementedError(
        "tf.compat.v1.tpu.CrossShardOptimizer(group_assignment=...) is not "
        "emulated on CPU; run with group_assignment=None, or on a TPU.")
  return cross_shard.CrossShardOptimizer(opt, name=name, reduction=reduction)


def call_replicas(model_fn: Callable, element: Any, mode: str,
                  params: Dict[str, Any], num_shards: int, stacked: bool,
                  devices: Optional[Sequence[str]] = None,
                  variable_device: str = "",
                  cores_per_host: Optional[int] = None,
                  summaries: Optional[List[tf.Tensor]] = None,
                  in_loop: bool = True
                  ) -> List[spec_lib.ModelSpec]:
  """Calls `model_fn` once per replica on its slice of `element` (or on
  `element` itself when it is not `stacked` by replica), each in the
  emulation's replica context; returns the replicas' specs. `element` is
  (features, labels) or features alone (`labels=None`; see
  `step_input.features_and_labels`).

  On a pod (`cores_per_host`), `element` holds one stacked element per
  host and replica i takes its part of host i // cores_per_host's; each
  replica runs on `devices[i]`, the variables on `variable_device`.
  The `tf.compat.v1.summary` ops of the replica built first (the last
  index) are appended to `summaries`, if given. `in_loop`: the step is
  built in a loop (its summaries are then left out of the graph's
  collection).
  """
  specs = [None] * num_shards
  group = Group(num_shards, devices=devices,
                variable_device=variable_device, in_loop=in_loop)
  with cross_shard.replica_group(num_shards) as replica:
    # Replica 0 last: the gradients are applied (and the global step
    # advanced) in the replica built last, and replica 0's values are the
    # ones a TPU program reads back (host_call's [0], the checkpoint).
    for index in reversed(range(num_shards)):
      source, position = element, index
      if cores_per_host:
        host, position = divmod(index, cores_per_host)
        source = element[host]
      with replica(index) as context, building(
          group, index, mode):
        # On the replica's device: a pod's replica reads its host's input
        # on its host.
        features, labels = (
            part if part is None or not stacked else
            tf.nest.map_structure(lambda t, i=position: t[i], part)
            for part in step_input.features_and_labels(source))
        specs[index] = spec_lib.check_spec(
            model_fn(features, labels, mode, params), mode)
        # The first-built replica's summaries: their tags are model_fn's
        # own names (the later replicas' get suffixes: "loss_1").
        if index == num_shards - 1 and summaries is not None:
          summaries.extend(tf.compat.v1.get_collection(
              tf.compat.v1.GraphKeys.SUMMARIES))
    cross_shard.require_used(context.used, mode == spec_lib.ModeKeys.TRAIN,
                             num_shards, "combined across replicas")
  return specs

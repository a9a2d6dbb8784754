"""Building N replicas of one step on CPU as a TPU would run them.

A TPU traces `model_fn` once and runs it on every core; each core holds its
own copy of the variables. The CPU emulation calls `model_fn` once per
replica, each on its own virtual CPU device, and must reproduce what that
means:

- Trainable variables are shared (`get_variable` under AUTO_REUSE); their
  gradients are averaged across replicas by `CrossShardOptimizer`, and
  `tf.compat.v1.tpu.CrossShardOptimizer` is mapped to it while the replicas
  are built (a TPU all-reduce has no CPU kernel).
- Non-gradient state (batch-norm moving averages, EMA shadows: variables
  created with `trainable=False`) is per core on a TPU: each core updates its
  own copy from its own batch, and the checkpoint holds core 0's. Here
  replica 0 updates the real variable and replica i > 0 a local copy of its
  own, which is never saved or read outside it. (Updating one shared
  variable from every replica in turn would compound the momentum: 0.9 acting
  like 0.81 with two replicas.) In EVAL and PREDICT every replica reads the
  real, restored variables.
- `tf.compat.v1.GraphKeys.UPDATE_OPS` holds, while a replica's `model_fn`
  runs, only that replica's update ops, so its train op depends on its own.
- A `tf.Variable` whose initial value is computed inside the loop cannot be
  created there; the error says so in the user's terms.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import tensorflow as tf

from tpu_harness import _tf_internals
from tpu_harness import cross_shard
from tpu_harness.spec import ModeKeys

_UPDATE_OPS = tf.compat.v1.GraphKeys.UPDATE_OPS


@contextlib.contextmanager
def building(index: int, count: int, mode: str) -> Iterator[None]:
  """While replica `index` of `count` is built in `mode` (inside the
  runner's `cross_shard.replica_group`)."""
  first = index == count - 1  # Replicas are built from the last to 0.
  reuse = None if first else tf.compat.v1.AUTO_REUSE
  getter = (_per_replica_state(index)
            if index and mode == ModeKeys.TRAIN else None)
  updates = tf.compat.v1.get_collection_ref(_UPDATE_OPS)
  before = list(updates)
  del updates[:]
  try:
    # Outside the loop's name scope: names derived from it (e.g. an
    # ExponentialMovingAverage's) would otherwise differ from the same
    # model_fn's outside the loop (v1 control flow).
    with tf.compat.v1.name_scope(None), tf.device(f"/device:CPU:{index}"), \
        tf.compat.v1.variable_scope(tf.compat.v1.get_variable_scope(),
                                    reuse=reuse, custom_getter=getter), \
        tf.variable_creator_scope(_explain_variable_errors), \
        _tf_internals.cross_shard_optimizer_as(_cross_shard_optimizer):
      yield
  finally:
    mine = list(updates)
    updates[:] = before + mine


def _per_replica_state(index: int):
  """A custom getter: non-trainable global variables become this replica's
  local copies."""

  def custom_getter(getter, name, *args, **kwargs):
    variable = getter(name, *args, **kwargs)
    if kwargs.get("trainable", True) is not False or variable is (
        tf.compat.v1.train.get_global_step()):
      return variable
    if not any(v is variable for v in tf.compat.v1.global_variables()):
      return variable
    copy_kwargs = dict(kwargs)
    copy_kwargs.update(
        dtype=variable.dtype.base_dtype, trainable=False,
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])
    if isinstance(kwargs.get("initializer"), tf.Tensor):
      copy_kwargs.pop("shape", None)  # The initial value has it.
    else:
      copy_kwargs["shape"] = variable.shape
    copy_kwargs.pop("partitioner", None)
    return getter(f"replica_{index}_state/{name}", *args, **copy_kwargs)

  return custom_getter


def _cross_shard_optimizer(opt, reduction=tf.compat.v1.losses.Reduction.MEAN,
                           name="CrossShardOptimizer", group_assignment=None):
  """`tf.compat.v1.tpu.CrossShardOptimizer`'s signature, emulated."""
  if group_assignment is not None:
    raise NotImplementedError(
        "tf.compat.v1.tpu.CrossShardOptimizer(group_assignment=...) is not "
        "emulated on CPU; run with group_assignment=None, or on a TPU.")
  return cross_shard.CrossShardOptimizer(opt, name=name, reduction=reduction)


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

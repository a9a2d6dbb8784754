"""Gradients combined across replicas, for the CPU emulation of a TPU loop.

On a TPU each replica runs the same step on its slice of the batch and
`tf.compat.v1.tpu.CrossShardOptimizer` sums gradients with a cross-replica
all-reduce in `apply_gradients`; with reduction MEAN (the default) its
`compute_gradients` first divides each replica's loss by the number of
replicas, so that `minimize()` applies the mean, while gradients computed
otherwise (`tf.gradients`) and passed to `apply_gradients` are summed, as
BERT's optimizer passes them. Locally the runner builds each replica's step
in turn, on its own virtual CPU device, inside one loop body.
`CrossShardOptimizer` does the same division, collects the gradients of
every replica and applies their sum once, in the `apply_gradients` of the
replica built last; the others' are no-ops. The
CPU emulation builds replica 0 last, so that, as on a TPU, replica 0 reads
the global step after the update once its own train op is built. What the
wrapped optimizer creates as it applies them (slots, Adam's `beta1_power`
and `beta2_power`) is created there once (`applying`), named as with one
replica, and updated once per step: the copy every TPU core holds.
With `minimize()` one step of N replicas thus equals one step of one
replica on the whole batch (for a loss that is a mean over the batch), and
the global step advances once.
A step that applies several optimizers (a GAN's two) makes the same calls in
every replica: each replica's k-th `apply_gradients` call is combined with
the others' k-th.

Outside the runner's replica context (num_shards == 1, or plain use) it is
the wrapped optimizer. Inside a TPU computation (`tpu_replicas`) it is TF's
`tf.compat.v1.tpu.CrossShardOptimizer` around the wrapped optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Dict, List, Optional

import tensorflow as tf

_LOCAL = threading.local()
# TF's own (on a TPU, ours delegates to it).
_TPU_CROSS_SHARD_OPTIMIZER = tf.compat.v1.tpu.CrossShardOptimizer


@dataclasses.dataclass
class _Apply:
  """One `apply_gradients` call of the step (the k-th of each replica: a
  GAN's discriminator's, then its generator's), collected over replicas."""
  # Per variable (by ref), the gradients of replicas so far.
  grads: Dict[object, List[tf.Tensor]] = dataclasses.field(default_factory=dict)
  variables: Dict[object, tf.Variable] = dataclasses.field(
      default_factory=dict)
  replicas: int = 0  # Replicas that made this call so far.
  # The call's name scope in the replica built first, whose names are
  # those of a single replica.
  scope: str = ""


@dataclasses.dataclass
class _ReplicaContext:
  index: int
  count: int
  used: bool = False
  tpu: bool = False
  # The step's apply_gradients calls, in the order each replica makes them.
  applies: List[_Apply] = dataclasses.field(default_factory=list)
  calls: int = 0  # apply_gradients calls so far in the replica being built.
  # Whether the wrapped optimizer is applying the combined gradients now.
  applying: bool = False


def current_replica() -> Optional[_ReplicaContext]:
  """The replica being built, or None outside the runner's loop."""
  return getattr(_LOCAL, "context", None)


def applying() -> bool:
  """Whether the replica being built is applying the replicas' combined
  gradients with the wrapped optimizer: the variables it creates then
  (its slots, Adam's `beta1_power` and `beta2_power`) are created once, in
  this replica only, and updated once per step."""
  context = current_replica()
  return context is not None and context.applying


@contextlib.contextmanager
def replica_group(count: int):
  """Builds `count` replicas of one step; yields a function to enter each.

  Usage (by the device loop)::

    with replica_group(n) as replica:
      for i in range(n):
        with replica(i):
          spec = model_fn(...)
  """
  shared = _ReplicaContext(index=0, count=count)

  @contextlib.contextmanager
  def replica(index: int):
    shared.index = index
    shared.calls = 0
    _LOCAL.context = shared
    try:
      yield shared
    finally:
      _LOCAL.context = None

  yield replica


@contextlib.contextmanager
def tpu_replicas(count: int):
  """While building a `tf.compat.v1.tpu.replicate` computation of `count`
  replicas: CrossShardOptimizer delegates to TF's TPU CrossShardOptimizer
  (a cross_replica_sum all-reduce on the TPU)."""
  _LOCAL.context = _ReplicaContext(index=0, count=count, tpu=True)
  try:
    yield _LOCAL.context
  finally:
    _LOCAL.context = None


def require_used(used: bool, training: bool, num_shards: int,
                 what: str) -> None:
  """Raises unless a training step of several replicas wrapped its
  optimizer (`used`), which makes its gradients `what` (combined across
  replicas or TPU cores).

  Raises:
    ValueError: it did not; the message says how to.
  """
  if training and num_shards > 1 and not used:
    raise ValueError(
        f"With num_shards={num_shards}, `model_fn` must wrap its optimizer "
        f"in tpu_harness.CrossShardOptimizer (or "
        f"tf.compat.v1.tpu.CrossShardOptimizer) so that gradients are "
        f"{what}.")


class CrossShardOptimizer(tf.compat.v1.train.Optimizer):
  """Combines gradients across replicas as TF's TPU CrossShardOptimizer
  does (`compute_gradients` divides the loss by the replicas for MEAN,
  `apply_gradients` sums), then applies the wrapped optimizer.

  Wrap the optimizer inside `model_fn`::

    optimizer = tpu_harness.CrossShardOptimizer(
        tf.compat.v1.train.GradientDescentOptimizer(0.1))
    train_op = optimizer.minimize(loss, global_step=global_step)
  """

  def __init__(self, optimizer: tf.compat.v1.train.Optimizer,
               name: str = "CrossShardOptimizer",
               reduction: str = tf.compat.v1.losses.Reduction.MEAN):
    """Wraps `optimizer`.

    Args:
      optimizer: the optimizer to apply the combined gradients with.
      name: the optimizer's name.
      reduction: MEAN: `minimize()` applies the mean of the replicas'
        gradients (`compute_gradients` divides each replica's loss by
        their number); SUM: their sum. Either way `apply_gradients` sums
        the gradients it is given, as
        `tf.compat.v1.tpu.CrossShardOptimizer`'s `reduction` does.

    Raises:
      TypeError: `optimizer` is not a tf.compat.v1.train.Optimizer.
      ValueError: `reduction` is neither MEAN nor SUM.
    """
    if not isinstance(optimizer, tf.compat.v1.train.Optimizer):
      raise TypeError(f"`optimizer` ({optimizer!r}) must be a "
                      f"tf.compat.v1.train.Optimizer.")
    reductions = (tf.compat.v1.losses.Reduction.MEAN,
                  tf.compat.v1.losses.Reduction.SUM)
    if reduction not in reductions:
      raise ValueError(f"`reduction` ({reduction!r}) must be one of "
                       f"{list(reductions)}.")
    super().__init__(use_locking=False, name=name)
    self._optimizer = optimizer
    self._reduction = reduction

  def _tpu_optimizer(self):
    if not hasattr(self, "_tpu"):
      self._tpu = _TPU_CROSS_SHARD_OPTIMIZER(self._optimizer,
                                             reduction=self._reduction)
    return self._tpu

  def compute_gradients(self, loss, var_list=None, **kwargs):
    context = current_replica()
    if context is not None and context.tpu:
      context.used = True
      return self._tpu_optimizer().compute_gradients(loss, var_list=var_list,
                                                     **kwargs)
    if (context is not None and context.count > 1
        and self._reduction == tf.compat.v1.losses.Reduction.MEAN):
      loss = _scaled(loss, 1.0 / context.count)
    return self._optimizer.compute_gradients(loss, var_list=var_list, **kwargs)

  def apply_gradients(self, grads_and_vars, global_step=None, name=None):
    context = current_replica()
    if context is not None and context.tpu:
      return self._tpu_optimizer().apply_gradients(grads_and_vars,
                                                   global_step, name)
    if context is None or context.count == 1:
      if context is not None:
        context.used = True
      return self._optimizer.apply_gradients(grads_and_vars, global_step,
                                             name)
    context.used = True
    # The k-th call of each replica is the same optimizer's (every replica
    # runs the same model_fn): their gradients are combined.
    if context.calls == len(context.applies):
      context.applies.append(_Apply(
          scope=tf.compat.v1.get_default_graph().get_name_scope()))
    collected = context.applies[context.calls]
    context.calls += 1
    for grad, var in grads_and_vars:
      if grad is None:
        continue
      key = var.ref()
      collected.grads.setdefault(key, []).append(grad)
      collected.variables[key] = var
    collected.replicas += 1
    if collected.replicas < context.count:
      return tf.no_op(name="collect_replica_gradients")
    summed = []
    for key, grads in collected.grads.items():
      if len(grads) != context.count:
        raise ValueError(
            f"Variable {collected.variables[key].name} got gradients from "
            f"{len(grads)} of {context.count} replicas; every replica must "
            f"compute the same gradients.")
      summed.append((tf.add_n(grads), collected.variables[key]))
    collected.grads.clear()
    context.applying = True
    try:
      # In the first-built replica's name scope, not this one's (e.g.
      # "model_1/" for "model/"): variables the optimizer names from the
      # scope (Adam's "model/beta1_power") are named as with one replica,
      # whatever the number of replicas, so checkpoints restore across them.
      with tf.compat.v1.name_scope(collected.scope + "/" if collected.scope
                                   else None):
        return self._optimizer.apply_gradients(summed, global_step, name)
    finally:
      context.applying = False

  def get_slot(self, *args, **kwargs):
    return self._optimizer.get_slot(*args, **kwargs)

  def get_slot_names(self, *args, **kwargs):
    return self._optimizer.get_slot_names(*args, **kwargs)

  def variables(self):
    return self._optimizer.variables()


def _scaled(loss, scale: float):
  """`loss` (a tensor, or a callable returning one) times `scale`."""
  if callable(loss):
    return lambda: loss() * scale
  return loss * scale

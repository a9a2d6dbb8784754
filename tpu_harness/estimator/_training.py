"""`tf_estimator.train_and_evaluate`, `TrainSpec`, `EvalSpec`: TF's local
(non-distributed) train-and-evaluate loop, for an Estimator or a
TPUEstimator.

As TF's `train_and_evaluate` ran without a cluster in TF_CONFIG: one
`train(train_spec.input_fn, max_steps=train_spec.max_steps)` whose
checkpoint listener evaluates after each checkpoint save (but the first,
made when the session starts) no more often than `eval_spec.throttle_secs`,
and at the end if the last checkpoint was not evaluated; each evaluation
is of the newest checkpoint, followed by `eval_spec.exporters`. Returns the
last evaluation's metrics and its exporters' results. `start_delay_secs`
applies to a distributed evaluator only, as in TF.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from tpu_harness.estimator._estimator import Estimator


def _check_hooks(name: str, hooks: Any) -> tuple:
  hooks = tuple(hooks or ())
  for index, hook in enumerate(hooks):
    if not isinstance(hook, tf.compat.v1.train.SessionRunHook):
      raise TypeError(f"`{name}[{index}]` ({hook!r}) must be a "
                      f"tf.compat.v1.train.SessionRunHook.")
  return hooks


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


class TrainSpec:
  """`tf_estimator.TrainSpec(input_fn, max_steps=None, hooks=None,
  saving_listeners=None)`: the training half of `train_and_evaluate`.

  Raises:
    TypeError: `input_fn` not callable, a hook that is not a
      SessionRunHook.
    ValueError: `max_steps` not None or a positive integer.
  """

  def __init__(self, input_fn: Callable, max_steps: Optional[int] = None,
               hooks: Optional[Sequence] = None,
               saving_listeners: Optional[Sequence] = None):
    if not callable(input_fn):
      raise TypeError(f"`input_fn` ({input_fn!r}) must be callable.")
    if max_steps is not None and not (_is_int(max_steps) and max_steps > 0):
      raise ValueError(f"`max_steps` ({max_steps!r}) must be None or a "
                       f"positive integer.")
    self.input_fn = input_fn
    self.max_steps = max_steps
    self.hooks = _check_hooks("hooks", hooks)
    self.saving_listeners = tuple(saving_listeners or ())


class EvalSpec:
  """`tf_estimator.EvalSpec(input_fn, steps=100, name=None, hooks=None,
  exporters=None, start_delay_secs=120, throttle_secs=600)`: the
  evaluation half of `train_and_evaluate`.

  `exporters`: one or a list of objects with a `name` and TF's
  `export(estimator, export_path, checkpoint_path, eval_result,
  is_the_final_export)`, names unique.

  Raises:
    TypeError: `input_fn` not callable, `name` not None or a string, a
      hook that is not a SessionRunHook, an exporter without `name` and
      `export`.
    ValueError: `steps` not None or a positive integer; a negative `start_delay_secs` or `throttle_secs`; two
      exporters of one name.
  """

  def __init__(self, input_fn: Callable, steps: Optional[int] = 100,
               name: Optional[str] = None, hooks: Optional[Sequence] = None,
               exporters: Any = None, start_delay_secs: int = 120,
               throttle_secs: int = 600):
    if not callable(input_fn):
      raise TypeError(f"`input_fn` ({input_fn!r}) must be callable.")
    if steps is not None and not (_is_int(steps) and steps > 0):
      raise ValueError(f"`steps` ({steps!r}) must be None or a positive "
                       f"integer.")
    if name is not None and not isinstance(name, str):
      raise TypeError(f"`name` ({name!r}) must be None or a string.")
    for arg, value in (("start_delay_secs", start_delay_secs),
                       ("throttle_secs", throttle_secs)):
      if not (isinstance(value, (int, float)) and not isinstance(value, bool)
              and value >= 0):
        raise ValueError(f"`{arg}` ({value!r}) must be a number >= 0.")
    if exporters is None:
      exporters = ()
    elif not isinstance(exporters, (list, tuple)):
      exporters = (exporters,)
    names = []
    for index, exporter in enumerate(exporters):
      if not (isinstance(getattr(exporter, "name", None), str)
              and callable(getattr(exporter, "export", None))):
        raise TypeError(f"`exporters[{index}]` ({exporter!r}) must have a "
                        f"`name` (str) and an `export` method, as "
                        f"tf.estimator.Exporter.")
      if exporter.name in names:
        raise ValueError(f"`exporters` has two named {exporter.name!r}; "
                         f"names must be unique.")
      names.append(exporter.name)
    self.input_fn = input_fn
    self.steps = steps
    self.name = name
    self.hooks = _check_hooks("hooks", hooks)
    self.exporters = tuple(exporters)
    self.start_delay_secs = start_delay_secs
    self.throttle_secs = throttle_secs


class _Evaluator:
  """Evaluates the newest checkpoint and runs the exporters (TF's)."""

  def __init__(self, estimator: Estimator, eval_spec: EvalSpec,
               max_training_steps: Optional[int]):
    self._estimator = estimator
    self._spec = eval_spec
    self._max_steps = max_training_steps
    self._previous = None

  def evaluate_and_export(self):
    """(metrics, export results) of the newest checkpoint.

    Raises:
      RuntimeError: no checkpoint, or none newer than the last evaluated.
    """
    checkpoint = self._estimator.latest_checkpoint()
    if checkpoint is None or checkpoint == self._previous:
      raise RuntimeError(
          f"There was no new checkpoint after the training to evaluate "
          f"(newest: {checkpoint!r}).")
    metrics = self._estimator.evaluate(
        self._spec.input_fn, steps=self._spec.steps, name=self._spec.name,
        checkpoint_path=checkpoint, hooks=list(self._spec.hooks))
    self._previous = checkpoint
    final = (self._max_steps is not None
             and metrics["global_step"] >= self._max_steps)
    exports = [exporter.export(self._estimator,
                               os.path.join(self._estimator.model_dir,
                                            "export", exporter.name),
                               checkpoint, metrics, final)
               for exporter in self._spec.exporters]
    return metrics, exports


class _EvaluateAfterSaves(tf.compat.v1.train.CheckpointSaverListener):
  """TF's `_NewCheckpointListenerForEvaluate`: evaluates after a save (not
  the session's first) when `throttle_secs` have passed since the last
  evaluation, and at the end if the last step was not evaluated."""

  def __init__(self, evaluator: _Evaluator, throttle_secs: float,
               clock: Callable[[], float] = time.monotonic):
    self._evaluator = evaluator
    self._throttle_secs = throttle_secs
    self._clock = clock
    self._first = True
    self._last_time = None
    self._last_step = None
    self.eval_result = None
    self.export_results = None

  def begin(self):
    self._first = True

  def after_save(self, session, global_step_value):
    del session  # Unused.
    if self._first:
      self._first = False  # The save at the session's start.
      return None
    if (self._last_time is None
        or self._clock() - self._last_time >= self._throttle_secs):
      self._evaluate(global_step_value)
    else:
      logging.info("Skip the current checkpoint eval due to throttle secs "
                   "(%s secs).", self._throttle_secs)
    return None

  def end(self, session, global_step_value):
    del session  # Unused.
    if global_step_value != self._last_step:
      self._evaluate(global_step_value)

  def _evaluate(self, global_step_value):
    self._last_step = global_step_value
    self._last_time = self._clock()
    self.eval_result, self.export_results = (
        self._evaluator.evaluate_and_export())


def train_and_evaluate(estimator: Estimator, train_spec: TrainSpec,
                       eval_spec: EvalSpec):
  """Trains and evaluates locally, as TF's `train_and_evaluate` without a
  cluster (see the module docstring).

  Returns:
    (the last evaluation's metrics, its exporters' results), TF's pair.

  Raises:
    TypeError: `estimator` is not a tpu_harness.estimator Estimator or
      TPUEstimator, or a spec is not a TrainSpec / EvalSpec.
    RuntimeError: no new checkpoint to evaluate.
  """
  if not isinstance(estimator, Estimator):
    raise TypeError(f"`estimator` ({estimator!r}) must be a "
                    f"tpu_harness.estimator.Estimator or "
                    f"tpu_harness.estimator.tpu.TPUEstimator.")
  if not isinstance(train_spec, TrainSpec):
    raise TypeError(f"`train_spec` ({train_spec!r}) must be a "
                    f"tpu_harness.estimator.TrainSpec.")
  if not isinstance(eval_spec, EvalSpec):
    raise TypeError(f"`eval_spec` ({eval_spec!r}) must be a "
                    f"tpu_harness.estimator.EvalSpec.")
  config = estimator.config
  logging.info(
      "Start train and evaluate loop. The evaluate will happen after every "
      "checkpoint. Checkpoint frequency is determined based on RunConfig "
      "arguments: save_checkpoints_steps %s or save_checkpoints_secs %s.",
      config.save_checkpoints_steps, config.save_checkpoints_secs)
  listener = _EvaluateAfterSaves(
      _Evaluator(estimator, eval_spec, train_spec.max_steps),
      eval_spec.throttle_secs)
  estimator.train(train_spec.input_fn, hooks=list(train_spec.hooks),
                  max_steps=train_spec.max_steps,
                  saving_listeners=list(train_spec.saving_listeners)
                  + [listener])
  return listener.eval_result, listener.export_results


__all__: List[str] = ["EvalSpec", "TrainSpec", "train_and_evaluate"]

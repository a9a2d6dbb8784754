"""The estimator bench's baseline: `train()` and `evaluate()` as
TPUEstimator with use_tpu=False ran them, read from tensorflow_estimator's
source (26a7dc2: `Estimator.train`, `_train_with_estimator_spec`,
`_evaluate_build_graph`, `_evaluate_run`, `util.parse_input_fn_result`,
and TPUEstimator's CPU branches), for the same `model_fn` and `input_fn`
as the harness runs (see `scripts/bench/estimator.py`).

Evaluation goes through `tensorflow.python.training.evaluation`, the loop
Estimator's `evaluate()` ran: its `_evaluate_once` (an eval step counter
updated with the metrics, a FinalOpsHook reading their values) and its
`_StopAfterNEvalsHook`. Both are private TensorFlow names with no public
equivalent in TF 2.x; they are used here, in this module only, so that
the baseline runs the code Estimator ran rather than a copy that could
drift from it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Sequence

import tensorflow.compat.v1 as tf
# pylint: disable=g-direct-tensorflow-import
from tensorflow.python.training import evaluation
# pylint: enable=g-direct-tensorflow-import

from tpu_harness import estimator as tf_estimator


class _InitializeIterator(tf.train.SessionRunHook):
  """What Estimator did with an `input_fn`'s dataset: an initializable
  iterator, initialized by a hook of its own in a `Session.run` as the
  session starts (`util.parse_input_fn_result` and
  `_DatasetInitializerHook`)."""

  def __init__(self, dataset):
    self._iterator = tf.data.make_initializable_iterator(dataset)

  def get_next(self):
    return self._iterator.get_next()

  def after_create_session(self, session, coord):
    del coord  # Unused.
    session.run(self._iterator.initializer)


def train(model_fn: Callable, input_fn: Callable, params: Dict[str, Any],
          model_dir: str, steps: int,
          hooks: Sequence[tf.train.SessionRunHook] = ()) -> None:
  """`steps` steps from the checkpoint in `model_dir` (or from scratch):
  the input through an initializable iterator initialized by a hook as
  the session starts; a StopAtStepHook of `steps` steps, the NanTensorHook
  on the loss and a loss summary (written every 100 steps by the
  session's SummarySaverHook); the Estimator's Saver (sharded, built as
  the session is); checkpoints every 600 s; a steps/sec hook
  (TPUEstimator's ExamplesPerSecondHook is a StepCounterHook, and
  TPUEstimator turns Estimator's own logging hooks off); `hooks`; one
  `Session.run` of the train op and the loss per step in a
  MonitoredTrainingSession."""
  with tf.Graph().as_default():
    tf.train.get_or_create_global_step()
    data = _InitializeIterator(input_fn(params))
    features, labels = data.get_next()
    spec = model_fn(features, labels, tf_estimator.ModeKeys.TRAIN, params)
    tf.summary.scalar("loss", spec.loss)
    tf.add_to_collection(tf.GraphKeys.SAVERS, tf.train.Saver(
        sharded=True, max_to_keep=5, keep_checkpoint_every_n_hours=10000,
        defer_build=True, save_relative_paths=True))
    with tf.train.MonitoredTrainingSession(
        checkpoint_dir=model_dir, save_checkpoint_secs=600,
        log_step_count_steps=10**9,
        hooks=[data, tf.train.StopAtStepHook(num_steps=steps),
               tf.train.NanTensorHook(spec.loss), *hooks]) as session:
      while not session.should_stop():
        session.run([spec.train_op, spec.loss])


def evaluate(model_fn: Callable, input_fn: Callable, params: Dict[str, Any],
             model_dir: str, steps: int) -> None:
  """Evaluates the newest checkpoint in `model_dir` over `steps` steps:
  the input through an initializable iterator as in training; the metrics
  and the mean loss updated once per step by TensorFlow's own evaluation
  loop in a session restored from the checkpoint; the values, then the
  checkpoint's path, written as summaries at its step into
  `model_dir/eval_<steps>` (as `evaluate(name=)` names one) through
  FileWriterCache, whose writer, kept for the process, writes the graph
  first."""
  with tf.Graph().as_default():
    global_step = tf.train.get_or_create_global_step()
    data = _InitializeIterator(input_fn(params))
    features, labels = data.get_next()
    spec = model_fn(features, labels, tf_estimator.ModeKeys.EVAL, params)
    metrics = dict(spec.eval_metrics[0](*spec.eval_metrics[1]))
    metrics["loss"] = tf.metrics.mean(spec.loss)
    updates = tf.group(*[update for _, update in metrics.values()])
    values = {name: value for name, (value, _) in metrics.items()}
    values["global_step"] = global_step
    checkpoint = tf.train.latest_checkpoint(model_dir)
    stop = evaluation._StopAfterNEvalsHook(  # pylint: disable=protected-access
        num_evals=steps)
    results = evaluation._evaluate_once(  # pylint: disable=protected-access
        checkpoint_path=checkpoint, eval_ops=updates, final_ops=values,
        hooks=[data, stop])
    step = int(results.pop("global_step"))
    writer = tf.summary.FileWriterCache.get(
        os.path.join(model_dir, f"eval_{steps}"))
    writer.add_summary(tf.Summary(value=[
        tf.Summary.Value(tag=name, simple_value=float(value))
        for name, value in results.items()]), step)
    writer.flush()
    writer.add_summary(tf.Summary(value=[tf.Summary.Value(
        tag="checkpoint_path",
        tensor=tf.make_tensor_proto(checkpoint, dtype=tf.string))]), step)
    writer.flush()

"""tpu_harness.loops.hook_tensors: hooks that fetch tensors built in
model_fn (LoggingTensorHook({'loss': loss}), as unet3d's training_hooks)
see the last step of each loop."""

import dataclasses
import logging as std_logging

import pytest
import tensorflow as tf

import tpu_harness as th
from support.runner_fixtures import make_runner
from support.runner_models import linear_model_fn
from support.runner_models import train_input_fn


class _Recorder(tf.compat.v1.train.SessionRunHook):
  """Fetches `self.tensors[name]` (built in model_fn) every run."""

  def __init__(self, tensors):
    self.tensors = tensors
    self.seen = []

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self.tensors)

  def after_run(self, run_context, run_values):
    self.seen.append(run_values.results)


def _model_fn(recorders):
  def model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    step = tf.compat.v1.train.get_global_step().read_value()
    recorder = _Recorder({"step": step, "loss": spec.loss})
    recorders.append(recorder)
    logging_hook = tf.compat.v1.train.LoggingTensorHook(
        {"loss": spec.loss}, every_n_iter=1)
    hooks = [recorder, logging_hook]
    if mode == th.ModeKeys.TRAIN:
      hooks.append(tf.compat.v1.train.NanTensorHook(spec.loss))
      return dataclasses.replace(spec, training_hooks=hooks)
    return dataclasses.replace(spec, evaluation_hooks=hooks)
  return model_fn


@pytest.mark.parametrize("shards", [1, 2])
def test_hooks_fetch_model_fn_tensors_at_the_last_step_of_each_loop(
    tmp_path, shards, caplog):
  recorders = []
  runner = make_runner(tmp_path, ipl=5, shards=shards, save_steps=100)
  runner = th.Runner(_model_fn(recorders), runner.config,
                     train_batch_size=32, eval_batch_size=32)
  caplog.set_level(std_logging.INFO)
  runner.train(train_input_fn(), max_steps=15)
  # Reads of the global step in a step see it before the step: the last
  # step of the loops ending at 5, 10, 15 read 4, 9, 14.
  train = [r for r in recorders if r.seen]
  assert [int(seen["step"]) for seen in train[-1].seen] == [4, 9, 14]
  assert all(seen["loss"] >= 0 for seen in train[-1].seen)
  assert any(r.getMessage().startswith("loss = ") for r in caplog.records)
  runner.evaluate(train_input_fn(), steps=10)
  evaluation = [r for r in recorders if r.seen][-1]
  assert [int(seen["step"]) for seen in evaluation.seen] == [15, 15]

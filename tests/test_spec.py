"""check_spec: what model_fn must return, per mode."""

import dataclasses

import pytest
import tensorflow as tf

from tpu_harness import ModeKeys
from tpu_harness import ModelSpec
from tpu_harness.spec import check_spec


def _loss():
  return tf.constant(1.0)


def test_valid_specs_pass():
  train = ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op())
  assert check_spec(train, ModeKeys.TRAIN) is train
  evaluation = ModelSpec(mode=ModeKeys.EVAL, loss=_loss(), eval_metrics=(
      lambda x: {}, [tf.zeros([2])]))
  assert check_spec(evaluation, ModeKeys.EVAL) is evaluation
  predict = ModelSpec(mode=ModeKeys.PREDICT,
                      predictions={"p": tf.zeros([4, 2])})
  assert check_spec(predict, ModeKeys.PREDICT) is predict
  single = ModelSpec(mode=ModeKeys.PREDICT, predictions=tf.zeros([4, 2]))
  assert check_spec(single, ModeKeys.PREDICT) is single
  with_call = ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                        host_call=(lambda *t: [], [tf.zeros([1])] * 3))
  assert check_spec(with_call, ModeKeys.TRAIN) is with_call


def test_fields_follow_tpu_estimator_spec_order():
  # TPUEstimatorSpec(mode, predictions, loss, train_op, eval_metrics,
  # export_outputs, scaffold_fn, host_call, training_hooks,
  # evaluation_hooks, prediction_hooks), positionally too.
  names = [f.name for f in dataclasses.fields(ModelSpec)]
  assert names == ["mode", "predictions", "loss", "train_op", "eval_metrics",
                   "export_outputs", "scaffold_fn", "host_call",
                   "training_hooks", "evaluation_hooks", "prediction_hooks"]
  hook = tf.compat.v1.train.SessionRunHook()
  spec = ModelSpec(ModeKeys.TRAIN, None, _loss(), tf.no_op(),
                   training_hooks=[hook])
  assert spec.training_hooks == (hook,) and spec.hooks_for_mode == (hook,)
  with pytest.raises(TypeError, match=r"`evaluation_hooks\[0\]` \('x'\) must "
                     r"be a tf.compat.v1.train.SessionRunHook"):
    ModelSpec(ModeKeys.EVAL, evaluation_hooks=["x"])


@pytest.mark.parametrize("make,mode,message", [
    (lambda: {"loss": 1}, ModeKeys.TRAIN, "must return a tpu_harness."
     "ModelSpec (or TPUEstimatorSpec), got dict"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=None),
     ModeKeys.TRAIN, "must return a `train_op`"),
    (lambda: ModelSpec(mode=ModeKeys.EVAL, loss=None), ModeKeys.EVAL,
     "scalar `loss` tensor in mode 'eval'; got None"),
    (lambda: ModelSpec(mode=ModeKeys.EVAL, loss=_loss(),
                       eval_metrics=("fn", [])), ModeKeys.EVAL,
     "`eval_metrics` must be a (fn, tensors) pair"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                       host_call=(lambda x, y: [], [tf.zeros([1])])),
     ModeKeys.TRAIN, "`host_call` passes 1 tensors to <lambda>, which takes 2 "
     "arguments (x, y)"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                       host_call=(lambda: [], tf.zeros([1]))),
     ModeKeys.TRAIN, "`host_call` must be a (fn, tensors) pair with tensors a "
     "dict or list"),
    (lambda: ModelSpec(mode=ModeKeys.EVAL, loss=_loss(),
                       eval_metrics=(lambda labels: {}, [])), ModeKeys.EVAL,
     "`eval_metrics` passes 0 tensors to <lambda>, which takes 1 arguments "
     "(labels)"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                       scaffold_fn="scaffold"),
     ModeKeys.TRAIN, "`scaffold_fn` ('scaffold') must be a function"),
    (lambda: ModelSpec(mode=ModeKeys.PREDICT, predictions={}),
     ModeKeys.PREDICT, "a tensor or a non-empty dict of tensors, each with a "
     "batch axis"),
    (lambda: ModelSpec(mode=ModeKeys.PREDICT,
                       predictions={"p": tf.constant(1.0)}),
     ModeKeys.PREDICT, "with a batch axis"),
    (lambda: ModelSpec(mode=ModeKeys.PREDICT, predictions={"p": _loss()}),
     ModeKeys.TRAIN, "mode 'infer' when called with mode 'train'"),
])
def test_bad_specs(make, mode, message):
  with pytest.raises((TypeError, ValueError)) as info:
    check_spec(make(), mode)
  assert message in str(info.value)

"""check_spec: what model_fn must return, per mode."""

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


@pytest.mark.parametrize("make,mode,message", [
    (lambda: {"loss": 1}, ModeKeys.TRAIN, "must return a tpu_harness."
     "ModelSpec, got dict"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=None),
     ModeKeys.TRAIN, "must return a `train_op`"),
    (lambda: ModelSpec(mode=ModeKeys.EVAL, loss=None), ModeKeys.EVAL,
     "scalar `loss` tensor in mode 'eval'; got None"),
    (lambda: ModelSpec(mode=ModeKeys.EVAL, loss=_loss(),
                       eval_metrics=("fn", [])), ModeKeys.EVAL,
     "`eval_metrics` must be a (fn, tensors) pair"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                       host_call=(lambda x: {}, [tf.zeros([1])])),
     ModeKeys.TRAIN, "`host_call` tensors must be a dict"),
    (lambda: ModelSpec(mode=ModeKeys.TRAIN, loss=_loss(), train_op=tf.no_op(),
                       host_call=(lambda loss: {}, {"loss": _loss()})),
     ModeKeys.TRAIN, "`host_call` tensors may not be named 'loss'"),
    (lambda: ModelSpec(mode=ModeKeys.PREDICT, predictions={}),
     ModeKeys.PREDICT, "non-empty dict of tensors with a batch axis"),
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

"""estimator.export: receivers and outputs become TF's SignatureDefs."""

import logging as std_logging

import pytest
import tensorflow as tf

from tpu_harness.estimator import export


def test_receivers_wrap_single_tensors_as_tf_did():
  images = tf.compat.v1.placeholder(tf.float32, [None, 4])
  receiver = export.ServingInputReceiver(images, images)
  assert receiver.features == {"feature": images}
  assert receiver.receiver_tensors == {"input": images}
  tensor_receiver = export.TensorServingInputReceiver(images, images)
  assert tensor_receiver.features is images
  with pytest.raises(NotImplementedError,
                     match="receiver_tensors_alternatives"):
    export.ServingInputReceiver(images, images, {"other": {"x": images}})


def test_default_signature_rules():
  x = tf.compat.v1.placeholder(tf.float32, [None, 4])
  y = tf.reduce_sum(x, axis=1)
  inputs = {"x": x}
  # No export_outputs: the predictions, as the default signature.
  assert sorted(export.signature_defs(None, {"y": y}, inputs)) == [
      "serving_default"]
  # One output: also the default.
  one = export.signature_defs({"sum": export.PredictOutput(y)}, None, inputs)
  assert sorted(one) == ["serving_default", "sum"]
  assert list(one["sum"].outputs) == ["output"]
  with pytest.raises(ValueError, match="none is 'serving_default'"):
    export.signature_defs({"a": export.PredictOutput(y),
                           "b": export.PredictOutput(y)}, None, inputs)
  with pytest.raises(ValueError, match=r"`export_outputs\['a'\]` \('y'\) "
                     "must be a tpu_harness.estimator.export"):
    export.signature_defs({"a": "y"}, None, inputs)


def test_classification_needs_a_serialized_examples_input(caplog):
  x = tf.compat.v1.placeholder(tf.float32, [None, 4])
  scores = tf.nn.softmax(x)
  outputs = {"serving_default": export.PredictOutput(scores),
             "classes": export.ClassificationOutput(scores=scores)}
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    signatures = export.signature_defs(outputs, None, {"x": x})
  assert sorted(signatures) == ["serving_default"]
  assert any("Signature 'classes' is left out" in r.getMessage()
             for r in caplog.records)
  examples = tf.compat.v1.placeholder(tf.string, [None])
  kept = export.signature_defs(
      {"serving_default": export.ClassificationOutput(scores=scores),
       "value": export.RegressionOutput(tf.reduce_sum(x, 1))}, None,
      {"examples": examples})
  assert sorted(kept) == ["serving_default", "value"]


@pytest.mark.parametrize("make,message", [
    (lambda: export.ClassificationOutput(), "At least one of"),
    (lambda: export.ClassificationOutput(classes=tf.constant([1])),
     "`classes`"),
    (lambda: export.RegressionOutput(tf.constant([1])), "`value`"),
    (lambda: export.PredictOutput({}), "`outputs` ({})"),
])
def test_bad_outputs(make, message):
  with pytest.raises(ValueError) as info:
    make()
  assert message in str(info.value)

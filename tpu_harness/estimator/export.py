"""`tf_estimator.export`: what a model serves, and what it is fed.

    ServingInputReceiver(features, receiver_tensors)
    TensorServingInputReceiver(features, receiver_tensors)
    PredictOutput(outputs), ClassificationOutput(scores, classes),
    RegressionOutput(value)

Each output turns into a SignatureDef with TF's public
`tf.compat.v1.saved_model.*_signature_def` builders. As in TF, a
ClassificationOutput or RegressionOutput needs a single string input of
serialized tf.Examples; with other inputs its signature is left out of the
export, with a warning.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from absl import logging
import tensorflow as tf

__all__ = ["ClassificationOutput", "ExportOutput", "PredictOutput",
           "RegressionOutput", "ServingInputReceiver",
           "TensorServingInputReceiver"]

TensorOrDict = Union[tf.Tensor, Mapping[str, tf.Tensor]]


def _as_dict(name: str, value: Any, default_key: str) -> Dict[str, tf.Tensor]:
  """A tensor becomes {default_key: tensor}; a dict is checked."""
  if isinstance(value, (tf.Tensor, tf.SparseTensor)):
    return {default_key: value}
  if not isinstance(value, Mapping) or not value:
    raise ValueError(f"`{name}` ({value!r}) must be a tensor or a non-empty "
                     f"dict of tensors.")
  for key, tensor in value.items():
    if not isinstance(key, str):
      raise ValueError(f"`{name}` keys must be strings; got {key!r}.")
    if not isinstance(tensor, (tf.Tensor, tf.SparseTensor)):
      raise ValueError(f"`{name}[{key!r}]` ({tensor!r}) must be a tensor.")
  return dict(value)


class ServingInputReceiver:
  """What `serving_input_receiver_fn` returns.

  Attributes:
    features: what `model_fn` gets; a single tensor becomes
      `{'feature': tensor}`, as in TF.
    receiver_tensors: the serving inputs (placeholders); a single tensor
      becomes `{'input': tensor}`.
    receiver_tensors_alternatives: more input signatures; not supported.
  """

  def __init__(self, features: TensorOrDict,
               receiver_tensors: TensorOrDict,
               receiver_tensors_alternatives: Optional[Mapping] = None):
    if receiver_tensors_alternatives:
      raise NotImplementedError(
          "`receiver_tensors_alternatives` is not supported by "
          "tpu_harness's export; export one input signature.")
    self.features = _as_dict("features", features, "feature")
    self.receiver_tensors = _as_dict("receiver_tensors", receiver_tensors,
                                     "input")
    self.receiver_tensors_alternatives = None


class TensorServingInputReceiver(ServingInputReceiver):
  """A ServingInputReceiver whose `features` reach `model_fn` as the one
  tensor they are, not wrapped in a dict (TF's)."""

  def __init__(self, features: tf.Tensor, receiver_tensors: TensorOrDict,
               receiver_tensors_alternatives: Optional[Mapping] = None):
    if not isinstance(features, (tf.Tensor, tf.SparseTensor)):
      raise ValueError(f"`features` ({features!r}) must be a single tensor; "
                       f"use ServingInputReceiver for a dict.")
    super().__init__({"feature": features}, receiver_tensors,
                     receiver_tensors_alternatives)
    self.features = features


class ExportOutput:
  """One served output; `as_signature_def` builds its SignatureDef."""

  def as_signature_def(self, receiver_tensors: Mapping[str, tf.Tensor]):
    raise NotImplementedError


class PredictOutput(ExportOutput):
  """Serves `outputs` (a tensor, or a dict of tensors) as they are."""

  def __init__(self, outputs: TensorOrDict):
    self.outputs = _as_dict("outputs", outputs, "output")

  def as_signature_def(self, receiver_tensors):
    return tf.compat.v1.saved_model.predict_signature_def(
        dict(receiver_tensors), self.outputs)


def _examples_input(kind: str, receiver_tensors) -> tf.Tensor:
  if len(receiver_tensors) != 1:
    raise ValueError(f"{kind} can only be served from one string input of "
                     f"serialized tf.Examples; got {sorted(receiver_tensors)}.")
  (tensor,) = receiver_tensors.values()
  if tensor.dtype != tf.string:
    raise ValueError(f"{kind} can only be served from a string input of "
                     f"serialized tf.Examples; got {tensor.dtype.name}.")
  return tensor


class ClassificationOutput(ExportOutput):
  """Serves class scores and/or class names."""

  def __init__(self, scores: Optional[tf.Tensor] = None,
               classes: Optional[tf.Tensor] = None):
    if scores is None and classes is None:
      raise ValueError("At least one of `scores` and `classes` must be set.")
    if scores is not None and not (isinstance(scores, tf.Tensor)
                                   and scores.dtype.is_floating):
      raise ValueError(f"`scores` ({scores!r}) must be a float tensor.")
    if classes is not None and not (isinstance(classes, tf.Tensor)
                                    and classes.dtype == tf.string):
      raise ValueError(f"`classes` ({classes!r}) must be a string tensor.")
    self.scores, self.classes = scores, classes

  def as_signature_def(self, receiver_tensors):
    return tf.compat.v1.saved_model.classification_signature_def(
        _examples_input("ClassificationOutput", receiver_tensors),
        self.classes, self.scores)


class RegressionOutput(ExportOutput):
  """Serves one float value per example."""

  def __init__(self, value: tf.Tensor):
    if not (isinstance(value, tf.Tensor) and value.dtype.is_floating):
      raise ValueError(f"`value` ({value!r}) must be a float tensor.")
    self.value = value

  def as_signature_def(self, receiver_tensors):
    return tf.compat.v1.saved_model.regression_signature_def(
        _examples_input("RegressionOutput", receiver_tensors), self.value)


DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY


def signature_defs(export_outputs: Optional[Mapping[str, ExportOutput]],
                   predictions: TensorOrDict,
                   receiver_tensors: Mapping[str, tf.Tensor]) -> Dict:
  """The SignatureDefs to export, as TF's Estimator chose them: the
  predictions as a PredictOutput when there are no export_outputs; a single
  export output is also the default signature.

  Raises:
    ValueError: several export outputs and none named 'serving_default';
      an export output of the wrong type.
  """
  outputs = dict(export_outputs or {})
  if not outputs:
    outputs = {DEFAULT_SIGNATURE: PredictOutput(predictions)}
  for key, output in outputs.items():
    if not isinstance(output, ExportOutput):
      raise ValueError(
          f"`export_outputs[{key!r}]` ({output!r}) must be a "
          f"tpu_harness.estimator.export PredictOutput, ClassificationOutput "
          f"or RegressionOutput.")
  if DEFAULT_SIGNATURE not in outputs:
    if len(outputs) != 1:
      raise ValueError(
          f"Several `export_outputs` ({sorted(outputs)}) and none is "
          f"{DEFAULT_SIGNATURE!r}: name the one to serve by default so.")
    outputs[DEFAULT_SIGNATURE] = next(iter(outputs.values()))
  signatures = {}
  for key, output in outputs.items():
    try:
      signatures[key] = output.as_signature_def(receiver_tensors)
    except ValueError as error:
      logging.warning("Signature %r is left out of the export: %s", key,
                      error)
  if not signatures:
    raise ValueError("No signature of `export_outputs` fits the serving "
                     "inputs; see the warnings above.")
  return signatures

"""Writing a SavedModel of `model_fn`'s PREDICT graph from a checkpoint.

As TF's Estimator and TPUEstimator did: the serving inputs from
`serving_input_receiver_fn`, `model_fn` called on their features in PREDICT
mode (outside any device loop), the signatures from its `export_outputs` (or
its predictions), the variables restored from the checkpoint through the
saver of its Scaffold when it gives one (else `Saver(sharded=True)`), and
written with that same saver, so that the SavedModel restores through it too
(e.g. moving averages, saved and served under their checkpoint names, in
place of the weights); `<export_dir_base>/<unix seconds>`, written to a
`temp-<seconds>` directory first and renamed when complete.

With `export_to_tpu`, a second metagraph tagged `['serve', 'tpu']` as
TPUEstimator wrote it (api version 1): `model_fn` called inside
`tf.compat.v1.tpu.rewrite`, in a function run by `TPUPartitionedCall` on the
core `TPUOrdinalSelector` picks; its signatures name that call's outputs. It
shares the variables saved with the `['serve']` metagraph (or saves them,
without `export_to_cpu`). It is built and written on any machine; only a TPU
runs it.
"""

from __future__ import annotations

import collections
import time
from typing import Callable, Mapping, Optional

from absl import logging
import tensorflow as tf

from hooks import paths
from tpu_harness import _tf_internals
from tpu_harness import spec as spec_lib
from tpu_harness._run import restore
from tpu_harness.estimator import export as export_lib

SERVING_TAGS = [tf.saved_model.SERVING]
TPU_SERVING_TAGS = [tf.saved_model.SERVING, tf.saved_model.TPU]
# The key of a predictions tensor that is not a dict (TPUEstimator's).
_SINGLE_PREDICTION = "_key_when_predictions_is_a_tensor"


def export_saved_model(*, export_dir_base: str,
                       serving_input_receiver_fn: Callable[[], object],
                       model_fn: Callable[[Mapping[str, tf.Tensor]], object],
                       checkpoint: str,
                       assets_extra: Optional[Mapping[str, str]] = None,
                       as_text: bool = False,
                       export_to_cpu: bool = True,
                       tpu_model_fn: Optional[Callable] = None,
                       rewrite_for_tpu: bool = True) -> bytes:
  """Writes the SavedModel; returns its directory (bytes, as TF did).

  Args:
    export_dir_base: the directory that gets a timestamped subdirectory.
    serving_input_receiver_fn: returns an `export.ServingInputReceiver`.
    model_fn: features -> the PREDICT ModelSpec, for the `['serve']`
      metagraph.
    checkpoint: the checkpoint to export.
    assets_extra: {destination under assets.extra: source file}.
    as_text: write saved_model.pbtxt instead of saved_model.pb.
    export_to_cpu: write the `['serve']` metagraph.
    tpu_model_fn: features -> the PREDICT ModelSpec, for the
      `['serve', 'tpu']` metagraph; None: none is written.
    rewrite_for_tpu: call `tpu_model_fn` inside `tpu.rewrite` and
      `TPUPartitionedCall` (api version 1); False: call it as it is, in a
      TPU inference context, where it rewrites itself (version 2).

  Raises:
    TypeError: `serving_input_receiver_fn` returned something else.
    ValueError: no signature fits the serving inputs; nothing to export; a
      variable the saver restores is not in the checkpoint.
  """
  if not export_to_cpu and tpu_model_fn is None:
    raise ValueError("One of export_to_cpu and export_to_tpu must be true.")
  export_dir, temp_dir = _new_export_dir(export_dir_base)
  builder = tf.compat.v1.saved_model.Builder(temp_dir)
  save_variables = True
  if export_to_cpu:
    _add_meta_graph(builder, serving_input_receiver_fn, model_fn, checkpoint,
                    SERVING_TAGS, save_variables=True)
    save_variables = False
  if tpu_model_fn is not None:
    _add_meta_graph(builder, serving_input_receiver_fn, tpu_model_fn,
                    checkpoint, TPU_SERVING_TAGS,
                    save_variables=save_variables,
                    rewrite=rewrite_for_tpu, tpu_context=True)
  builder.save(as_text=as_text)
  for destination, source in (assets_extra or {}).items():
    target = paths.join(paths.join(temp_dir, "assets.extra"), destination)
    tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
    tf.io.gfile.copy(source, target, overwrite=True)
  tf.io.gfile.rename(temp_dir, export_dir)
  logging.info("SavedModel of %s written to %s.", checkpoint, export_dir)
  return export_dir.encode()


def _add_meta_graph(builder, serving_input_receiver_fn, model_fn, checkpoint,
                    tags, *, save_variables: bool, rewrite: bool = False,
                    tpu_context: bool = False) -> None:
  """One metagraph, in a graph of its own (Estimator's
  `_add_meta_graph_for_mode`); the variables are restored and saved only
  with `save_variables` (TPUEstimator's `check_variables` for the TPU
  metagraph)."""
  with tf.Graph().as_default() as graph:
    spec_lib.create_global_step()
    receiver = serving_input_receiver_fn()
    if not isinstance(receiver, export_lib.ServingInputReceiver):
      raise TypeError(
          f"`serving_input_receiver_fn` must return a "
          f"tpu_harness.estimator.export.ServingInputReceiver, got "
          f"{receiver!r}.")
    if rewrite:
      spec, predictions, export_outputs = _rewritten_for_tpu(
          model_fn, receiver.features)
    elif tpu_context:
      with _tf_internals.tpu_inference_context():
        spec = model_fn(receiver.features)
      predictions, export_outputs = spec.predictions, spec.export_outputs
    else:
      spec = model_fn(receiver.features)
      predictions, export_outputs = spec.predictions, spec.export_outputs
    signatures = export_lib.signature_defs(
        export_outputs, predictions, receiver.receiver_tensors)
    # In this graph, outside any TPU function: the saver's ops and the
    # variables it maps are the graph's own.
    scaffold, _ = restore.scaffold_for(
        spec, lambda: tf.compat.v1.train.Saver(sharded=True))
    local_init_op = scaffold.local_init_op
    if local_init_op is None:
      local_init_op = tf.compat.v1.train.Scaffold.default_local_init_op()
    meta_graph_kwargs = dict(
        tags=tags, signature_def_map=signatures,
        assets_collection=graph.get_collection(
            tf.compat.v1.GraphKeys.ASSET_FILEPATHS),
        main_op=local_init_op, saver=scaffold.saver, strip_default_attrs=True)
    if not save_variables:
      builder.add_meta_graph(**meta_graph_kwargs)
      return
    # Only what restoring and saving run is placed: a TPU metagraph's TPU
    # ops have no kernel here.
    config = tf.compat.v1.ConfigProto(
        graph_options=tf.compat.v1.GraphOptions(place_pruned_graph=True))
    with tf.compat.v1.Session(config=config) as session:
      try:
        scaffold.saver.restore(session, checkpoint)
      except tf.errors.NotFoundError as error:
        raise ValueError(
            f"Could not restore from checkpoint {checkpoint} all the "
            f"variables the PREDICT graph's saver restores; make sure "
            f"model_fn does not expect variables that were not saved in "
            f"it: {error.message}") from error
      builder.add_meta_graph_and_variables(session, **meta_graph_kwargs)


def _rewritten_for_tpu(model_fn, features):
  """`model_fn(features)` as TPUEstimator's `model_fn_inference_on_tpu`
  built it: inside `tpu.rewrite`, in a `Defun` called by
  `TPUPartitionedCall` on the core `tpu_ordinal_selector()` gives.

  Returns:
    (the spec, its predictions and export outputs with the call's outputs
    in place of the TPU tensors).
  """
  captured = {}

  def tpu_computation():
    spec = model_fn(features)
    predictions = spec.predictions
    if isinstance(predictions, Mapping):
      predictions = collections.OrderedDict(predictions)
    else:
      predictions = collections.OrderedDict(
          [(_SINGLE_PREDICTION, predictions)])
    outputs = collections.OrderedDict(
        (key, _output_tensors(output))
        for key, output in (spec.export_outputs or {}).items())
    output_tensors = tf.nest.flatten(outputs)
    captured.update(spec=spec, predictions=predictions, outputs=outputs,
                    output_tensors=output_tensors)
    return (list(predictions.values())
            + [t for t in output_tensors if t is not None])

  tensors = _tf_internals.tpu_partitioned_call_of_rewrite(tpu_computation)
  spec = captured["spec"]
  predictions = collections.OrderedDict(
      zip(captured["predictions"], tensors[:len(captured["predictions"])]))
  rest = tensors[len(captured["predictions"]):]
  # None (a ClassificationOutput without scores or classes) stays None.
  flat = [None if t is None else rest.pop(0)
          for t in captured["output_tensors"]]
  outputs = tf.nest.pack_sequence_as(captured["outputs"], flat)
  export_outputs = None
  if spec.export_outputs:
    export_outputs = collections.OrderedDict(
        (key, _with_tensors(spec.export_outputs[key], tensors_))
        for key, tensors_ in outputs.items())
  if list(predictions) == [_SINGLE_PREDICTION]:
    predictions = predictions[_SINGLE_PREDICTION]
  return spec, predictions, export_outputs


def _output_tensors(output):
  """The tensors of an export output, in the order `_with_tensors` takes."""
  if isinstance(output, export_lib.ClassificationOutput):
    return [output.scores, output.classes]
  if isinstance(output, export_lib.RegressionOutput):
    return [output.value]
  if isinstance(output, export_lib.PredictOutput):
    return list(output.outputs.values())
  raise ValueError(
      f"`export_outputs` values must be tpu_harness.estimator.export "
      f"PredictOutput, ClassificationOutput or RegressionOutput; got "
      f"{output!r}.")


def _with_tensors(output, tensors):
  """`output` again, with `tensors` in place of its own."""
  if isinstance(output, export_lib.ClassificationOutput):
    return export_lib.ClassificationOutput(*tensors)
  if isinstance(output, export_lib.RegressionOutput):
    return export_lib.RegressionOutput(*tensors)
  return export_lib.PredictOutput(dict(zip(output.outputs, tensors)))


def _new_export_dir(base: str):
  """(`base/<seconds>`, `base/temp-<seconds>`), not yet existing."""
  seconds = int(time.time())
  while True:
    final = paths.join(base, str(seconds))
    temp = paths.join(base, f"temp-{seconds}")
    if not tf.io.gfile.exists(final) and not tf.io.gfile.exists(temp):
      tf.io.gfile.makedirs(base)
      return final, temp
    seconds += 1

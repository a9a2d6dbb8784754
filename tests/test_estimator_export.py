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


# ----------------------------------------------------------------------------
# export_saved_model as TPUEstimator wrote it. The program below is written as
# TPUEstimator programs are (mnasnet's `--export_moving_average`): the PREDICT
# spec's scaffold_fn returns a Saver mapping the moving averages of the
# trainable variables (and nothing else: not the global step) onto them.

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import subprocess  # pylint: disable=g-import-not-at-top,wrong-import-position
import sys  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from tensorflow.python.saved_model import loader_impl  # pylint: disable=g-import-not-at-top,wrong-import-position
from tpu_harness import estimator as tf_estimator  # pylint: disable=g-import-not-at-top,wrong-import-position

FEATURES, CLASSES, DECAY = 6, 3, 0.5


def _examples(n, seed):
  rng = np.random.RandomState(seed)
  x = rng.normal(size=(n, FEATURES)).astype(np.float32)
  return x, (np.abs(x[:, :CLASSES]).argmax(axis=1)).astype(np.int32)


def _input_fn(params):
  x, y = _examples(64, 0)
  return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).repeat().batch(
      params["batch_size"], drop_remainder=True)


def _serving_input_receiver_fn():
  x = tf.compat.v1.placeholder(tf.float32, [None, FEATURES], name="x")
  return tf_estimator.export.ServingInputReceiver({"x": x}, {"x": x})


def _ema_model_fn(features, labels, mode, params):
  v1 = tf.compat.v1
  logits = v1.layers.dense(features["x"], CLASSES, name="logits")
  if mode == tf_estimator.ModeKeys.PREDICT:
    scaffold_fn = None
    if params["export_moving_average"]:
      ema = v1.train.ExponentialMovingAverage(DECAY)
      averaged = {ema.average_name(v): v for v in v1.trainable_variables()}

      def averaged_scaffold():
        return v1.train.Scaffold(saver=v1.train.Saver(averaged))
      scaffold_fn = averaged_scaffold
    probabilities = tf.nn.softmax(logits)
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode, predictions={"probabilities": probabilities},
        export_outputs={"serving_default": tf_estimator.export.PredictOutput(
            {"probabilities": probabilities}),
                        "logits": tf_estimator.export.PredictOutput(logits)},
        scaffold_fn=scaffold_fn)
  loss = v1.losses.sparse_softmax_cross_entropy(labels, logits)
  optimizer = v1.train.GradientDescentOptimizer(0.5)
  if params["use_tpu"]:
    optimizer = v1.tpu.CrossShardOptimizer(optimizer)
  train_op = optimizer.minimize(loss, v1.train.get_global_step())
  with tf.control_dependencies([train_op]):
    train_op = v1.train.ExponentialMovingAverage(DECAY).apply(
        v1.trainable_variables())
  return tf_estimator.tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op)


def _trained(model_dir, **kwargs):
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=_ema_model_fn, use_tpu=False, train_batch_size=8,
      config=tf_estimator.tpu.RunConfig(
          model_dir=model_dir,
          tpu_config=tf_estimator.tpu.TPUConfig(iterations_per_loop=2)),
      params={"export_moving_average": True}, **kwargs)
  estimator.train(_input_fn, max_steps=6)
  return estimator


def _averaged_logits(checkpoint, x, suffix="/ExponentialMovingAverage"):
  reader = tf.train.load_checkpoint(checkpoint)
  return (x @ reader.get_tensor("logits/kernel" + suffix)
          + reader.get_tensor("logits/bias" + suffix))


def _serve_in_a_fresh_process(export_dir, x, tags=None):
  code = (
      "import json, sys\n"
      "import numpy as np, tensorflow as tf\n"
      "x = np.array(json.loads(sys.stdin.read()), np.float32)\n"
      "tags = json.loads(sys.argv[2])\n"
      "model = tf.saved_model.load(sys.argv[1], tags=tags)\n"
      "out = model.signatures['logits'](x=tf.constant(x))\n"
      "print(json.dumps({'signatures': sorted(model.signatures),\n"
      "                  'logits': out['output'].numpy().tolist()}))\n")
  result = subprocess.run(
      [sys.executable, "-c", code, export_dir, json.dumps(tags)],
      input=json.dumps(x.tolist()), capture_output=True, text=True,
      timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_scaffold_saver_is_the_saver_the_saved_model_restores_through(
    tmp_path):
  estimator = _trained(str(tmp_path / "model"), export_to_tpu=False)
  checkpoint = estimator.latest_checkpoint()
  export_dir = estimator.export_saved_model(
      str(tmp_path / "export"), _serving_input_receiver_fn).decode()
  # Saved with the scaffold's saver: under the moving averages' names, and
  # only what that saver maps (not the global step).
  saved = sorted(name for name, _ in tf.train.list_variables(
      export_dir + "/variables/variables"))
  assert saved == ["logits/bias/ExponentialMovingAverage",
                   "logits/kernel/ExponentialMovingAverage"]
  x, _ = _examples(5, 1)
  served = _serve_in_a_fresh_process(export_dir, x)
  assert served["signatures"] == ["logits", "serving_default"]
  averaged = _averaged_logits(checkpoint, x)
  np.testing.assert_allclose(served["logits"], averaged, rtol=1e-5,
                             atol=1e-5)
  # The moving averages, not the weights.
  assert not np.allclose(_averaged_logits(checkpoint, x, ""), averaged,
                         atol=1e-3)


def _meta_graphs(export_dir):
  """{tags: the metagraph}, read from saved_model.pb without running it."""
  loader = loader_impl.SavedModelLoader(export_dir)
  return {tuple(sorted(m.meta_info_def.tags)): m
          for m in loader.saved_model.meta_graphs}


def test_export_to_tpu_writes_a_serving_and_a_tpu_serving_metagraph(
    tmp_path):
  # export_to_tpu=True is TPUEstimator's default: here on a CPU-trained
  # model, as TPUEstimator wrote it there too.
  estimator = _trained(str(tmp_path / "model"))
  checkpoint = estimator.latest_checkpoint()
  export_dir = estimator.export_saved_model(
      str(tmp_path / "export"), _serving_input_receiver_fn).decode()
  graphs = _meta_graphs(export_dir)
  assert sorted(graphs) == [("serve",), ("serve", "tpu")]
  for meta_graph in graphs.values():
    assert sorted(meta_graph.signature_def) == ["logits", "serving_default"]
    assert list(meta_graph.signature_def["logits"].inputs) == ["x"]
    assert list(meta_graph.signature_def["serving_default"].outputs) == [
        "probabilities"]
  # The TPU metagraph serves the outputs of the TPU-rewritten function,
  # called on the core TPUOrdinalSelector picks; its function holds the
  # replicated computation.
  tpu_graph = graphs[("serve", "tpu")]
  ops = {node.op for node in tpu_graph.graph_def.node}
  assert {"TPUPartitionedCall", "TPUOrdinalSelector"} <= ops
  assert tpu_graph.signature_def["logits"].outputs["output"].name.startswith(
      "TPUPartitionedCall")
  function_ops = {node.op for f in tpu_graph.graph_def.library.function
                  for node in f.node_def}
  assert "TPUReplicateMetadata" in function_ops
  assert "TPUPartitionedCall" not in {
      node.op for node in graphs[("serve",)].graph_def.node}

  # Both load in a graph; ['serve'] also restores and runs here.
  with tf.Graph().as_default() as graph:
    saver, _ = loader_impl.SavedModelLoader(export_dir).load_graph(
        graph, ["serve", "tpu"])
    for signature in tpu_graph.signature_def.values():
      for tensor in list(signature.inputs.values()) + list(
          signature.outputs.values()):
        graph.get_tensor_by_name(tensor.name)
    # Its saver restores the variables the ['serve'] metagraph saved, through
    # the scaffold's saver: the moving averages.
    graph.get_operation_by_name(saver.saver_def.restore_op_name)
  # It loads (restoring its variables) in a session that places only what
  # it runs: its TPU ops have no kernel here.
  reader = tf.train.load_checkpoint(checkpoint)
  np.testing.assert_allclose(
      _tpu_metagraph_kernel(export_dir),
      reader.get_tensor("logits/kernel/ExponentialMovingAverage"))
  x, _ = _examples(5, 1)
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(
        session, ["serve"], export_dir)
    signature = meta_graph.signature_def["logits"]
    logits = session.run(signature.outputs["output"].name,
                         {signature.inputs["x"].name: x})
  np.testing.assert_allclose(logits, _averaged_logits(checkpoint, x),
                             rtol=1e-5, atol=1e-5)
  served = _serve_in_a_fresh_process(export_dir, x, tags=["serve"])
  np.testing.assert_allclose(served["logits"], logits, rtol=1e-5, atol=1e-5)


def _tpu_metagraph_kernel(export_dir):
  config = tf.compat.v1.ConfigProto(
      graph_options=tf.compat.v1.GraphOptions(place_pruned_graph=True))
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(
      config=config) as session:
    meta_graph = tf.compat.v1.saved_model.loader.load(
        session, ["serve", "tpu"], export_dir)
    assert sorted(meta_graph.signature_def) == ["logits", "serving_default"]
    (kernel,) = [v for v in graph.get_collection("variables")
                 if v.op.name == "logits/kernel"]
    return session.run(kernel)


def test_export_to_tpu_only_saves_the_variables_with_the_tpu_metagraph(
    tmp_path):
  estimator = _trained(str(tmp_path / "model"), export_to_cpu=False)
  export_dir = estimator.export_saved_model(
      str(tmp_path / "export"), _serving_input_receiver_fn).decode()
  assert sorted(_meta_graphs(export_dir)) == [("serve", "tpu")]
  assert sorted(name for name, _ in tf.train.list_variables(
      export_dir + "/variables/variables")) == [
          "logits/bias/ExponentialMovingAverage",
          "logits/kernel/ExponentialMovingAverage"]
  reader = tf.train.load_checkpoint(estimator.latest_checkpoint())
  np.testing.assert_allclose(
      _tpu_metagraph_kernel(export_dir),
      reader.get_tensor("logits/kernel/ExponentialMovingAverage"))


@pytest.mark.parametrize("version,use_tpu", [
    (tf_estimator.tpu.ExportSavedModelApiVersion.V1, [False, False]),
    (tf_estimator.tpu.ExportSavedModelApiVersion.V2, [False, True])])
def test_export_saved_model_api_versions(tmp_path, version, use_tpu):
  """Version 1: TPUEstimator rewrote model_fn for the TPU (and passed
  params['use_tpu'] False both times); version 2: model_fn, told use_tpu,
  rewrites itself."""
  seen = []

  def model_fn(features, labels, mode, params):
    if mode != tf_estimator.ModeKeys.PREDICT:
      return _ema_model_fn(features, labels, mode, params)
    seen.append(params["use_tpu"])
    if not params["use_tpu"]:
      return _ema_model_fn(features, labels, mode, params)
    specs = []

    def computation():
      specs.append(_ema_model_fn(features, labels, mode, params))
      return [specs[0].predictions["probabilities"]]

    (probabilities,) = tf.compat.v1.tpu.rewrite(computation)
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode, predictions={"probabilities": probabilities},
        scaffold_fn=specs[0].scaffold_fn)

  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn, use_tpu=False, train_batch_size=8,
      config=tf_estimator.tpu.RunConfig(model_dir=str(tmp_path / "model")),
      params={"export_moving_average": True},
      export_saved_model_api_version=version)
  estimator.train(_input_fn, max_steps=2)
  export_dir = estimator.export_saved_model(
      str(tmp_path / "export"), _serving_input_receiver_fn).decode()
  assert seen == use_tpu
  graphs = _meta_graphs(export_dir)
  ops = {node.op for node in graphs[("serve", "tpu")].graph_def.node}
  # Version 1 calls the rewritten function; version 2 has the rewrite
  # model_fn built inline.
  assert ("TPUPartitionedCall" in ops) == (not use_tpu[1])
  assert ("TPUReplicateMetadata" in ops) == use_tpu[1]

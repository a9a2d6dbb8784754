"""tpu_harness.estimator.tpu: TPUEstimator programs run unchanged but for
the import line."""

import glob
import json
import logging as std_logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from support import estimator_programs as programs
from support.tf_fixtures import event_records
from tpu_harness import errors
from tpu_harness import estimator as tf_estimator

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
PROGRAMS = os.path.join(TESTS, "programs")


def _run_program(name, *flags):
  """Runs tests/programs/NAME as a script; returns its log (stderr)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("TF_USE_LEGACY_KERAS", None)  # The import sets it.
  result = subprocess.run(
      [sys.executable, os.path.join(PROGRAMS, name), *flags], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stderr


# ----------------------------------------------------------------------------
# programs/mnist_style.py: TFRecord input, eval_metrics, train, evaluate and
# predict in one run.


def _write_digit_records(directory, n=96):
  rng = np.random.RandomState(0)
  for split in ("train", "validation", "test"):
    path = os.path.join(directory, f"{split}.tfrecords")
    with tf.io.TFRecordWriter(path) as writer:
      for _ in range(n):
        label = int(rng.randint(10))
        image = rng.randint(0, 40, size=(28, 28)).astype(np.uint8)
        image[label * 2:label * 2 + 8, 4:24] = 250  # A learnable mark.
        example = tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[image.tobytes()])),
            "label": tf.train.Feature(int64_list=tf.train.Int64List(
                value=[label]))}))
        writer.write(example.SerializeToString())


@pytest.mark.system
def test_mnist_style_program_trains_evaluates_and_predicts(tmp_path):
  data_dir, model_dir = tmp_path / "data", tmp_path / "model"
  data_dir.mkdir()
  _write_digit_records(str(data_dir))
  log = _run_program(
      "mnist_style.py", "--use_tpu=false", f"--data_dir={data_dir}",
      f"--model_dir={model_dir}", "--train_batch_size=16",
      "--eval_batch_size=16", "--train_steps=30", "--eval_steps=3",
      "--iterations_per_loop=10", "--shuffle_buffer=64")
  assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-30")
  assert re.search(r"Eval of .*model\.ckpt-30 over 3 steps: \{.*'accuracy'",
                   log), log[-3000:]
  assert re.search(r"Accuracy after 30 steps: [01]\.\d{4}\n", log)
  # Ten examples in batches of 16: one partial batch, padded and unpadded.
  predictions = re.findall(r"Test example (\d+): digit (\d), p=([0-9.]+)",
                           log)
  assert [int(index) for index, _, _ in predictions] == list(range(10))
  assert all(0.1 <= float(p) <= 1 for _, _, p in predictions)


# ----------------------------------------------------------------------------
# programs/resnet_style.py: disable_v2_behavior, batch norm, host_call tf2
# summaries, moving averages restored through scaffold_fn, train_and_eval,
# export of a JPEG-serving SavedModel; on 2 emulated TPU cores.


@pytest.mark.system
def test_resnet_style_program_trains_evaluates_moving_averages_and_exports(
    tmp_path):
  model_dir = tmp_path / "model"
  log = _run_program(
      "resnet_style.py", "--use_tpu=true", "--num_cores=2", "--data_dir=null",
      f"--model_dir={model_dir}", "--mode=train_and_eval",
      "--train_steps=4", "--steps_per_eval=2", "--iterations_per_loop=2",
      "--train_batch_size=8", "--eval_batch_size=8", "--num_train_images=32",
      "--num_eval_images=16", "--image_size=16", "--num_classes=10",
      "--stage_filters=8,16", "--blocks_per_stage=1",
      "--moving_average_decay=0.9", f"--export_dir={tmp_path / 'export'}")
  # train_and_eval: train to 2, evaluate, resume to 4, evaluate.
  for step in (2, 4):
    assert re.search(rf"Eval results at step {step}: global_step={step} "
                     r"loss=[0-9.e+-]+ top_1_accuracy=[0-9.e+-]+ "
                     r"top_5_accuracy=[0-9.e+-]+\n", log), log[-3000:]
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
      str(model_dir)))
  assert reader.get_tensor("global_step") == 4
  averages = [name for name in reader.get_variable_to_shape_map()
              if name.endswith("/ExponentialMovingAverage")]
  assert "resnet/classifier/kernel/ExponentialMovingAverage" in averages
  # The host_call's tf2 summaries in model_dir: one per step, with that
  # step's values (epoch = step / 4 steps per epoch).
  tf.compat.v1.summary.FileWriterCache.clear()
  epochs = sorted((e.step, float(tf.make_ndarray(v.tensor)))
                  for e in event_records(str(model_dir))
                  if e.HasField("summary") for v in e.summary.value
                  if v.tag == "current_epoch")
  assert epochs == [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)]
  (export_dir,) = glob.glob(str(tmp_path / "export" / "*"))
  served = _serve_jpeg_in_a_fresh_process(export_dir)
  assert served["classes"].shape == (2,)
  assert served["probabilities"].shape == (2, 10)
  np.testing.assert_allclose(served["probabilities"].sum(axis=1), 1.0,
                             rtol=1e-5)


def _serve_jpeg_in_a_fresh_process(export_dir):
  """Serves two JPEGs (of another size than the model's images)."""
  code = (
      "import json, sys\n"
      "import numpy as np, tensorflow as tf\n"
      "model = tf.saved_model.load(sys.argv[1])\n"
      "pixels = np.random.RandomState(0).randint(0, 256, (24, 20, 3))\n"
      "image = tf.io.encode_jpeg(tf.constant(pixels, tf.uint8))\n"
      "serve = model.signatures['serving_default']\n"
      "out = serve(**{list(serve.structured_input_signature[1])[0]:\n"
      "               tf.stack([image, image])})\n"
      "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n")
  result = subprocess.run([sys.executable, "-c", code, export_dir],
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return {k: np.array(v) for k, v in json.loads(
      result.stdout.strip().splitlines()[-1]).items()}


# ----------------------------------------------------------------------------
# A TPUEstimator-style conv net (estimator_programs.py): 1 and 2 emulated
# cores, and use_tpu=False.


@pytest.mark.parametrize("cores", [0, 1, 2], ids=["cpu", "1 core",
                                                  "2 cores"])
def test_conv_program_train_evaluate_predict_export_resume(tmp_path, cores):
  model_dir = str(tmp_path / "model")
  estimator = programs.estimator(model_dir, cores)
  estimator.train(programs.input_fn, max_steps=8)
  assert estimator.latest_checkpoint().endswith("model.ckpt-8")
  # Resume: continues from step 8.
  estimator.train(programs.input_fn, steps=4)
  assert estimator.latest_checkpoint().endswith("model.ckpt-12")

  # host_call's tf2 summaries, once per step, at the step read in model_fn.
  tf.compat.v1.summary.FileWriterCache.clear()
  steps = sorted(e.step for e in event_records(os.path.join(
      model_dir, "host_call")) if e.HasField("summary")
                 for v in e.summary.value if v.tag == "learning_rate")
  assert steps == list(range(12))

  # Eval restores the moving averages (scaffold_fn's saver).
  results = estimator.evaluate(programs.input_fn, steps=4)
  assert results["global_step"] == 12 and 0 <= results["accuracy"] <= 1
  names = estimator.get_variable_names()
  assert "logits/kernel/ExponentialMovingAverage" in names
  assert estimator.get_variable_value("global_step") == 12

  predictions = list(estimator.predict(programs.predict_input_fn))
  assert len(predictions) == 10
  assert sorted(predictions[0]) == ["classes", "probabilities"]
  np.testing.assert_allclose(
      [p["probabilities"].sum() for p in predictions], 1.0, rtol=1e-5)
  only = list(estimator.predict(programs.predict_input_fn,
                                predict_keys="classes"))
  assert [sorted(p) for p in only] == [["classes"]] * 10

  export_dir = estimator.export_saved_model(
      str(tmp_path / "export"), programs.serving_input_receiver_fn)
  assert isinstance(export_dir, bytes)
  served = _serve_in_a_fresh_process(export_dir.decode(),
                                     programs.images(10, seed=2)[0])
  np.testing.assert_array_equal(served["classes"],
                                [p["classes"] for p in predictions])
  np.testing.assert_allclose(served["probabilities"],
                             [p["probabilities"] for p in predictions],
                             rtol=1e-5, atol=1e-6)


def test_steps_read_from_a_checkpoint_are_integers(tmp_path):
  # resnet_main.py's train_and_eval: max_steps from the step that
  # tf.train.load_variable reads (a numpy int64) failed every resume.
  model_dir = str(tmp_path / "model")
  estimator = programs.estimator(model_dir, cores=0)
  estimator.train(programs.input_fn, max_steps=4)
  current = tf.train.load_variable(model_dir, "global_step")
  assert isinstance(current, np.int64)
  estimator.train(programs.input_fn, max_steps=min(current + 4, 12))
  estimator.train(programs.input_fn, steps=np.int32(4))
  assert estimator.latest_checkpoint().endswith("model.ckpt-12")
  results = estimator.evaluate(programs.input_fn, steps=np.int64(1))
  assert results["global_step"] == 12


def _serve_in_a_fresh_process(export_dir, images):
  code = (
      "import json, sys\n"
      "import numpy as np, tensorflow as tf\n"
      "images = np.array(json.loads(sys.stdin.read()), np.float32)\n"
      "model = tf.saved_model.load(sys.argv[1])\n"
      "assert sorted(model.signatures) == ['classify', 'serving_default']\n"
      "out = model.signatures['serving_default'](input=tf.constant(images))\n"
      "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))\n")
  result = subprocess.run([sys.executable, "-c", code, export_dir],
                          input=json.dumps(images.tolist()),
                          capture_output=True, text=True, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return {k: np.array(v) for k, v in json.loads(
      result.stdout.strip().splitlines()[-1]).items()}


def test_params_batch_size_context_and_use_tpu(tmp_path):
  seen = {}

  def input_fn(params):
    seen.setdefault("input", []).append(
        (params["batch_size"], type(params.get("context")).__name__))
    return programs.input_fn(params, mode=tf_estimator.ModeKeys.TRAIN)

  def model_fn(features, labels, mode, params, config):
    seen.setdefault("model", []).append(
        (params["batch_size"], params["use_tpu"],
         params["context"].num_replicas, type(config).__name__))
    return programs.conv_model_fn(features, labels, mode, params)

  config = tf_estimator.tpu.RunConfig(
      model_dir=str(tmp_path), tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=2, num_shards=2))
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn, config=config, use_tpu=True, train_batch_size=16,
      params={"model_dir": str(tmp_path / "host"), "iterations_per_loop": 2,
              "train_steps": 2})
  estimator.train(input_fn, max_steps=2)
  # PER_HOST_V1 (the default): input_fn gets the host's (global) batch.
  assert seen["input"] == [(16, "TPUContext")]
  assert set(seen["model"]) == {(8, True, 2, "RunConfig")}


def test_model_dir_defaults_to_a_temporary_directory(caplog):
  config = tf_estimator.tpu.RunConfig()
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    estimator = tf_estimator.tpu.TPUEstimator(
        model_fn=programs.conv_model_fn, config=config, use_tpu=False)
  assert os.path.isdir(estimator.model_dir)
  assert any("Using temporary folder as model directory" in r.getMessage()
             for r in caplog.records)
  # TF's RunConfig defaults: a save every 600 seconds.
  assert (estimator.config.save_checkpoints_secs,
          estimator.config.save_checkpoints_steps) == (600, None)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(config=None), ValueError, "`config` (None) must be a "
     "tpu_harness.estimator.tpu.RunConfig"),
    (dict(params={"batch_size": 3}), ValueError,
     "`params` has ['batch_size'], which TPUEstimator reserves"),
    (dict(model_fn=lambda features, labels, mode: None), ValueError,
     "must take a `params` argument"),
    (dict(use_tpu=True, train_batch_size=None), ValueError,
     "`train_batch_size` cannot be None when use_tpu=True"),
    (dict(use_tpu=True, train_batch_size=12), ValueError,
     "`train_batch_size` (12) must be divisible by the number of TPU cores, "
     "num_shards=8: the default cores emulated"),
    (dict(use_tpu=True, train_batch_size=16, eval_batch_size=4), ValueError,
     "`eval_batch_size` (4) must be divisible by the number of TPU cores, "
     "num_shards=8"),
    (dict(batch_axis=(1, 0)), NotImplementedError, "`batch_axis` ((1, 0)) is "
     "not supported by tpu_harness: batches are split along their first "
     "axis, so it must be None or a 0 for each tensor"),
    (dict(embedding_config_spec=object()), NotImplementedError,
     "`embedding_config_spec`"),
    (dict(model_dir="/elsewhere"), ValueError, "`model_dir` ('/elsewhere') "
     "and config.model_dir"),
])
def test_bad_estimator_arguments(tmp_path, kwargs, error, message):
  arguments = dict(model_fn=programs.conv_model_fn,
                   config=tf_estimator.tpu.RunConfig(model_dir=str(tmp_path)),
                   use_tpu=False)
  arguments.update(kwargs)
  with pytest.raises(error) as info:
    tf_estimator.tpu.TPUEstimator(**arguments)
  assert message in str(info.value)


def test_export_without_a_serving_input_receiver_fn_is_a_clear_error(tmp_path):
  estimator = programs.estimator(str(tmp_path), 0)
  with pytest.raises(TypeError, match=r"`serving_input_receiver_fn` \(None\)"):
    estimator.export_saved_model(str(tmp_path / "export"), None)


def test_estimator_spec_eval_metric_ops_are_refused(tmp_path):
  def model_fn(features, labels, mode, params):
    spec = programs.conv_model_fn(features, labels, mode, params)
    if mode != tf_estimator.ModeKeys.EVAL:
      return spec
    return tf_estimator.EstimatorSpec(mode=mode, loss=spec.loss,
                                      eval_metric_ops={"x": (spec.loss,
                                                             tf.no_op())})

  estimator = programs.estimator(str(tmp_path), 0)
  estimator.train(programs.input_fn, max_steps=1)
  refusing = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn, config=estimator.config, use_tpu=False,
      params=estimator.params, eval_batch_size=16)
  with pytest.raises(ValueError, match="return TPUEstimatorSpec"
                     r"\(eval_metrics=\(metric_fn, tensors\)\)"):
    refusing.evaluate(programs.input_fn, steps=1)


def test_get_variable_value_without_a_checkpoint(tmp_path):
  estimator = programs.estimator(str(tmp_path), 0)
  with pytest.raises(ValueError, match="Could not find a trained model"):
    estimator.get_variable_value("global_step")
  assert estimator.latest_checkpoint() is None
  assert not glob.glob(str(tmp_path / "*.index"))


@pytest.mark.system
@pytest.mark.parametrize("cores", [0, 2], ids=["cpu", "2 cores"])
def test_programs_that_disable_v2_behavior_run_too(tmp_path, cores):
  # resnet_main.py calls tf.disable_v2_behavior(): reference variables and
  # v1 control flow, in a process of its own.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, ROOT]))
  result = subprocess.run(
      [sys.executable, os.path.join(TESTS, "support", "estimator_v1_worker.py"),
       str(tmp_path), str(cores)], env=env, capture_output=True, text=True,
      timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  outcome = json.loads(result.stdout.strip().splitlines()[-1])
  assert outcome == {"steps": list(range(8)), "global_step": 8,
                     "accuracy": outcome["accuracy"], "predictions": 10,
                     "exported": True}


# ----------------------------------------------------------------------------
# TPUEstimatorSpec.as_estimator_spec(): what TPUEstimator made of a spec off
# TPU, for a program's CPU branch.


def _conv_spec(mode, tmp_path):
  images, labels = programs.images(16)
  params = {"model_dir": str(tmp_path / "host_call"),
            "iterations_per_loop": 1, "train_steps": 4, "use_tpu": False,
            "batch_size": 16}
  return programs.conv_model_fn(tf.constant(images), tf.constant(labels),
                                mode, params)


def test_as_estimator_spec_calls_metric_fn_host_call_and_scaffold_fn(
    tmp_path):
  with tf.Graph().as_default():
    tf.compat.v1.train.create_global_step()
    spec = _conv_spec(tf_estimator.ModeKeys.TRAIN, tmp_path)
    assert isinstance(spec, tf_estimator.tpu.TPUEstimatorSpec)
    plain = spec.as_estimator_spec()
    assert isinstance(plain, tf_estimator.EstimatorSpec)
    assert (plain.loss, plain.train_op) == (spec.loss, spec.train_op)
    # host_call becomes a hook that runs its ops on every Session.run.
    assert len(plain.training_hooks) == 1
    with tf.compat.v1.train.MonitoredSession(
        hooks=list(plain.training_hooks)) as session:
      for _ in range(3):
        session.run(plain.train_op)
  tf.compat.v1.summary.FileWriterCache.clear()
  steps = sorted(e.step for e in event_records(str(tmp_path / "host_call"))
                 if e.HasField("summary") for v in e.summary.value
                 if v.tag == "learning_rate")
  assert steps == [0, 1, 2]

  with tf.Graph().as_default():
    tf.compat.v1.train.create_global_step()
    spec = _conv_spec(tf_estimator.ModeKeys.EVAL, tmp_path)
    plain = spec.as_estimator_spec()
    # eval_metrics becomes eval_metric_ops: metric_fn on the tensors.
    value, update = plain.eval_metric_ops["accuracy"]
    # scaffold_fn's Scaffold: its saver restores the moving averages.
    assert isinstance(plain.scaffold, tf.compat.v1.train.Scaffold)
    assert any(name.endswith("ExponentialMovingAverage")
               for name in plain.scaffold.saver._var_list)  # pylint: disable=protected-access
    with tf.compat.v1.Session() as session:
      session.run([tf.compat.v1.global_variables_initializer(),
                   tf.compat.v1.local_variables_initializer()])
      session.run(update)
      assert 0 <= session.run(value) <= 1


def test_a_model_fn_returning_as_estimator_spec_off_tpu_runs(tmp_path):
  # As TPU programs wrote their CPU branch:
  #   return spec if params['use_tpu'] else spec.as_estimator_spec()
  def model_fn(features, labels, mode, params):
    spec = programs.conv_model_fn(features, labels, mode, params)
    if params["use_tpu"] or not isinstance(
        spec, tf_estimator.tpu.TPUEstimatorSpec):
      return spec
    return spec.as_estimator_spec()

  base = programs.estimator(str(tmp_path / "model"), 0)
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=model_fn, config=base.config, use_tpu=False,
      params=base.params, train_batch_size=16, eval_batch_size=16)
  estimator.train(programs.input_fn, max_steps=4)
  results = estimator.evaluate(programs.input_fn, steps=2)
  assert results["global_step"] == 4 and 0 <= results["accuracy"] <= 1
  tf.compat.v1.summary.FileWriterCache.clear()
  steps = sorted(e.step for e in event_records(os.path.join(
      str(tmp_path / "model"), "host_call")) if e.HasField("summary")
                 for v in e.summary.value if v.tag == "learning_rate")
  assert steps == [0, 1, 2, 3]


def test_batch_axis_of_the_first_dimension_is_accepted(tmp_path):
  # mobilenet_main.py: TPUEstimator(..., batch_axis=(0, 0)), features and
  # labels sharded on their batch dimension, which is what the harness does.
  base = programs.estimator(str(tmp_path), 2)
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=programs.conv_model_fn, config=base.config, use_tpu=True,
      params=base.params, train_batch_size=16, batch_axis=(0, 0))
  estimator.train(programs.input_fn, max_steps=2)
  assert estimator.get_variable_value("global_step") == 2


def test_an_input_fn_returning_iterator_tensors_trains_and_evaluates(
    tmp_path):
  # squeezenet/mobilenet style: `images, labels =
  # make_one_shot_iterator(dataset).get_next(); return images, labels`.
  def tensors_input_fn(params, mode=None):
    dataset = programs.input_fn(params, mode)
    return tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()

  estimator = programs.estimator(str(tmp_path), 2)
  estimator.train(tensors_input_fn, max_steps=4)
  assert estimator.get_variable_value("global_step") == 4
  results = estimator.evaluate(tensors_input_fn, steps=2)
  assert results["global_step"] == 4 and "accuracy" in results


_PIPELINES = tf_estimator.tpu.InputPipelineConfig


@pytest.mark.parametrize("pipeline, sizes", [
    # TPUEstimator's TPUContext.batch_size_for_input_fn: PER_HOST_V2 gives
    # every mode's input_fn the per-core batch; PER_SHARD_V1 only training's
    # (its evaluation and prediction input is per host, as PER_HOST_V1's).
    (_PIPELINES.PER_HOST_V1, {"train": 16, "eval": 16, "infer": 4}),
    (_PIPELINES.PER_HOST_V2, {"train": 8, "eval": 8, "infer": 2}),
    (_PIPELINES.PER_SHARD_V1, {"train": 8, "eval": 16, "infer": 4}),
])
def test_input_fn_batch_size_per_mode_and_pipeline(tmp_path, pipeline, sizes):
  seen = {}

  def input_fn(params):
    mode = params["context"].mode
    seen[mode] = params["batch_size"]
    if mode == tf_estimator.ModeKeys.PREDICT:
      return programs.predict_input_fn(params)
    return programs.input_fn(params, mode=mode)

  base = programs.estimator(str(tmp_path), 2)
  config = tf_estimator.tpu.RunConfig(
      model_dir=str(tmp_path), tpu_config=tf_estimator.tpu.TPUConfig(
          iterations_per_loop=2, num_shards=2,
          per_host_input_for_training=pipeline))
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=programs.conv_model_fn, config=config, use_tpu=True,
      params=base.params, train_batch_size=16, eval_batch_size=16,
      predict_batch_size=4)
  estimator.train(input_fn, max_steps=2)
  estimator.evaluate(input_fn, steps=2)
  predictions = list(estimator.predict(input_fn))
  assert seen == sizes
  assert len(predictions) == 10  # The padding of the last batch dropped.


def test_per_host_v2_evaluation_reads_each_cores_batch_in_its_layout(
    tmp_path):
  # resnet/mnasnet `transpose_input`: under PER_HOST_V2 the eval input_fn
  # lays each core's batch out as [H, W, C, N] and model_fn transposes it
  # back; TPUEstimator dequeued whole per-core batches, whatever their
  # layout. The metrics are those of the same examples read as PER_HOST_V1.
  def transposed_input_fn(params):
    dataset = programs.input_fn(params, mode=params["context"].mode)
    return dataset.map(lambda x, y: (tf.transpose(x, [1, 2, 3, 0]), y))

  def model_fn(features, labels, mode, params):
    if mode == tf_estimator.ModeKeys.EVAL:
      features = tf.transpose(features, [3, 0, 1, 2])
    return programs.conv_model_fn(features, labels, mode, params)

  results = {}
  for name, pipeline, fn, input_fn in (
      ("v1", _PIPELINES.PER_HOST_V1, programs.conv_model_fn,
       programs.input_fn),
      ("v2", _PIPELINES.PER_HOST_V2, model_fn, transposed_input_fn)):
    model_dir = str(tmp_path / name)
    base = programs.estimator(model_dir, 2)
    estimator = tf_estimator.tpu.TPUEstimator(
        model_fn=fn, config=tf_estimator.tpu.RunConfig(
            model_dir=model_dir, tpu_config=tf_estimator.tpu.TPUConfig(
                iterations_per_loop=2, num_shards=2,
                per_host_input_for_training=pipeline)),
        use_tpu=True, params=base.params, train_batch_size=16,
        eval_batch_size=16)
    estimator.train(
        lambda params: programs.input_fn(params, tf_estimator.ModeKeys.TRAIN),
        max_steps=2)
    results[name] = estimator.evaluate(input_fn, steps=4)
  assert results["v1"]["global_step"] == results["v2"]["global_step"] == 2
  assert results["v2"]["accuracy"] == pytest.approx(results["v1"]["accuracy"])
  assert results["v2"]["loss"] == pytest.approx(results["v1"]["loss"],
                                                rel=1e-5)


# A BERT-style program (google-research/bert's run_classifier shape):
# `input_fn` returns a Dataset of feature dicts with the label among them,
# so TPUEstimator called `model_fn` with `labels=None`.
_BERT_VOCAB, _BERT_LENGTH = 16, 8


def _bert_examples(count, seed):
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, _BERT_VOCAB, size=(count, _BERT_LENGTH))
  labels = (rng.rand(count) < 0.5).astype(np.int32)
  ids[labels == 1, 0] = 1
  return ids.astype(np.int32), labels


def _bert_input_fn_builder(is_training, as_tensors=False):
  ids, labels = _bert_examples(64, seed=0 if is_training else 1)

  def input_fn(params):
    d = tf.data.Dataset.from_tensor_slices(
        {"input_ids": ids, "label_ids": labels})
    if is_training:
      d = d.repeat().shuffle(buffer_size=64, seed=1)
    d = d.batch(params["batch_size"], drop_remainder=True)
    if as_tensors:  # `features = make_one_shot_iterator(d).get_next()`
      return tf.compat.v1.data.make_one_shot_iterator(d).get_next()
    return d

  return input_fn


class _FeatureRowsHook(tf.compat.v1.train.SessionRunHook):
  """A model_fn's hook on a features tensor: the rows it saw each run."""

  def __init__(self, tensor, seen):
    self._tensor, self._seen = tensor, seen

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._tensor)

  def after_run(self, run_context, run_values):
    self._seen.append(np.shape(run_values.results))


def _bert_model_fn(features, labels, mode, params, seen, eval_seen=None):
  assert labels is None, labels  # The labels are in the features.
  input_ids, label_ids = features["input_ids"], features["label_ids"]
  embeddings = tf.compat.v1.get_variable(
      "word_embeddings", [_BERT_VOCAB, 8],
      initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.02))
  pooled = tf.reduce_mean(tf.nn.embedding_lookup(embeddings, input_ids), 1)
  logits = tf.compat.v1.layers.dense(pooled, 2, name="classifier")
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(label_ids, logits)
  if mode == tf_estimator.ModeKeys.TRAIN:
    optimizer = tf.compat.v1.train.AdamOptimizer(0.1)
    if params["use_tpu"]:
      optimizer = tf.compat.v1.tpu.CrossShardOptimizer(optimizer)
    train_op = optimizer.minimize(
        loss, global_step=tf.compat.v1.train.get_or_create_global_step())
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode=mode, loss=loss, train_op=train_op, training_hooks=[
            _FeatureRowsHook(label_ids, seen)])

  def metric_fn(label_ids, logits):  # A features tensor and the logits.
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return {"eval_accuracy": tf.compat.v1.metrics.accuracy(label_ids,
                                                           predictions)}

  return tf_estimator.tpu.TPUEstimatorSpec(
      mode=mode, loss=loss, eval_metrics=(metric_fn, [label_ids, logits]),
      evaluation_hooks=([_FeatureRowsHook(label_ids, eval_seen)]
                        if eval_seen is not None else None))


@pytest.mark.parametrize("cores, pipeline, as_tensors", [
    (0, None, False),
    (0, None, True),
    (2, _PIPELINES.PER_HOST_V1, False),  # Eval batches split in two.
    (2, _PIPELINES.PER_HOST_V2, False),
    (2, _PIPELINES.PER_HOST_V2, True),
], ids=["cpu", "cpu, iterator tensors", "2 cores PER_HOST_V1",
        "2 cores PER_HOST_V2", "2 cores, iterator tensors"])
def test_bert_style_features_alone_train_and_evaluate(tmp_path, cores,
                                                      pipeline, as_tensors):
  seen = []
  tpu_config = tf_estimator.tpu.TPUConfig(iterations_per_loop=3,
                                          num_shards=cores or None)
  if pipeline is not None:
    tpu_config = tf_estimator.tpu.TPUConfig(
        iterations_per_loop=3, num_shards=cores,
        per_host_input_for_training=pipeline)
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=lambda features, labels, mode, params: _bert_model_fn(
          features, labels, mode, params, seen), use_tpu=bool(cores),
      config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path), save_checkpoints_steps=3,
          tpu_config=tpu_config),
      train_batch_size=8, eval_batch_size=8)
  estimator.train(_bert_input_fn_builder(True, as_tensors), max_steps=12)
  assert estimator.get_variable_value("global_step") == 12
  # The hook on a features tensor saw replica 0's rows, each step.
  assert seen[-1][-1] == 8 // (cores or 1)
  results = estimator.evaluate(_bert_input_fn_builder(False, as_tensors))
  assert results["global_step"] == 12
  # Over all 64 examples, from label_ids in the features, as the weights
  # give it.
  ids, labels = _bert_examples(64, seed=1)
  pooled = estimator.get_variable_value("word_embeddings")[ids].mean(1)
  logits = (pooled @ estimator.get_variable_value("classifier/kernel")
            + estimator.get_variable_value("classifier/bias"))
  assert results["eval_accuracy"] == pytest.approx(
      np.mean(np.argmax(logits, 1) == labels))


# ----------------------------------------------------------------------------
# Evaluation batches of no fixed size off TPU cores (issue 21): BERT's
# run_classifier batches its eval input with drop_remainder=use_tpu.


def _partial_eval_input_fn(params):
  """10 examples in batches of params['batch_size'] (4: 4, 4, 2)."""
  ids, labels = _bert_examples(10, seed=1)
  return tf.data.Dataset.from_tensor_slices(
      {"input_ids": ids, "label_ids": labels}).batch(
          params["batch_size"], drop_remainder=False)


def _bert_batch_metrics(estimator, batches):
  """(accuracy over the examples of the first `batches` batches of 4, the
  unweighted mean of their batch losses, as Estimator's `loss`), from the
  checkpoint's weights."""
  ids, labels = _bert_examples(10, seed=1)
  pooled = estimator.get_variable_value("word_embeddings")[ids].mean(1)
  logits = (pooled @ estimator.get_variable_value("classifier/kernel")
            + estimator.get_variable_value("classifier/bias"))
  logits = logits.astype(np.float64)
  shifted = logits - logits.max(1, keepdims=True)
  losses = (np.log(np.exp(shifted).sum(1))
            - shifted[np.arange(len(labels)), labels])
  rows = min(10, 4 * batches)
  accuracy = np.mean(np.argmax(logits, 1)[:rows] == labels[:rows])
  loss = np.mean([losses[start:start + 4].mean()
                  for start in range(0, rows, 4)])
  return accuracy, loss


@pytest.mark.parametrize("iterations", [2, 1])
def test_use_tpu_false_evaluates_a_partial_last_batch_as_estimator(
    tmp_path, iterations):
  seen, eval_seen = [], []
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=lambda features, labels, mode, params: _bert_model_fn(
          features, labels, mode, params, seen, eval_seen),
      use_tpu=False,
      config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path), tpu_config=tf_estimator.tpu.TPUConfig(
              iterations_per_loop=iterations)),
      train_batch_size=8, eval_batch_size=4)
  estimator.train(_bert_input_fn_builder(True), max_steps=6)
  results = estimator.evaluate(_partial_eval_input_fn)
  accuracy, loss = _bert_batch_metrics(estimator, 3)
  assert results["global_step"] == 6
  # Every example, each batch's real rows: metric_fn and the loss as
  # Estimator gave them (the mean of the 3 batches' losses).
  assert results["eval_accuracy"] == pytest.approx(accuracy)
  assert results["loss"] == pytest.approx(loss, rel=1e-5)
  # The hook on a features tensor saw the last step of each loop, its
  # real rows.
  assert eval_seen == ([(4,), (2,)] if iterations == 2
                       else [(4,), (4,), (2,)])
  results = estimator.evaluate(_partial_eval_input_fn, steps=2)
  accuracy, loss = _bert_batch_metrics(estimator, 2)
  assert results["eval_accuracy"] == pytest.approx(accuracy)
  assert results["loss"] == pytest.approx(loss, rel=1e-5)


def test_emulated_cores_still_need_fixed_eval_batches(tmp_path):
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=lambda features, labels, mode, params: _bert_model_fn(
          features, labels, mode, params, []),
      use_tpu=True,
      config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path), tpu_config=tf_estimator.tpu.TPUConfig(
              iterations_per_loop=2, num_shards=2)),
      train_batch_size=8, eval_batch_size=4)
  estimator.train(_bert_input_fn_builder(True), max_steps=2)
  with pytest.raises(errors.InputShapeError,
                     match=r"fixed shape in mode 'eval' \(batch with "
                     r"drop_remainder=True\)"):
    estimator.evaluate(_partial_eval_input_fn)


# Training batches of no fixed size off TPU cores (issue 21): TF's Estimator
# (and TPUEstimator with use_tpu=False) trained on a finite input's partial
# last batch.

_LINEAR_X = np.random.RandomState(3).rand(10, 3).astype(np.float32)
_LINEAR_Y = np.random.RandomState(4).rand(10).astype(np.float32)


def _one_epoch_input_fn(params):
  """One pass of 10 examples in batches of 4: 4, 4, 2."""
  return tf.data.Dataset.from_tensor_slices((_LINEAR_X, _LINEAR_Y)).batch(
      params["batch_size"])


def _linear_model_fn(seen):
  def model_fn(features, labels, mode, params):
    del params  # Unused.
    w = tf.compat.v1.get_variable("w", [3, 1],
                                  initializer=tf.compat.v1.ones_initializer())
    loss = tf.reduce_mean(tf.square(tf.squeeze(features @ w, 1) - labels))
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
        loss, tf.compat.v1.train.get_global_step())
    return tf_estimator.tpu.TPUEstimatorSpec(
        mode, loss=loss, train_op=train_op,
        training_hooks=[_FeatureRowsHook(labels, seen)])
  return model_fn


def _linear_weights_after(batches):
  """Gradient descent's weights after `batches` [start, end) of the data,
  each step on its batch's rows only."""
  w = np.ones([3], np.float64)
  for start, end in batches:
    x, y = _LINEAR_X[start:end], _LINEAR_Y[start:end]
    w -= 0.1 * 2 * x.T @ (x @ w - y) / len(y)
  return w


def test_use_tpu_false_trains_on_a_partial_last_batch_as_estimator(tmp_path):
  seen = []

  def estimator(name):
    return tf_estimator.tpu.TPUEstimator(
        model_fn=_linear_model_fn(seen), use_tpu=False,
        config=tf_estimator.tpu.RunConfig(
            model_dir=str(tmp_path / name),
            tpu_config=tf_estimator.tpu.TPUConfig(iterations_per_loop=2)),
        train_batch_size=4, eval_batch_size=4)

  epochs = estimator("epochs")
  steps = []
  for _ in range(2):
    epochs.train(_one_epoch_input_fn)
    steps.append(epochs.get_variable_value("global_step"))
  assert steps == [3, 6]
  # The hook saw the last step of each loop: its real rows.
  assert seen == [(4,), (2,)] * 2
  expected = _linear_weights_after([(0, 4), (4, 8), (8, 10)] * 2)
  np.testing.assert_allclose(epochs.get_variable_value("w")[:, 0], expected,
                             rtol=1e-5)
  # Stopped within the pass, resumed from its saved position (through the
  # padding), then a new pass: the same weights.
  stopped = estimator("stopped")
  stopped.train(_one_epoch_input_fn, steps=1)
  stopped = estimator("stopped")
  stopped.train(_one_epoch_input_fn)
  assert stopped.get_variable_value("global_step") == 3
  stopped.train(_one_epoch_input_fn)
  assert stopped.get_variable_value("global_step") == 6
  np.testing.assert_allclose(stopped.get_variable_value("w"),
                             epochs.get_variable_value("w"), rtol=1e-6)


def test_emulated_cores_still_need_fixed_train_batches(tmp_path):
  estimator = tf_estimator.tpu.TPUEstimator(
      model_fn=_linear_model_fn([]), use_tpu=True,
      config=tf_estimator.tpu.RunConfig(
          model_dir=str(tmp_path), tpu_config=tf_estimator.tpu.TPUConfig(
              iterations_per_loop=2, num_shards=1)),
      train_batch_size=4)
  with pytest.raises(errors.InputShapeError,
                     match=r"fixed shape in mode 'train' \(batch with "
                     r"drop_remainder=True\)"):
    estimator.train(_one_epoch_input_fn)

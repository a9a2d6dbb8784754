"""tpu_harness.install() and `python -m tpu_harness PROGRAM.py`: TensorFlow's
estimator names resolve to tpu_harness.estimator, programs run unedited.

install() changes the process's TensorFlow modules for good, so everything
that calls it runs in a subprocess of its own.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tpu_harness import __main__ as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_STYLE = os.path.join("tests", "programs", "bert_style.py")


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("TF_USE_LEGACY_KERAS", None)  # `import tpu_harness` sets it.
  return env


def _run(*args, cwd=ROOT):
  """Runs `python ARGS...` from `cwd`; returns the CompletedProcess."""
  return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=600,
                        check=False)


def _run_code(code):
  """Runs `code` in a fresh Python; asserts it succeeded; its stdout."""
  result = _run("-c", textwrap.dedent(code))
  assert result.returncode == 0, result.stderr[-5000:]
  return result.stdout


# ----------------------------------------------------------------------------
# A BERT-style program (tf.estimator.tpu.* after `import tensorflow.compat.v1
# as tf`), unedited.


def _pretrained_embeddings(directory):
  """(a checkpoint holding only `word_embeddings` [16, 8], its values), as
  a pretrained BERT body for bert_style.py's `--init_checkpoint`."""
  values = np.arange(16 * 8, dtype=np.float32).reshape(16, 8) / 100
  with tf.Graph().as_default():
    tf.compat.v1.get_variable("word_embeddings", initializer=values)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      return saver.save(session, os.path.join(directory, "pre.ckpt")), values


@pytest.mark.system
def test_bert_style_program_trains_and_evaluates_under_python_m_tpu_harness(
    tmp_path):
  output_dir = tmp_path / "output"
  pretrained, values = _pretrained_embeddings(str(tmp_path))
  result = _run("-m", "tpu_harness", BERT_STYLE, f"--output_dir={output_dir}",
                "--do_train", "--do_eval", "--num_train_steps=4",
                "--save_checkpoints_steps=2", "--iterations_per_loop=2",
                f"--init_checkpoint={pretrained}")
  assert result.returncode == 0, result.stderr[-5000:]
  # The flags reached the program: it trained to 4, not its default 6.
  checkpoint = tf.train.latest_checkpoint(str(output_dir))
  assert checkpoint.endswith("model.ckpt-4"), checkpoint
  reader = tf.train.load_checkpoint(checkpoint)
  assert reader.get_tensor("global_step") == 4
  assert reader.get_tensor("word_embeddings").shape == (16, 8)
  # Training started from the pretrained embeddings (init_from_checkpoint
  # in model_fn, off TPU) and moved on from them.
  start = tf.train.load_checkpoint(str(output_dir / "model.ckpt-0"))
  np.testing.assert_array_equal(start.get_tensor("word_embeddings"), values)
  assert not np.array_equal(reader.get_tensor("word_embeddings"), values)
  results = dict(line.split(" = ") for line in
                 (output_dir / "eval_results.txt").read_text().splitlines())
  assert results["global_step"] == "4"
  assert 0.0 <= float(results["eval_accuracy"]) <= 1.0


@pytest.mark.system
def test_the_same_program_fails_under_plain_python(tmp_path):
  result = _run(BERT_STYLE, f"--output_dir={tmp_path / 'output'}",
                "--do_train")
  assert result.returncode != 0
  assert ("module 'tensorflow.compat.v1' has no attribute 'estimator'"
          in result.stderr), result.stderr[-3000:]


# ----------------------------------------------------------------------------
# The import forms.


@pytest.mark.system
def test_every_import_form_gives_tpu_harness_estimator_after_install():
  stdout = _run_code("""
      import tensorflow as tf
      import tensorflow.compat.v1 as tf_before  # Before install().
      try:
        from tensorflow.compat.v1 import estimator
        raise AssertionError("TensorFlow has an estimator of its own")
      except ImportError:
        pass
      try:
        import tensorflow_estimator
        raise AssertionError("tensorflow_estimator imports")
      except ImportError:
        pass

      import tpu_harness
      from tpu_harness import estimator as ours
      tpu_harness.install()

      import tensorflow.compat.v1 as tf_after
      import tensorflow.compat.v2 as tf_v2
      assert tf_before.estimator is ours
      assert tf_after.estimator is ours
      assert tf.compat.v1.estimator is ours
      assert tf.compat.v2.compat.v1.estimator is ours
      assert tf.estimator is ours and tf_v2.estimator is ours
      assert tf_before.estimator.tpu.TPUEstimator is ours.tpu.TPUEstimator
      assert tf_before.estimator.ModeKeys.PREDICT == "infer"
      assert "estimator" in dir(tf_before)

      from tensorflow.compat.v1 import estimator as tf_estimator
      assert tf_estimator is ours
      import tensorflow.compat.v1.estimator as e1
      import tensorflow.compat.v1.estimator.tpu as e1_tpu
      from tensorflow.compat.v1.estimator import tpu, export
      from tensorflow.compat.v1.estimator.tpu import TPUEstimator, RunConfig
      from tensorflow.compat.v1.estimator.export import PredictOutput
      assert e1 is ours and e1_tpu is ours.tpu and tpu is ours.tpu
      assert export is ours.export
      assert PredictOutput is ours.export.PredictOutput
      assert TPUEstimator is ours.tpu.TPUEstimator
      assert RunConfig is ours.tpu.RunConfig
      from tensorflow import estimator as e2
      from tensorflow.estimator import ModeKeys
      assert e2 is ours and ModeKeys is ours.ModeKeys

      import tensorflow_estimator as te
      assert te.estimator is ours
      assert te.estimator.tpu.TPUEstimator is ours.tpu.TPUEstimator
      from tensorflow_estimator import estimator as te_estimator
      assert te_estimator is ours
      from tensorflow_estimator.python.estimator import estimator
      from tensorflow_estimator.python.estimator import model_fn as model_fn_lib
      from tensorflow_estimator.python.estimator import mode_keys
      from tensorflow_estimator.python.estimator import run_config
      from tensorflow_estimator.python.estimator import training
      from tensorflow_estimator.python.estimator.export import export as ex
      from tensorflow_estimator.python.estimator.export import export_output
      from tensorflow_estimator.python.estimator.export import export_lib
      from tensorflow_estimator.python.estimator.tpu import tpu_estimator
      from tensorflow_estimator.python.estimator.tpu import tpu_config
      assert estimator.Estimator is ours.Estimator
      assert model_fn_lib.EstimatorSpec is ours.EstimatorSpec
      assert model_fn_lib.ModeKeys is mode_keys.ModeKeys is ours.ModeKeys
      assert run_config.RunConfig is ours.RunConfig
      assert training.train_and_evaluate is ours.train_and_evaluate
      assert training.TrainSpec is ours.TrainSpec
      assert ex.ServingInputReceiver is ours.export.ServingInputReceiver
      assert export_output.PredictOutput is ours.export.PredictOutput
      assert export_lib.RegressionOutput is ours.export.RegressionOutput
      assert tpu_estimator.TPUEstimator is ours.tpu.TPUEstimator
      assert tpu_estimator.TPUEstimatorSpec is ours.tpu.TPUEstimatorSpec
      assert tpu_config.RunConfig is ours.tpu.RunConfig
      assert tpu_config.TPUConfig is ours.tpu.TPUConfig
      assert (tpu_config.InputPipelineConfig.PER_HOST_V2
              is ours.tpu.InputPipelineConfig.PER_HOST_V2)
      import tensorflow_estimator.python.estimator.tpu.tpu_estimator as t
      assert t is tpu_estimator
      # TF 1's private path, for one private function (efficientnet).
      from tensorflow.python.estimator import estimator as private
      assert private.Estimator is ours.Estimator
      assert private._load_global_step_from_checkpoint_dir("/nonexistent") == 0

      # What is not provided stays an error that says so.
      try:
        from tensorflow_estimator.python.estimator.canned import dnn
        raise AssertionError("canned imports")
      except ModuleNotFoundError as e:
        assert "tensorflow_estimator.python.estimator.canned" in str(e)
      try:
        tpu_estimator.TPUPartitionedCall
        raise AssertionError("a name we do not provide")
      except AttributeError as e:
        assert "stand-in" in str(e) and "TPUPartitionedCall" in str(e)
      print("ok")
      """)
  assert stdout.strip() == "ok"


@pytest.mark.system
def test_install_twice_changes_nothing():
  stdout = _run_code("""
      import sys
      import tensorflow.compat.v1 as tf
      import tpu_harness

      tpu_harness.install()
      first = {name: module for name, module in sys.modules.items()
               if "estimator" in name}
      te = sys.modules["tensorflow_estimator"]
      tpu_harness.install()
      again = {name: module for name, module in sys.modules.items()
               if "estimator" in name}
      assert first.keys() == again.keys()
      assert all(again[name] is module for name, module in first.items())
      assert sys.modules["tensorflow_estimator"] is te
      assert tf.estimator is tpu_harness.estimator
      assert tf.__all__.count("estimator") == 1
      print(len(first))
      """)
  assert int(stdout) >= 20


# ----------------------------------------------------------------------------
# python -m tpu_harness: running a program as `python PROGRAM.py` would.


@pytest.mark.system
def test_the_program_runs_as_main_with_its_argv_path_and_exit_status(
    tmp_path):
  (tmp_path / "helper.py").write_text("NAME = 'beside the program'\n")
  program = tmp_path / "program.py"
  program.write_text(textwrap.dedent("""
      import sys
      from absl import app
      from absl import flags
      import tensorflow.compat.v1 as tf
      import helper  # Found beside the program (sys.path[0]).

      flags.DEFINE_integer("code", 0, "Exit status.")
      flags.DEFINE_bool("fail", False, "Raise instead.")

      def main(argv):
        print("argv", sys.argv[0], argv[1:])
        print("estimator", tf.estimator.tpu.TPUEstimator.__module__)
        print("helper", helper.NAME)
        if flags.FLAGS.fail:
          raise RuntimeError("the program failed")
        return flags.FLAGS.code

      if __name__ == "__main__":
        app.run(main)
      """))
  result = _run("-m", "tpu_harness", str(program), "--code=3", "extra")
  assert result.returncode == 3, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
      f"argv {program} ['extra']",
      "estimator tpu_harness.estimator.tpu",
      "helper beside the program"]
  result = _run("-m", "tpu_harness", str(program), "--fail")
  assert result.returncode == 1
  assert "RuntimeError: the program failed" in result.stderr
  result = _run("-m", "tpu_harness", str(program))
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.system
def test_a_bad_command_line_exits_2_with_the_usage_line(tmp_path):
  result = _run("-m", "tpu_harness", str(tmp_path / "missing.py"), "--x=1")
  assert result.returncode == 2
  # After TensorFlow's own start-up lines (`python -m` imports the package).
  assert ("usage: python -m tpu_harness PROGRAM.py [ARGS...]\n"
          "python -m tpu_harness: error: the argument PROGRAM, "
          f"'{tmp_path / 'missing.py'}', does not exist") in result.stderr


def test_usage_errors_name_the_argument_and_value(capsys, tmp_path):
  assert launcher.main([]) == 2
  assert "the argument PROGRAM is missing" in capsys.readouterr().err
  assert launcher.main(["--use_tpu=false", "program.py"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("usage: python -m tpu_harness PROGRAM.py")
  assert "the argument PROGRAM is '--use_tpu=false', an option" in err
  assert launcher.main([str(tmp_path)]) == 2
  assert f"'{tmp_path}', is a directory" in capsys.readouterr().err
  assert launcher.main(["--help"]) == 0
  assert capsys.readouterr().out.startswith("usage: python -m tpu_harness")

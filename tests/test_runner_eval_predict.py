"""Runner: evaluation and prediction."""


import numpy as np
import pytest
import tensorflow as tf

from support.runner_models import data
from support.runner_models import train_input_fn
from support.runner_models import write_checkpoint
from support.runner_fixtures import KNOWN_W
from support.runner_fixtures import make_runner
from support.runner_fixtures import scalars


# ----------------------------------------------------------------------------
# Evaluation and prediction.


@pytest.mark.parametrize("shards", [1, 2])
def test_evaluate_known_model(tmp_path, shards):
  checkpoint = write_checkpoint(str(tmp_path), KNOWN_W, 7)
  x, y = data(n=96, seed=3)
  error = x @ np.array(KNOWN_W, np.float32) - y
  runner = make_runner(tmp_path, ipl=2, batch=16, shards=shards)
  results = runner.evaluate(train_input_fn(x, y, repeat=False), steps=5)
  used = 5 * 16
  assert results["global_step"] == 7
  np.testing.assert_allclose(results["mse"], np.mean(error[:used] ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(results["mae"], np.mean(np.abs(error[:used])),
                             rtol=1e-5)
  np.testing.assert_allclose(results["loss"], results["mse"], rtol=1e-5)
  # Without `steps`, until the input ends: 96 / 16 = 6 steps.
  all_results = runner.evaluate(train_input_fn(x, y, repeat=False),
                                checkpoint_path=checkpoint, name="all")
  np.testing.assert_allclose(all_results["mse"], np.mean(error ** 2),
                             rtol=1e-5)
  assert scalars(tmp_path / "eval_all", "mse") == [
      (7, pytest.approx(all_results["mse"], rel=1e-6))]
  assert [s for s, _ in scalars(tmp_path / "eval", "mae")] == [7]


@pytest.mark.parametrize("n,batch,shards,ipl", [
    (23, 8, 1, 2), (23, 8, 2, 2), (32, 8, 2, 1), (5, 8, 4, 3), (1, 4, 1, 1)])
def test_predict_returns_every_example_once_in_order(tmp_path, n, batch,
                                                     shards, ipl):
  write_checkpoint(str(tmp_path), KNOWN_W, 3)
  x, _ = data(n=n, seed=4)

  def input_fn(params):
    return tf.data.Dataset.from_tensor_slices(x).batch(params["batch_size"])

  runner = make_runner(tmp_path, ipl=ipl, batch=batch, shards=shards)
  predictions = list(runner.predict(input_fn))
  expected = x @ np.array(KNOWN_W, np.float32)
  assert len(predictions) == n
  np.testing.assert_allclose([p["y"] for p in predictions], expected,
                             rtol=1e-5)
  np.testing.assert_allclose([p["doubled"] for p in predictions],
                             2 * expected, rtol=1e-5)


def test_predict_accepts_features_and_labels(tmp_path):
  write_checkpoint(str(tmp_path), KNOWN_W, 3)
  x, y = data(n=10)
  runner = make_runner(tmp_path, batch=4)
  predictions = list(runner.predict(
      lambda params: tf.data.Dataset.from_tensor_slices((x, y)).batch(4)))
  assert len(predictions) == 10


def test_eval_and_predict_need_a_checkpoint(tmp_path):
  runner = make_runner(tmp_path)
  with pytest.raises(ValueError, match="No checkpoint that reads back in "
                     "`model_dir`"):
    runner.evaluate(train_input_fn(), steps=1)
  with pytest.raises(ValueError, match="No checkpoint that reads back in "
                     "`model_dir`"):
    next(runner.predict(train_input_fn()))
  with pytest.raises(ValueError, match=r"`checkpoint_path` \('/nope'\) is "
                     "not a checkpoint"):
    runner.evaluate(train_input_fn(), steps=1, checkpoint_path="/nope")

"""The digits example model: data split, and it learns."""

import numpy as np

import tpu_harness as th
from tpu_harness.examples.digits import model as digits


def test_split_is_fixed_and_disjoint():
  data = digits.load()
  x_train, y_train = data["train"]
  x_test, y_test = data["test"]
  assert x_train.shape == (1509, 64) and x_test.shape == (288, 64)
  assert 0.0 <= x_train.min() and x_train.max() <= 1.0
  assert set(np.unique(y_train)) == set(range(10))
  rows = {row.tobytes() for row in x_train}
  # The vendored file has a few duplicate images; almost none cross over.
  assert sum(row.tobytes() in rows for row in x_test) < 5
  assert y_test.dtype == np.int32


def test_classifier_learns_beyond_chance(tmp_path):
  runner = th.Runner(
      digits.model_fn,
      th.RunConfig(str(tmp_path), iterations_per_loop=50,
                   save_checkpoints_steps=300),
      train_batch_size=64, eval_batch_size=32, predict_batch_size=32)
  runner.train(digits.train_input_fn, max_steps=300)
  results = runner.evaluate(digits.eval_input_fn)
  assert results["global_step"] == 300
  assert results["accuracy"] > 0.9
  predictions = list(runner.predict(digits.predict_input_fn))
  assert len(predictions) == 288
  _, labels = digits.load()["test"]
  accuracy = np.mean([p["classes"] for p in predictions] == labels)
  np.testing.assert_allclose(accuracy, results["accuracy"], atol=1e-6)
  probabilities = np.array([p["probabilities"] for p in predictions])
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)

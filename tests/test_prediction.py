"""prediction.rows and batches: a predict loop's outfeed, its padding
dropped, as examples or input batches. (Predicting end to end:
test_runner_eval_predict.py.)"""

import numpy as np

from tpu_harness._run import prediction


def _outfeed(valid, **values):
  """An outfeed of [steps, replicas] counts of real rows and values shaped
  [steps, replicas, rows, ...]."""
  return dict(values, __valid__=np.array(valid))


def test_rows_drop_the_padding_in_input_order():
  # Two steps of two replicas of batch 2; the last step's second replica
  # is padding, its first has one real row.
  y = np.arange(8).reshape(2, 2, 2)
  outfeed = _outfeed([[2, 2], [1, 0]], y=y, z=-y)
  rows = list(prediction.rows(outfeed))
  assert [int(row["y"]) for row in rows] == [0, 1, 2, 3, 4]
  assert [int(row["z"]) for row in rows] == [0, -1, -2, -3, -4]


def test_a_single_tensor_prediction_gives_values_not_dicts():
  outfeed = _outfeed([[2, 1]], __single__=np.arange(4).reshape(1, 2, 2))
  assert [int(value) for value in prediction.rows(outfeed)] == [0, 1, 2]


def test_batches_regroup_rows_by_step_and_skip_empty_steps():
  y = np.arange(12).reshape(3, 2, 2)
  outfeed = _outfeed([[2, 1], [0, 0], [1, 0]], y=y)
  batches = list(prediction.batches(prediction.rows(outfeed), outfeed))
  assert [batch["y"].tolist() for batch in batches] == [[0, 1, 2], [8]]
  single = _outfeed([[2, 1]], __single__=np.arange(4).reshape(1, 2, 2))
  (batch,) = prediction.batches(prediction.rows(single), single)
  assert batch.tolist() == [0, 1, 2]

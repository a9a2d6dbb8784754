"""hooks.retention: which checkpoints are kept, and the order of deletion."""

import os

import pytest
import tensorflow as tf

from hooks import retention


@pytest.mark.parametrize("count, names, kept, expired", [
    (0, ["a", "b", "c"], ["a", "b", "c"], []),
    (2, ["a", "b", "c"], ["b", "c"], ["a"]),
    (3, ["a", "b"], ["a", "b"], []),
    (1, [], [], []),
])
def test_retain_latest_keeps_the_newest(count, names, kept, expired):
  assert retention.RetainLatest(count).split(names) == (kept, expired)


@pytest.mark.parametrize("count, error", [(-1, ValueError),
                                          (None, TypeError)])
def test_a_bad_count_is_refused(count, error):
  with pytest.raises(error, match=r"`count` \("):
    retention.RetainLatest(count)


def test_apply_points_the_state_file_at_what_is_kept_then_deletes(tmp_path):
  directory = str(tmp_path)
  for step in (1, 2, 3):
    for suffix in (".index", ".data-00000-of-00001"):
      (tmp_path / f"model.ckpt-{step}{suffix}").write_text("x")
  prefixes = [os.path.join(directory, f"model.ckpt-{s}") for s in (1, 2, 3)]
  retention.apply(directory, prefixes[1:], prefixes[:1])
  state = tf.train.get_checkpoint_state(directory)
  assert state.model_checkpoint_path == prefixes[2]
  assert list(state.all_model_checkpoint_paths) == prefixes[1:]
  assert sorted(os.listdir(directory)) == sorted(
      ["checkpoint"] + [f"model.ckpt-{s}{suffix}" for s in (2, 3)
                        for suffix in (".index", ".data-00000-of-00001")])

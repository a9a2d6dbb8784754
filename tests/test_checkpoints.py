"""checkpoints: fall back past broken checkpoints; refuse foreign ones."""

import logging as std_logging
import os

import pytest
import tensorflow as tf

from runner_models import write_checkpoint
from tpu_harness import checkpoints


@pytest.fixture
def three(tmp_path):
  """Checkpoints at steps 1, 2, 3 in tmp_path; returns their prefixes."""
  return [write_checkpoint(str(tmp_path), [[float(s)]] * 4, s)
          for s in (1, 2, 3)]


def _data_file(prefix):
  return tf.io.gfile.glob(prefix + ".data-*")[0]


def test_candidates_newest_first(tmp_path, three):
  assert checkpoints.candidates(str(tmp_path)) == three[::-1]
  assert [checkpoints.checkpoint_step(p) for p in three] == [1, 2, 3]
  assert checkpoints.checkpoint_step("/x/model.ckpt") is None


def _corrupt(how, prefix):
  if how == "truncated data":
    path = _data_file(prefix)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
      f.truncate(size // 2)
  elif how == "flipped bytes":
    path = _data_file(prefix)
    with open(path, "r+b") as f:
      f.seek(4)
      byte = f.read(1)
      f.seek(4)
      f.write(bytes([byte[0] ^ 0xFF]))
  elif how == "missing data":
    os.remove(_data_file(prefix))
  elif how == "garbage index":
    with open(prefix + ".index", "wb") as f:
      f.write(b"not an index")


@pytest.mark.parametrize("how", ["truncated data", "flipped bytes",
                                 "missing data", "garbage index"])
def test_broken_latest_falls_back_with_a_warning(tmp_path, three, how,
                                                 caplog):
  _corrupt(how, three[2])
  assert checkpoints.unreadable_reason(three[2]) is not None
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert checkpoints.latest_restorable(str(tmp_path)) == three[1]
  assert any("Skipping checkpoint" in r.getMessage() and
             three[2] in r.getMessage() for r in caplog.records)


def test_garbled_state_file_still_finds_checkpoints(tmp_path, three):
  with open(tmp_path / "checkpoint", "w") as f:
    f.write("this is { not a proto")
  assert checkpoints.latest_restorable(str(tmp_path)) == three[2]


def test_stale_state_file_does_not_hide_a_newer_checkpoint(tmp_path, three):
  tf.compat.v1.train.update_checkpoint_state(str(tmp_path), three[0])
  assert checkpoints.latest_restorable(str(tmp_path)) == three[2]


def test_nothing_restorable(tmp_path):
  assert checkpoints.latest_restorable(str(tmp_path / "absent")) is None
  assert checkpoints.latest_restorable(str(tmp_path)) is None


def test_check_matches_lists_every_difference(tmp_path):
  prefix = write_checkpoint(str(tmp_path), [[1.0]] * 4, 5)
  good = tf.compat.v1.get_variable("w", [4, 1])
  checkpoints.check_matches(prefix, [good])  # Matches: no error.
  missing = [tf.compat.v1.get_variable("x/w", [4, 1]),
             tf.compat.v1.get_variable("w2", [2])]
  reshaped = tf.compat.v1.get_variable("global_step_copy", [1])
  with pytest.raises(checkpoints.CheckpointMismatchError) as info:
    checkpoints.check_matches(prefix, [good] + missing + [reshaped])
  message = str(info.value)
  assert ("missing from the checkpoint: ['global_step_copy', 'w2', 'x/w']"
          in message)
  assert prefix in message and "warm_start_from" in message


def test_check_matches_reports_shapes(tmp_path):
  prefix = write_checkpoint(str(tmp_path), [[1.0]] * 4, 5)
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable("w", [3, 1])
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match=r"shape differs: \['w: checkpoint \(4, 1\) vs "
                       r"model \(3, 1\)'\]"):
      checkpoints.check_matches(prefix, [variable])


def test_prepare_model_dir_rejects_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("precious")
  with pytest.raises(ValueError, match=r"`model_dir` \('.*file'\) is a file, "
                     "not a directory"):
    checkpoints.prepare_model_dir(str(path))
  assert path.read_text() == "precious"
  with pytest.raises(ValueError, match="is not a writable directory"):
    checkpoints.prepare_model_dir(str(path / "sub"))


def test_prepare_model_dir_removes_interrupted_save_files(tmp_path, three):
  (tmp_path / "model.ckpt-4.index.tempstate123").write_text("partial")
  (tmp_path / "model.ckpt-4_temp").mkdir()
  (tmp_path / "model.ckpt-4_temp" / "part-0").write_text("partial")
  assert len(checkpoints.interrupted_save_files(str(tmp_path))) == 2
  checkpoints.prepare_model_dir(str(tmp_path))
  assert checkpoints.interrupted_save_files(str(tmp_path)) == []
  assert checkpoints.latest_restorable(str(tmp_path)) == three[2]
  assert not os.path.exists(tmp_path / ".tpu_harness_write_probe")


def test_relative_model_dir_finds_checkpoints_without_warnings(
    tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  os.makedirs("runs/model")
  prefixes = [write_checkpoint("runs/model", [[float(s)]] * 4, s)
              for s in (1, 2)]
  assert checkpoints.candidates("runs/model") == [
      os.path.normpath(p) for p in prefixes[::-1]]
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert checkpoints.latest_restorable("runs/model") == os.path.normpath(
        prefixes[1])
  assert not [r for r in caplog.records if r.levelno >= std_logging.WARNING]

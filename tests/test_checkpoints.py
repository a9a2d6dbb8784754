"""checkpoints: what belongs to a run; fall back past broken checkpoints;
refuse foreign ones."""

import logging as std_logging
import os
import threading

import pytest
import tensorflow as tf

from hooks import paths
import tpu_harness as th

from support.runner_models import write_checkpoint
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import restore_order


@pytest.fixture
def three(tmp_path):
  """Checkpoints at steps 1, 2, 3 in tmp_path; returns their prefixes."""
  return [write_checkpoint(str(tmp_path), [[float(s)]] * 4, s)
          for s in (1, 2, 3)]


def _data_file(prefix):
  return tf.io.gfile.glob(prefix + ".data-*")[0]


def test_scan_sorts_own_checkpoints_leftovers_and_others(tmp_path, three):
  for name in ("best.ckpt-20.index", "pretrained-50.index",
               "model.ckpt-7.index.tempstate123", "checkpoint.tmp"
               + "0" * 32, "notes.tempstate5", "model.ckpt.index",
               ".tpu_harness_lease.json." + "a" * 32 + ".tmp"):
    (tmp_path / name).write_text("x")
  for name in ("model.ckpt-4_temp", "eval_temp", "mine_temp"):
    (tmp_path / name).mkdir()
  found = contents.scan(str(tmp_path))
  assert found.checkpoints == three[::-1]
  assert found.leftovers == [
      str(tmp_path / name) for name in (
          ".tpu_harness_lease.json." + "a" * 32 + ".tmp",
          "checkpoint.tmp" + "0" * 32, "model.ckpt-4_temp",
          "model.ckpt-7.index.tempstate123")]
  assert found.foreign == ["best.ckpt-20.index", "model.ckpt.index",
                           "pretrained-50.index"]
  assert [contents.checkpoint_step(p) for p in three] == [1, 2, 3]
  assert contents.checkpoint_step("/x/model.ckpt") is None


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
  assert restore_order.unreadable_reason(three[2]) is not None
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert restore_order.latest_restorable(str(tmp_path)) == three[1]
  assert any("Skipping checkpoint" in r.getMessage() and
             three[2] in r.getMessage() for r in caplog.records)


def test_garbled_state_file_still_finds_checkpoints(tmp_path, three):
  with open(tmp_path / "checkpoint", "w") as f:
    f.write("this is { not a proto")
  assert restore_order.latest_restorable(str(tmp_path)) == three[2]


def test_stale_state_file_does_not_hide_a_newer_checkpoint(tmp_path, three):
  tf.compat.v1.train.update_checkpoint_state(str(tmp_path), three[0])
  assert restore_order.latest_restorable(str(tmp_path)) == three[2]


def test_nothing_restorable(tmp_path):
  assert restore_order.latest_restorable(str(tmp_path / "absent")) is None
  assert restore_order.latest_restorable(str(tmp_path)) is None


def test_all_checkpoints_broken_is_an_error_not_a_fresh_start(tmp_path,
                                                              three):
  for prefix, how in zip(three, ["truncated data", "flipped bytes",
                                 "garbage index"]):
    _corrupt(how, prefix)
  before = sorted(os.listdir(tmp_path))
  with pytest.raises(th.NoRestorableCheckpointError) as info:
    restore_order.latest_restorable(str(tmp_path))
  message = str(info.value)
  assert "holds 3 checkpoint(s) of this run, and none reads back" in message
  for prefix in three:
    assert prefix in message
  assert "Checksum does not match" in message
  assert "To start from scratch, move these files out" in message
  assert sorted(os.listdir(tmp_path)) == before


def test_checkpoints_of_other_names_are_never_adopted(tmp_path, caplog):
  write_checkpoint(str(tmp_path), [[9.0]] * 4, 50)
  os.rename(tmp_path / "model.ckpt-50.index", tmp_path / "pretrained-50.index")
  for suffix in (".data-00000-of-00001", ".meta"):
    if os.path.exists(tmp_path / f"model.ckpt-50{suffix}"):
      os.rename(tmp_path / f"model.ckpt-50{suffix}",
                tmp_path / f"pretrained-50{suffix}")
  with caplog.at_level(std_logging.INFO, logger="absl"):
    point = restore_order.resume_point(str(tmp_path))
  assert (point.checkpoint, point.step, point.recent) == (None, 0, [])
  assert any("Ignoring pretrained-50.index" in r.getMessage() and
             "never restored, rotated or deleted" in r.getMessage()
             for r in caplog.records)


def test_state_file_entries_outside_model_dir_are_ignored(tmp_path, caplog):
  original = tmp_path / "A"
  original.mkdir()
  prefixes = [write_checkpoint(str(original), [[float(s)]] * 4, s)
              for s in (1, 2)]
  # A plain Saver writes absolute paths; copy the directory as `cp -r` does.
  tf.compat.v1.train.update_checkpoint_state(
      str(original), prefixes[-1], all_model_checkpoint_paths=prefixes)
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(original, tmp_path / "B")
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    point = restore_order.resume_point(str(tmp_path / "B"))
  assert point.checkpoint == str(tmp_path / "B" / "model.ckpt-2")
  assert point.recent == [str(tmp_path / "B" / f"model.ckpt-{s}")
                          for s in (1, 2)]
  ignored = [r.getMessage() for r in caplog.records
             if "outside model_dir" in r.getMessage()]
  assert len(ignored) == 2 and prefixes[0] in ignored[0]


@pytest.mark.parametrize("keep,steps,kept", [
    (2, [1, 2, 3, 4, 5], [4, 5]),
    (5, [1, 2, 3], [1, 2, 3]),
    (0, [1, 2, 3], [1, 2, 3]),
    (1, [3], [3]),
])
def test_enforce_keep_max(tmp_path, keep, steps, kept):
  prefixes = [write_checkpoint(str(tmp_path), [[float(s)]] * 4, s)
              for s in steps]
  (tmp_path / "best.ckpt-1.index").write_text("not ours")
  result = contents.enforce_keep_max(str(tmp_path), prefixes, keep)
  assert [contents.checkpoint_step(p) for p in result] == kept
  assert sorted(int(name[len("model.ckpt-"):-len(".index")])
                for name in os.listdir(tmp_path)
                if name.startswith("model.ckpt-") and name.endswith(
                    ".index")) == kept
  assert not [name for name in os.listdir(tmp_path) if name.startswith(
      tuple(f"model.ckpt-{s}." for s in steps if s not in kept))]
  assert (tmp_path / "best.ckpt-1.index").read_text() == "not ours"
  if keep and len(steps) > keep:
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert [contents.checkpoint_step(p) for p in
            state.all_model_checkpoint_paths] == kept


def test_check_matches_lists_every_difference(tmp_path):
  prefix = write_checkpoint(str(tmp_path), [[1.0]] * 4, 5)
  good = tf.compat.v1.get_variable("w", [4, 1])
  restore_order.check_matches(prefix, [good])  # Matches: no error.
  missing = [tf.compat.v1.get_variable("x/w", [4, 1]),
             tf.compat.v1.get_variable("w2", [2])]
  reshaped = tf.compat.v1.get_variable("global_step_copy", [1])
  with pytest.raises(th.CheckpointMismatchError) as info:
    restore_order.check_matches(prefix, [good] + missing + [reshaped])
  message = str(info.value)
  assert ("missing from the checkpoint: ['global_step_copy', 'w2', 'x/w']"
          in message)
  assert prefix in message and "warm_start_from" in message


def test_check_matches_reports_dtypes(tmp_path):
  prefix = write_checkpoint(str(tmp_path), [[1.0]] * 4, 5)
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable("w", [4, 1], dtype=tf.float64)
    with pytest.raises(th.CheckpointMismatchError,
                       match=r"dtype differs: \['w: checkpoint float32 vs "
                       r"model float64'\]"):
      restore_order.check_matches(prefix, [variable])


def test_check_matches_reports_shapes(tmp_path):
  prefix = write_checkpoint(str(tmp_path), [[1.0]] * 4, 5)
  with tf.Graph().as_default():
    variable = tf.compat.v1.get_variable("w", [3, 1])
    with pytest.raises(th.CheckpointMismatchError,
                       match=r"shape differs: \['w: checkpoint \(4, 1\) vs "
                       r"model \(3, 1\)'\]"):
      restore_order.check_matches(prefix, [variable])


def test_prepare_model_dir_rejects_a_file(tmp_path):
  path = tmp_path / "file"
  path.write_text("precious")
  with pytest.raises(ValueError, match=r"`model_dir` \('.*file'\) is a file, "
                     "not a directory"):
    contents.prepare_model_dir(str(path))
  assert path.read_text() == "precious"
  with pytest.raises(ValueError, match="is not a writable directory"):
    contents.prepare_model_dir(str(path / "sub"))


def test_trainers_starting_together_do_not_share_a_write_probe(tmp_path):
  # Each probe is its own file: one caller never removes another's (a
  # shared name made one of two simultaneous starts fail, 1 in 10).
  errors = []

  def prepare():
    try:
      for _ in range(20):
        contents.prepare_model_dir(str(tmp_path))
    except ValueError as error:  # pragma: no cover - the failure shown
      errors.append(error)

  threads = [threading.Thread(target=prepare) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert errors == []
  assert os.listdir(tmp_path) == []
  # A probe left by a killed start is a leftover of the run.
  (tmp_path / (contents.WRITE_PROBE + "." + "a" * 32)).write_text("ok")
  assert contents.scan(str(tmp_path)).leftovers == [
      str(tmp_path / (contents.WRITE_PROBE + "." + "a" * 32))]


def test_resume_point_removes_only_its_own_interrupted_saves(tmp_path,
                                                             three):
  (tmp_path / "model.ckpt-4.index.tempstate123").write_text("partial")
  (tmp_path / "model.ckpt-4_temp").mkdir()
  (tmp_path / "model.ckpt-4_temp" / "part-0").write_text("partial")
  # Not leftovers of this run's saves: user data, other names, eval output.
  (tmp_path / "eval_temp").mkdir()
  (tmp_path / "eval_temp" / "events").write_text("eval results")
  (tmp_path / "my_temp").mkdir()
  (tmp_path / "data.tempstate7").write_text("user data")
  (tmp_path / "best.ckpt-9.index.tempstate1").write_text("another saver's")
  contents.prepare_model_dir(str(tmp_path))
  point = restore_order.resume_point(str(tmp_path))
  assert point.checkpoint == three[2] and point.step == 3
  assert point.recent == three
  assert contents.scan(str(tmp_path)).leftovers == []
  assert sorted(os.listdir(tmp_path)) == sorted(
      ["best.ckpt-9.index.tempstate1", "checkpoint", "data.tempstate7",
       "eval_temp", "my_temp"] + [
           f"model.ckpt-{s}.{ext}" for s in (1, 2, 3)
           for ext in ("data-00000-of-00001", "index", "meta")])
  assert (tmp_path / "eval_temp" / "events").read_text() == "eval results"


def test_relative_model_dir_finds_checkpoints_without_warnings(
    tmp_path, monkeypatch, caplog):
  monkeypatch.chdir(tmp_path)
  os.makedirs("runs/model")
  prefixes = [write_checkpoint("runs/model", [[float(s)]] * 4, s)
              for s in (1, 2)]
  assert contents.scan("runs/model").checkpoints == [
      os.path.normpath(p) for p in prefixes[::-1]]
  with caplog.at_level(std_logging.WARNING, logger="absl"):
    assert restore_order.latest_restorable("runs/model") == os.path.normpath(
        prefixes[1])
  assert not [r for r in caplog.records if r.levelno >= std_logging.WARNING]


def test_the_restore_order_reads_only_the_index_and_global_step(tmp_path,
                                                                three):
  _corrupt("flipped bytes", three[2])  # In `global_step`, the first tensor.
  order = restore_order.RestoreOrder(str(tmp_path))
  assert order.next() == (three[1], 2)
  assert list(order.broken) == [three[2]]
  order.skip(three[1], "failed to restore", "restore")
  assert order.next() == (three[0], 1)
  order.skip(three[0], "failed to restore", "restore")
  assert order.next() is None
  assert "holds 3 checkpoint(s)" in str(order.none_left())


def test_resume_point_after_a_failed_restore_takes_an_older_one(tmp_path,
                                                                three):
  first = restore_order.resume_point(str(tmp_path))
  assert (first.checkpoint, first.step) == (three[2], 3)
  first.order.skip(three[2], "Checksum", "restore")
  second = restore_order.resume_point(str(tmp_path), order=first.order)
  assert (second.checkpoint, second.step) == (three[1], 2)
  assert second.recent == three[:2]
  assert second.order.broken == {three[2]: "Checksum"}
  second.order.skip(three[1], "x", "restore")
  third = restore_order.resume_point(str(tmp_path), order=second.order)
  assert third.checkpoint == three[0]
  third.order.skip(three[0], "y", "restore")
  with pytest.raises(th.NoRestorableCheckpointError,
                     match=r"holds 3 checkpoint\(s\) of this run, and none "
                     r"reads back: .*model.ckpt-3 \(Checksum\)"):
    restore_order.resume_point(str(tmp_path), order=third.order)


def test_a_checkpoint_deleted_after_the_listing_is_rotated_not_broken(
    tmp_path, three):
  """A trainer beside rotated the newest away between the listing and the
  read: it is not skipped as broken; the listing is made again."""
  order = restore_order.RestoreOrder(str(tmp_path))
  listed = contents.scan(str(tmp_path))
  paths.delete_checkpoint(three[2])
  assert order.next(listed) == (three[1], 2)
  assert order.gone == [three[2]]
  assert not order.broken


def test_too_many_rotations_are_a_rotated_error(tmp_path, three):
  order = restore_order.RestoreOrder(str(tmp_path))
  for _ in range(restore_order.MAX_ROTATIONS - 1):
    order.rotated(three[2])
  with pytest.raises(th.CheckpointRotatedError,
                     match=r"rotated away .* 50 times in a row .*"
                     r"model.ckpt-3.* The checkpoints are fine.*"
                     r"keep_checkpoint_max"):
    order.rotated(three[2])


def test_a_checkpoint_is_deleted_index_first(tmp_path, three, monkeypatch):
  removed = []
  remove = tf.io.gfile.remove
  monkeypatch.setattr(tf.io.gfile, "remove",
                      lambda path: (removed.append(path), remove(path)))
  files = tf.io.gfile.glob(three[0] + ".*")
  paths.delete_checkpoint(three[0])
  assert removed[0] == three[0] + ".index"
  assert sorted(removed) == sorted(files)
  assert not tf.io.gfile.glob(three[0] + ".*")


@pytest.mark.parametrize("every_n_hours,listed,keep,left,kept", [
    # TF's default: none kept for good, the surplus rotated.
    (10000.0, [3, 4, 5], 2, [4, 5], [4, 5]),
    # Those older than the state file's oldest entry (the Saver kept them
    # for good) stay, and out of the rotation: a raised maximum too.
    (1.0, [3, 4, 5], 2, [1, 2, 4, 5], [4, 5]),
    (1.0, [5], 3, [1, 2, 3, 4, 5], [5]),
    # An unlisted one newer than the oldest entry (a save's orphan) is
    # rotated as any other: 4 is among the newest 2, 2 and 3 are not.
    (1.0, [2, 3, 5], 2, [1, 4, 5], [4, 5]),
    # A state file that lists none of them: all rotated.
    (1.0, [], 2, [4, 5], [4, 5]),
])
@pytest.mark.parametrize("relative", [False, True])
def test_enforce_keep_max_leaves_checkpoints_kept_every_n_hours(
    tmp_path, monkeypatch, every_n_hours, listed, keep, left, kept,
    relative):
  prefixes = [write_checkpoint(str(tmp_path), [[float(s)]] * 4, s)
              for s in (1, 2, 3, 4, 5)]
  # As TF's Saver leaves its state file.
  if listed:
    tf.compat.v1.train.update_checkpoint_state(
        str(tmp_path), prefixes[listed[-1] - 1],
        all_model_checkpoint_paths=[prefixes[s - 1] for s in listed])
  else:
    os.remove(tmp_path / "checkpoint")
  model_dir = str(tmp_path)
  if relative:
    monkeypatch.chdir(tmp_path.parent)
    model_dir = tmp_path.name
    prefixes = [os.path.join(model_dir, os.path.basename(p))
                for p in prefixes]
  result = contents.enforce_keep_max(model_dir, prefixes, keep,
                                     every_n_hours)
  assert [contents.checkpoint_step(p) for p in result] == kept
  assert sorted(int(name[len("model.ckpt-"):-len(".index")])
                for name in os.listdir(tmp_path)
                if name.startswith("model.ckpt-")
                and name.endswith(".index")) == left

"""AsyncCheckpointWriter: background writes a Saver-compatible checkpoint,
reports completion once, and hands back a failure instead of losing it."""

import os

import numpy as np
import pytest
import tensorflow as tf

from hooks.async_writer import AsyncCheckpointWriter


def _graph():
  step = tf.compat.v1.train.get_or_create_global_step()
  w = tf.compat.v1.get_variable("scope/w", initializer=[1.0, 2.0, 3.0])
  return step, w


def test_writes_what_a_saver_restores(tmp_path):
  step, w = _graph()
  writer = AsyncCheckpointWriter([step, w], str(tmp_path / "model.ckpt"))
  writer.configure(max_to_keep=None, recent=[], save_relative_paths=True)
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    session.run(step.assign(7))
    writer.start(7, writer.snapshot(session))
    assert writer.wait() == 7
    assert writer.collect() is None  # Reported once.
    session.run(w.assign([0.0, 0.0, 0.0]))
    tf.compat.v1.train.Saver().restore(session,
                                       str(tmp_path / "model.ckpt-7"))
    np.testing.assert_array_equal(session.run(w), [1.0, 2.0, 3.0])
  writer.close()
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("model.ckpt-7")
  state = open(tmp_path / "checkpoint").read()
  assert 'model_checkpoint_path: "model.ckpt-7"' in state  # Relative.


def test_a_failed_write_is_raised_once_and_the_state_is_untouched(tmp_path):
  step, w = _graph()
  writer = AsyncCheckpointWriter([step, w], str(tmp_path / "model.ckpt"))
  writer.configure(max_to_keep=None, recent=[], save_relative_paths=True,
                   meta_graph=lambda: b"meta")
  os.makedirs(tmp_path / "model.ckpt-1.meta")  # The .meta write fails.
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    writer.start(1, writer.snapshot(session))
    with pytest.raises(Exception):
      writer.wait()
    assert writer.wait() is None  # The error was handed over once.
  writer.close()
  assert not os.path.exists(tmp_path / "checkpoint")


def test_start_leaves_a_failed_write_for_wait_to_report(tmp_path):
  step, w = _graph()
  writer = AsyncCheckpointWriter([step, w], str(tmp_path / "model.ckpt"))
  writer.configure(max_to_keep=None, recent=[], save_relative_paths=True,
                   meta_graph=lambda: b"meta")
  os.makedirs(tmp_path / "model.ckpt-1.meta")  # Write 1 fails.
  with tf.compat.v1.Session() as session:
    session.run(tf.compat.v1.global_variables_initializer())
    writer.start(1, writer.snapshot(session))
    writer.start(2, writer.snapshot(session))  # Joins write 1; no raise.
    with pytest.raises(Exception):
      writer.wait()  # Write 1's failure, handed over here.
  writer.close()

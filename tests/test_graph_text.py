"""hooks.graph_text.GraphTextWrite: graph.pbtxt, written on a thread."""

import os

import pytest
import tensorflow as tf

import hooks
from hooks.graph_text import GraphTextWrite


def _graph_def():
  tf.constant([1.0, 2.0], name="c")
  return tf.compat.v1.get_default_graph().as_graph_def(add_shapes=True)


def test_writes_the_text_tf_write_graph_writes(tmp_path):
  graph_def = _graph_def()
  os.makedirs(tmp_path / "ours")
  GraphTextWrite(str(tmp_path / "ours"), graph_def).wait()
  tf.io.write_graph(graph_def, str(tmp_path / "tf"), "graph.pbtxt")
  assert ((tmp_path / "ours" / "graph.pbtxt").read_text()
          == (tmp_path / "tf" / "graph.pbtxt").read_text())


def test_a_failed_write_leaves_nothing_and_says_so(tmp_path):
  # A directory in its place here; a full disk in life.
  os.makedirs(tmp_path / "graph.pbtxt" / "taken")
  writing = GraphTextWrite(str(tmp_path), _graph_def())
  with pytest.raises(hooks.CheckpointSaveError,
                     match=r"Writing .*graph\.pbtxt failed: \w+Error: .*"
                     r"Nothing was left of it \(a full disk\?\)\."):
    writing.wait()
  assert os.listdir(tmp_path) == ["graph.pbtxt"]

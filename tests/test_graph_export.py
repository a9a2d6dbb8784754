"""hooks.graph_export.GraphExport: the session's graph exported once, on a
thread when the graph is finalized."""

import os
import threading

import pytest
import tensorflow as tf

import hooks
from hooks.graph_export import GraphExport


class _Writer:
  """A FileWriter's two calls the export makes, recorded with the thread
  that made them; `add_event` waits for `release` when one is given, and
  raises `error` when one is given."""

  def __init__(self, release=None, error=None):
    self.calls = []
    self._release = release
    self._error = error

  def add_event(self, event):
    # Bounded: an export on the caller's thread would wait here for good.
    if self._release is not None and not self._release.wait(timeout=30):
      raise TimeoutError("add_event was not released")
    if self._error is not None:
      raise self._error
    self.calls.append(("event", event, threading.current_thread()))

  def add_meta_graph(self, meta_graph_def):
    self.calls.append(("meta", meta_graph_def, threading.current_thread()))

  def get_logdir(self):
    return "/logs/run"


def _graph(finalized=True):
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.Variable([1.0, 2.0], name="w")
    saver = tf.compat.v1.train.Saver()
  if finalized:
    graph.finalize()
  return graph, saver.saver_def


def test_writes_the_text_tf_write_graph_writes(tmp_path):
  graph, saver_def = _graph()
  os.makedirs(tmp_path / "ours")
  GraphExport(graph, saver_def, _Writer(), str(tmp_path / "ours")).wait()
  tf.io.write_graph(graph.as_graph_def(add_shapes=True), str(tmp_path / "tf"),
                    "graph.pbtxt")
  assert ((tmp_path / "ours" / "graph.pbtxt").read_text()
          == (tmp_path / "tf" / "graph.pbtxt").read_text())


def test_the_meta_graph_and_events_are_what_tf_exports(tmp_path):
  graph, saver_def = _graph()
  writer = _Writer()
  export = GraphExport(graph, saver_def, writer, None)
  meta_graph_def = tf.compat.v1.MetaGraphDef.FromString(export.meta_graph())
  expected = tf.compat.v1.train.export_meta_graph(
      graph_def=graph.as_graph_def(add_shapes=True), saver_def=saver_def,
      graph=graph)
  assert meta_graph_def == expected
  export.wait()
  (_, event, _), (_, written_meta, _) = writer.calls
  assert (tf.compat.v1.GraphDef.FromString(event.graph_def)
          == graph.as_graph_def(add_shapes=True))
  assert event.wall_time > 0
  assert written_meta == expected
  assert not os.listdir(tmp_path)  # No text asked for.


def test_a_finalized_graph_is_exported_on_a_thread():
  graph, saver_def = _graph()
  release = threading.Event()
  writer = _Writer(release=release)
  # The constructor returns while the export waits in add_event (on the
  # caller's thread it would wait 30 s, then fail below).
  export = GraphExport(graph, saver_def, writer, None)
  release.set()
  assert export.meta_graph()
  export.wait()
  assert [(kind, thread.name) for kind, _, thread in writer.calls] == [
      ("event", "graph_export"), ("meta", "graph_export")]


def test_a_graph_that_may_change_is_exported_before_the_constructor_returns():
  graph, saver_def = _graph(finalized=False)
  writer = _Writer()
  export = GraphExport(graph, saver_def, writer, None)
  assert [kind for kind, _, thread in writer.calls
          if thread is threading.current_thread()] == ["event", "meta"]
  with graph.as_default():
    tf.constant(3.0, name="added_later")
  names = {node.name for node in tf.compat.v1.MetaGraphDef.FromString(
      export.meta_graph()).graph_def.node}
  assert "w" in names and "added_later" not in names
  export.wait()


def test_an_export_that_fails_raises_from_meta_graph_and_wait():
  graph, saver_def = _graph()
  export = GraphExport(graph, saver_def,
                       _Writer(error=ValueError("no room for events")), None)
  with pytest.raises(ValueError, match="no room for events"):
    export.meta_graph()
  with pytest.raises(ValueError, match="no room for events"):
    export.wait()


def test_a_failed_text_write_leaves_nothing_and_says_so(tmp_path):
  # A directory in its place here; a full disk in life.
  os.makedirs(tmp_path / "graph.pbtxt" / "taken")
  graph, saver_def = _graph()
  export = GraphExport(graph, saver_def, _Writer(), str(tmp_path))
  assert export.meta_graph()  # The text comes after the MetaGraphDef.
  with pytest.raises(hooks.CheckpointSaveError,
                     match=r"Writing .*graph\.pbtxt failed: \w+Error: .*"
                     r"Nothing was left of it \(a full disk\?\)\."):
    export.wait()
  assert os.listdir(tmp_path) == ["graph.pbtxt"]


def test_without_background_a_finalized_graph_is_exported_at_once(tmp_path):
  # Its text alone is written on the thread.
  graph, saver_def = _graph()
  writer = _Writer()
  export = GraphExport(graph, saver_def, writer, str(tmp_path),
                       background=False)
  assert [(kind, thread) for kind, _, thread in writer.calls] == [
      ("event", threading.current_thread()),
      ("meta", threading.current_thread())]
  export.wait()
  assert os.listdir(tmp_path) == ["graph.pbtxt"]


@pytest.mark.parametrize("background", [True, False])
def test_events_that_cannot_be_written_are_a_save_error(background):
  graph, saver_def = _graph()
  export = GraphExport(
      graph, saver_def,
      _Writer(error=tf.errors.ResourceExhaustedError(None, None,
                                                     "disk full")),
      None, background=background)
  with pytest.raises(hooks.CheckpointSaveError,
                     match=r"^Writing the graph's events into /logs/run "
                     r"failed: "
                     r"ResourceExhaustedError: disk full\.$"):
    export.meta_graph()
  with pytest.raises(hooks.CheckpointSaveError):
    export.wait()

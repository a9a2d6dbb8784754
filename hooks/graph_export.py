"""The session's graph, exported once at its creation: the graph and meta
graph events, the MetaGraphDef every `.meta` of the session gets, and
`graph.pbtxt`; on a thread while the session's first checkpoint is saved.

Exporting is Python: for a small ResNet in a device loop, the GraphDef with
shapes and the MetaGraphDef take 0.01 s alone and several times that beside
the input's start, and the text of `graph.pbtxt` 0.05 s; the save's
`Session.run` lets the thread run. The GraphDef and MetaGraphDef are made
on the thread only where the caller asks and the graph is finalized (it
cannot change, as `MonitoredSession` leaves it); otherwise before the
constructor returns, and only the text is written on the thread.

The events are written before the MetaGraphDef is handed out, so a save
that writes `.meta` (and then its CHECKPOINT event) comes after them.
`graph.pbtxt` is written atomically (`paths.write_atomically`): a failed
write leaves nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Optional

from google.protobuf import text_format
import tensorflow as tf

from hooks import paths
from hooks.checkpointer import CheckpointSaveError


class GraphExport:
  """Exports a graph once: events, the serialized MetaGraphDef, and
  `graph.pbtxt`."""

  def __init__(self, graph: tf.Graph,
               saver_def: Optional[tf.compat.v1.train.SaverDef],
               summary_writer, text_dir: Optional[str],
               background: bool = True):
    """Starts the export.

    Args:
      graph: the session's graph.
      saver_def: the SaverDef the MetaGraphDef carries, or None.
      summary_writer: the FileWriter the graph and meta graph events go to.
      text_dir: the existing directory to write `graph.pbtxt` into (a local
        path or a `gs://` URL), or None for no text.
      background: make the GraphDef, the MetaGraphDef and the events on
        the thread too, where `graph` is finalized (else they are made
        before this returns).
    """
    self._graph = graph
    self._saver_def = saver_def
    self._writer = summary_writer
    self._text_path = (None if text_dir is None
                       else paths.join(text_dir, "graph.pbtxt"))
    self._graph_def: Optional[tf.compat.v1.GraphDef] = None
    self._meta_graph: Optional[bytes] = None
    self._exported = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread: Optional[threading.Thread] = None
    in_background = background and graph.finalized
    if not in_background:
      self._export()
    if in_background or (self._text_path is not None and self._error is None):
      self._thread = threading.Thread(
          target=self._run, args=(in_background,), daemon=True,
          name="graph_export")
      self._thread.start()

  def meta_graph(self) -> bytes:
    """The serialized MetaGraphDef, once exported (waits for it).

    Raises:
      CheckpointSaveError: writing the events failed in TensorFlow's
        filesystem layer.
      BaseException: anything else exporting raised, as it was.
    """
    self._exported.wait()
    if self._meta_graph is None:
      raise self._error
    return self._meta_graph

  def wait(self) -> None:
    """Waits for the whole export.

    Raises:
      CheckpointSaveError: writing the events or `graph.pbtxt` failed in
        TensorFlow's filesystem layer.
      BaseException: anything else the export raised, as it was.
    """
    self.join()
    if self._error is not None:
      raise self._error

  def join(self) -> None:
    """Waits for the whole export and raises nothing: for a caller that
    has an error of its own to raise."""
    if self._thread is not None:
      self._thread.join()

  def _run(self, export: bool) -> None:
    if export:
      self._export()
    if self._text_path is None or self._error is not None:
      return
    try:
      paths.write_atomically(self._text_path,
                             text_format.MessageToString(self._graph_def))
    except tf.errors.OpError as error:
      self._error = _save_error(f"Writing {self._text_path}", error,
                                "Nothing was left of it (a full disk?).")
    except BaseException as error:  # pylint: disable=broad-except
      self._error = error

  def _export(self) -> None:
    """The GraphDef, the events and the MetaGraphDef; an error in
    `_error`, set before `_exported` is."""
    try:
      graph_def = self._graph.as_graph_def(add_shapes=True)
      # What Saver.save would export as `.meta` on every save. In the
      # graph's context: a thread starts with none (eager), and the
      # collections' variables serialize only in their graph's.
      with self._graph.as_default():
        meta_graph_def = tf.compat.v1.train.export_meta_graph(
            graph_def=graph_def, saver_def=self._saver_def,
            graph=self._graph)
      # The event FileWriter.add_graph writes, from the GraphDef in hand:
      # add_graph(graph) would serialize the graph again, and
      # add_graph(graph_def=) logs a deprecation warning at every session.
      self._writer.add_event(tf.compat.v1.Event(
          wall_time=time.time(), graph_def=graph_def.SerializeToString()))
      self._writer.add_meta_graph(meta_graph_def)
      self._graph_def = graph_def
      self._meta_graph = meta_graph_def.SerializeToString()
    except tf.errors.OpError as error:
      self._error = _save_error(
          f"Writing the graph's events into {self._writer.get_logdir()}",
          error, "")
    except BaseException as error:  # pylint: disable=broad-except
      self._error = error
    finally:
      self._exported.set()


def _save_error(what: str, error: tf.errors.OpError,
                after: str) -> CheckpointSaveError:
  """`error` (in TensorFlow's filesystem layer) as a CheckpointSaveError
  saying `what` failed."""
  saved = CheckpointSaveError(
      f"{what} failed: {type(error).__name__}: {error.message}. {after}"
      .rstrip())
  saved.__cause__ = error
  return saved

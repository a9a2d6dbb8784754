"""The session's graph, exported once at its creation: the graph and meta
graph events, the MetaGraphDef every `.meta` of the session gets, and
`graph.pbtxt`; on a thread while the session's first checkpoint is saved.

Exporting is Python: for a small ResNet in a device loop, the GraphDef with
shapes and the MetaGraphDef take about 0.05 s, as long as the save itself,
and the text of `graph.pbtxt` longer; the save's `Session.run` lets the
thread run. Only a finalized graph (one that cannot change, as
`MonitoredSession` leaves it) is exported on a thread; another is exported
at once, before the caller goes on.

The thread writes the two events before it hands out the MetaGraphDef, so
a save that writes `.meta` (and then its CHECKPOINT event) comes after
them. `graph.pbtxt` is written atomically (`paths.write_atomically`): a
failed write leaves nothing.
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
               summary_writer, text_dir: Optional[str]):
    """Starts the export: on a thread if `graph` is finalized, else done
    before this returns.

    Args:
      graph: the session's graph.
      saver_def: the SaverDef the MetaGraphDef carries, or None.
      summary_writer: the FileWriter the graph and meta graph events go to.
      text_dir: the existing directory to write `graph.pbtxt` into (a local
        path or a `gs://` URL), or None for no text.
    """
    self._graph = graph
    self._saver_def = saver_def
    self._writer = summary_writer
    self._text_path = (None if text_dir is None
                       else paths.join(text_dir, "graph.pbtxt"))
    self._meta_graph: Optional[bytes] = None
    self._exported = threading.Event()
    self._error: Optional[BaseException] = None
    self._thread: Optional[threading.Thread] = None
    if graph.finalized:
      self._thread = threading.Thread(target=self._run, daemon=True,
                                      name="graph_export")
      self._thread.start()
    else:
      self._run()

  def meta_graph(self) -> bytes:
    """The serialized MetaGraphDef, once exported (waits for it).

    Raises:
      BaseException: what exporting raised, as it was.
    """
    self._exported.wait()
    if self._meta_graph is None:
      raise self._error
    return self._meta_graph

  def wait(self) -> None:
    """Waits for the whole export.

    Raises:
      CheckpointSaveError: writing `graph.pbtxt` failed in TensorFlow's
        filesystem layer.
      BaseException: anything else the export raised, as it was.
    """
    if self._thread is not None:
      self._thread.join()
    if self._error is not None:
      raise self._error

  def _run(self) -> None:
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
      self._meta_graph = meta_graph_def.SerializeToString()
    except BaseException as error:  # pylint: disable=broad-except
      self._error = error
      return
    finally:
      self._exported.set()  # After the error, which meta_graph() raises.
    if self._text_path is None:
      return
    try:
      paths.write_atomically(self._text_path,
                             text_format.MessageToString(graph_def))
    except tf.errors.OpError as error:
      self._error = CheckpointSaveError(
          f"Writing {self._text_path} failed: {type(error).__name__}: "
          f"{error.message}. Nothing was left of it (a full disk?).")
      self._error.__cause__ = error
    except BaseException as error:  # pylint: disable=broad-except
      self._error = error

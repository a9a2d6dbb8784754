"""`graph.pbtxt`: the session's graph as text, written on a thread while
the session's first checkpoint is saved.

TF's text formatting of a GraphDef is Python, as long as the save on a
small model; the save's `Session.run` lets it run. The file is written
atomically (`paths.write_atomically`): a failed write leaves nothing.
"""

from __future__ import annotations

import threading
from typing import Optional

from google.protobuf import text_format
import tensorflow as tf

from hooks import paths
from hooks.checkpointer import CheckpointSaveError


class GraphTextWrite:
  """Writes a GraphDef as `graph.pbtxt` in a directory, on a thread."""

  def __init__(self, directory: str, graph_def: tf.compat.v1.GraphDef):
    """Starts the write.

    Args:
      directory: the existing directory to write `graph.pbtxt` into; a
        local path or a `gs://` URL.
      graph_def: the graph to write.
    """
    self._path = paths.join(directory, "graph.pbtxt")
    self._error: Optional[BaseException] = None

    def run():
      try:
        paths.write_atomically(self._path,
                               text_format.MessageToString(graph_def))
      except BaseException as error:  # pylint: disable=broad-except
        self._error = error

    self._thread = threading.Thread(target=run, daemon=True)
    self._thread.start()

  def wait(self) -> None:
    """Waits for the write.

    Raises:
      CheckpointSaveError: writing failed in TensorFlow's filesystem layer.
      BaseException: anything else the write raised, as it was.
    """
    self._thread.join()
    if self._error is None:
      return
    if isinstance(self._error, tf.errors.OpError):
      raise CheckpointSaveError(
          f"Writing {self._path} failed: {type(self._error).__name__}: "
          f"{self._error.message}. Nothing was left of it (a full disk?).") \
          from self._error
    raise self._error

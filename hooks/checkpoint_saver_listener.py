"""Callbacks around the saves of `CheckpointSaverHook`."""

from __future__ import annotations

from typing import Optional

import tensorflow as tf


class CheckpointSaverListener(tf.compat.v1.train.CheckpointSaverListener):
  """Interface for actions taken before or after a checkpoint save.

  Call order, for a hook with listeners `[a, b]`::

    hook.begin()                     -> a.begin(); b.begin()
    hook.after_create_session(s)     -> save at the session's current step
    every save at step N:            -> a.before_save(s, N); b.before_save(s, N)
                                        ...checkpoint written...
                                        a.after_save(s, N); b.after_save(s, N)
    hook.end(s) at final step M:     -> a save at M unless M was just saved
                                        a.end(s, M); b.end(s, M)

  `after_save` returning True asks training to stop (the hook calls
  `run_context.request_stop()`); every listener's `after_save` still runs.
  With `steps_per_run=N` the hook sees the global step only between runs, so
  N is the finest save granularity.

  This class subclasses TF's `tf.compat.v1.train.CheckpointSaverListener`, so
  listeners written for TF work with our hook, and ours with TF's hook.
  """

  def begin(self) -> None:
    """Called once, in the hook's `begin()`, before the graph is finalized."""

  def before_save(self, session: tf.compat.v1.Session,
                  global_step_value: int) -> None:
    """Called right before a checkpoint is written."""

  def after_save(self, session: tf.compat.v1.Session,
                 global_step_value: int) -> Optional[bool]:
    """Called right after a checkpoint is written.

    Returns:
      True to request that training stop; None or False to go on.
    """

  def end(self, session: tf.compat.v1.Session, global_step_value: int) -> None:
    """Called once at the end of the session, after the final save."""

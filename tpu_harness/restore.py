"""Sessions restored from a checkpoint, for evaluate and predict.

Evaluation may run beside a trainer whose rotation deletes old checkpoints.
The checkpoint is therefore chosen as late as possible, after the graph is
built and just before the session restores it; if it is gone all the same
when the session reads it, the graph is built again and the newest
checkpoint chosen again (up to `ATTEMPTS` times).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

from tpu_harness import checkpoints
from tpu_harness import spec as spec_lib
from tpu_harness import storage
from tpu_harness.device_loop import BuiltLoop
from tpu_harness.infeed import InfeedHook

ATTEMPTS = 3


@contextlib.contextmanager
def restored(build: Callable[[], BuiltLoop],
             choose: Callable[[], str],
             *,
             fixed: bool,
             master: str,
             session_config: tf.compat.v1.ConfigProto,
             hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]
             = None,
             prepare: Callable[[], None] = lambda: None
             ) -> Iterator[Tuple[BuiltLoop, tf.compat.v1.train.MonitoredSession,
                                 str]]:
  """In a new graph, builds a loop with `build`; chooses the checkpoint
  with `choose`; calls `prepare` (once); opens a session restored from the
  checkpoint with the loop's hooks; yields (loop, session, checkpoint).

  Args:
    build: builds the loop in the default graph (which has a global step).
    choose: returns the checkpoint to restore.
    fixed: the caller named the checkpoint: do not choose again when it is
      gone.
    master: the session target.
    session_config: the device loop's session configuration.
    hooks: more hooks for the session.
    prepare: checks to make once the checkpoint is known, before any work.

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the model.
    Exception: what restoring raised, if the checkpoint is still there or
      was named by the caller.
  """
  attempts = 1 if fixed else ATTEMPTS
  for attempt in range(1, attempts + 1):
    with tf.Graph().as_default():
      spec_lib.create_global_step()
      loop = build()
      checkpoint = choose()
      if attempt == 1:
        prepare()
      try:
        session = _open(loop, checkpoint, master, session_config, hooks)
      except (tf.errors.NotFoundError, ValueError):
        if attempt == attempts or storage.stat_or_none(
            checkpoint + ".index") is not None:
          raise
        logging.info("Checkpoint %s was deleted before it could be read "
                     "(rotated by a trainer beside?); using the newest one.",
                     checkpoint)
        continue
      with session:
        yield loop, session, checkpoint
      return


def scaffold_for(spec, default_saver: Callable[[], tf.compat.v1.train.Saver]
                 ) -> Tuple[tf.compat.v1.train.Scaffold, bool]:
  """The session's Scaffold: the spec's `scaffold_fn()` (called here, once,
  on the host), with `default_saver()` where it has no saver.

  Returns:
    (the Scaffold, whether its saver is the user's).
  """
  user = spec.scaffold_fn() if spec is not None and spec.scaffold_fn else None
  if user is None:
    return tf.compat.v1.train.Scaffold(saver=default_saver()), False
  if not isinstance(user, tf.compat.v1.train.Scaffold):
    raise TypeError(f"`scaffold_fn` must return a "
                    f"tf.compat.v1.train.Scaffold, got {user!r}.")
  if user.saver is not None:
    return tf.compat.v1.train.Scaffold(copy_from_scaffold=user), True
  return tf.compat.v1.train.Scaffold(saver=default_saver(),
                                     copy_from_scaffold=user), False


def _open(loop: BuiltLoop, checkpoint: str, master: str,
          session_config: tf.compat.v1.ConfigProto,
          hooks) -> tf.compat.v1.train.MonitoredSession:
  scaffold, users_saver = scaffold_for(loop.spec, tf.compat.v1.train.Saver)
  if not users_saver:
    # A user's saver (e.g. mapping moving-average names onto the model's
    # variables) restores what it was built for; TF's restore says what is
    # missing then.
    checkpoints.check_matches(checkpoint, tf.compat.v1.global_variables())
  creator = tf.compat.v1.train.ChiefSessionCreator(
      scaffold=scaffold, checkpoint_filename_with_path=checkpoint,
      master=master, config=session_config)
  spec_hooks = loop.spec.hooks_for_mode if loop.spec is not None else ()
  return tf.compat.v1.train.MonitoredSession(
      session_creator=creator,
      hooks=list(loop.hooks) + [InfeedHook(loop.infeed)] + list(spec_hooks)
      + list(hooks or []))

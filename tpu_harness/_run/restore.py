"""Sessions restored from a checkpoint: reading it once, telling a broken
checkpoint from other failures.

`CheckedRestore` is the session creator of training, evaluation and
prediction: it restores the checkpoint (the one full read of it), retries
transient storage errors, and when the restore fails otherwise reads the
checkpoint through to tell whether its files are to blame
(`errors.CheckpointRestoreError`: the caller falls back to an older
one) or not (the error is raised as it is).

Evaluation may run beside a trainer whose rotation deletes old checkpoints
(with `keep_checkpoint_max=1`, each one a moment after the next is saved).
The checkpoint is therefore chosen as late as possible, after the graph is
built and just before the session restores it; if it is gone all the same
when the session reads it, the newest is chosen again and restored at once
(the same graph), a bounded number of times
(`restore_order.MAX_ROTATIONS`, then `errors.CheckpointRotatedError`). A
checkpoint that does not restore is skipped with a warning and the next
older one chosen, unless the caller named it.
"""

from __future__ import annotations

import contextlib
from typing import (Callable, Iterator, Optional, Sequence,
                    Tuple)

import tensorflow as tf

from hooks import paths
from hooks import validation
from tpu_harness import errors
from tpu_harness import spec as spec_lib
from tpu_harness._infeed.protocol import InfeedHook
from tpu_harness._model_dir import restore_order
from tpu_harness._model_dir import storage
from tpu_harness._run.job import Job
from tpu_harness.config import TPUConfig
from tpu_harness.loops.device_loop import BuiltLoop
from tpu_harness.tpu import host_watch
from tpu_harness.tpu import pod


class CheckedRestore(tf.compat.v1.train.SessionCreator):
  """`tf.compat.v1.train.ChiefSessionCreator` restoring `checkpoint` (or
  initializing, with None), with transient storage errors retried and a
  restore that fails because the checkpoint's files do not read back raised
  as `errors.CheckpointRestoreError`; one readiness check fewer (see
  `_prepare`)."""

  def __init__(self, checkpoint: Optional[str], *,
               scaffold: tf.compat.v1.train.Scaffold, master: str = "",
               config: Optional[tf.compat.v1.ConfigProto] = None,
               tpu: Optional[TPUConfig] = None,
               rechoose: Optional[Callable[[str], str]] = None,
               reset_pod: bool = False):
    """Initializes the creator.

    Args:
      checkpoint: the checkpoint to restore; None: initialize.
      scaffold: the session's Scaffold (its saver restores).
      master: the session's target.
      config: the session's configuration.
      tpu: the TPUConfig, whose `hosts` make a pod (see
        `tpu_harness.tpu.pod`).
      rechoose: when the checkpoint was deleted before it was restored,
        `rechoose(gone_checkpoint)` returns the one to restore instead (it
        raises when it gives up); None: the deletion is raised.
      reset_pod: on a pod, first close the sessions earlier chiefs left on
        it (`pod.reset`; the trainer's, which holds the lease).
    """
    self.checkpoint = checkpoint
    self._scaffold = scaffold
    self._master = master
    self._config = config
    self._ready_for_local_init: Optional[bool] = None  # See `_prepare`.
    self._tpu = tpu or TPUConfig()
    self._hosts = self._tpu.hosts
    self._rechoose = rechoose
    self._reset_pod = reset_pod
    self._created = False

  def create_session(self) -> tf.compat.v1.Session:
    if self._hosts:
      if self._created:
        # MonitoredSession asks again when a run failed with an error it
        # takes for a preemption: on a pod, a host went away.
        raise pod.lost_hosts_error(
            self._hosts, "a run failed and the session had to be created "
            "again; the log above has the error")
      # TF would wait for a missing host forever.
      pod.wait_for_hosts(self._hosts, self._tpu.host_wait_secs)
      if self._reset_pod:
        pod.reset(self._hosts, self._tpu.host_timeout_secs)
    self._created = True
    if not self._hosts:
      return self._create()
    watch = host_watch.HostWatch(self._hosts, self._tpu.host_timeout_secs)
    watch.start()
    try:
      # Restoring runs on the pod too: bounded like every run there.
      return pod.for_pod(watch.run(self._create), self._hosts, watch)
    except BaseException:
      watch.stop()
      raise

  def _create(self) -> tf.compat.v1.Session:
    while True:
      if self.checkpoint is None:
        return self._prepare()
      try:
        return storage.retry(
            self._prepare, f"restoring checkpoint {self.checkpoint}",
            exists=lambda: storage.checkpoint_exists(self.checkpoint))
      except (tf.errors.OpError, ValueError) as error:
        if self._rechoose is not None and restore_order.gone(
            self.checkpoint):
          self.checkpoint = self._rechoose(self.checkpoint)
          continue
        failure = restore_order.restore_failure(self.checkpoint)
        if failure is None:
          raise
        raise failure from error

  def _prepare(self) -> tf.compat.v1.Session:
    """What `tf.compat.v1.train.ChiefSessionCreator` does: a session
    restored from `self.checkpoint` (None: initialized), its local
    variables initialized, checked ready; but for the check that the model
    is ready for the local initialization, unless the scaffold or graph
    asks for one. TF's default checks every global variable before the
    local initialization, and its ready check every variable after it; on a
    chief, the second check tells the same (a global variable the
    initialization or restore left out), and a run of its own costs TF an
    executor over every variable (about 40 ms for 60 variables of a small
    ResNet, per train() and per evaluate()). A local initialization that
    reads a global variable left out fails naming it."""
    scaffold = self._scaffold
    if self._ready_for_local_init is None:
      # Whether one was asked for, known before the first finalize makes
      # TF's default (hooks' begin() may add to the collection).
      self._ready_for_local_init = (
          scaffold.ready_for_local_init_op is not None
          or bool(tf.compat.v1.get_collection(
              tf.compat.v1.GraphKeys.READY_FOR_LOCAL_INIT_OP)))
    scaffold.finalize()
    manager = tf.compat.v1.train.SessionManager(
        local_init_op=scaffold.local_init_op,
        local_init_feed_dict=scaffold.local_init_feed_dict,
        ready_op=scaffold.ready_op,
        ready_for_local_init_op=(scaffold.ready_for_local_init_op
                                 if self._ready_for_local_init else None),
        graph=tf.compat.v1.get_default_graph())
    return manager.prepare_session(
        self._master, saver=scaffold.saver,
        checkpoint_filename_with_path=self.checkpoint, config=self._config,
        init_op=scaffold.init_op, init_feed_dict=scaffold.init_feed_dict,
        init_fn=scaffold.init_fn)


@contextlib.contextmanager
def restored(build: Callable[[], BuiltLoop],
             choose: Callable[[restore_order.RestoreOrder], str],
             order: restore_order.RestoreOrder,
             *,
             fixed: bool,
             master: str,
             session_config: tf.compat.v1.ConfigProto,
             hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]]
             = None,
             prepare: Callable[[], None] = lambda: None,
             tpu: Optional[TPUConfig] = None,
             variable_device: str = "",
             ) -> Iterator[Tuple[BuiltLoop, tf.compat.v1.train.MonitoredSession,
                                 str]]:
  """In a new graph, builds a loop with `build`; chooses the checkpoint
  with `choose`; calls `prepare` (once); opens a session restored from the
  checkpoint with the loop's hooks; yields (loop, session, checkpoint).

  Args:
    build: builds the loop in the default graph (which has a global step).
    choose: `choose(order)` returns the checkpoint to restore, the next in
      `order`; it raises when none is left.
    order: the run's checkpoints to try (those that fail to restore are
      marked broken in it).
    fixed: the caller named the checkpoint: do not choose again when it is
      gone or does not restore.
    master: the session target.
    session_config: the device loop's session configuration.
    hooks: more hooks for the session.
    prepare: checks to make once the checkpoint is known, before any work.
    tpu: the TPUConfig (a pod's hosts, how long to wait for them).
    variable_device: where the global step lives ("": anywhere).

  Raises:
    CheckpointMismatchError: the checkpoint does not fit the model.
    CheckpointRestoreError: the named (`fixed`) checkpoint does not read
      back.
    Exception: what `choose` raises, and what restoring raised if the
      checkpoint is still there or was named by the caller.
  """
  def rechoose(gone: str) -> str:
    order.rotated(gone)
    return choose(order)

  first = True
  while True:
    with tf.Graph().as_default():
      with tf.device(variable_device):
        spec_lib.create_global_step()
      loop = build()
      checkpoint = choose(order)
      if first:
        prepare()
        first = False
      try:
        session, checkpoint = _open(loop, checkpoint, master, session_config,
                                    hooks, tpu,
                                    None if fixed else rechoose)
      except (errors.CheckpointRestoreError, tf.errors.NotFoundError,
              ValueError) as error:
        if fixed:
          raise
        if restore_order.gone(checkpoint):
          # Deleted while its variables were compared with the model's.
          order.rotated(checkpoint)
          continue
        if not isinstance(error, errors.CheckpointRestoreError):
          raise
        checkpoint = error.checkpoint
        order.skip(checkpoint, error.reason, "restore")
        continue
      with session:
        yield loop, session, checkpoint
      return


def choose(model_dir: str, checkpoint_path: Optional[str],
           order: restore_order.RestoreOrder) -> str:
  """The checkpoint evaluate and predict restore: `checkpoint_path` if
  given (checked), else the next of the run's checkpoints in `model_dir`
  in `order` (the newest not found broken whose index and global step
  read back).

  Raises:
    ValueError: `checkpoint_path` is not a checkpoint; `model_dir` has no
      checkpoint of the run.
    NoRestorableCheckpointError: it has some, and none restores.
  """
  if checkpoint_path is not None:
    paths.check_no_glob_characters(
        "checkpoint_path",
        validation.non_empty_path("checkpoint_path", checkpoint_path))
    if not tf.io.gfile.exists(checkpoint_path + ".index"):
      raise ValueError(f"`checkpoint_path` ({checkpoint_path!r}) is not a "
                       f"checkpoint: {checkpoint_path}.index does not "
                       f"exist.")
    return checkpoint_path
  found = order.next()
  if found is not None:
    return found[0]
  if order.broken:
    raise order.none_left()
  raise ValueError(f"No checkpoint that reads back in `model_dir` "
                   f"({model_dir!r}); train first or pass "
                   f"`checkpoint_path`.")


def restored_for(job: Job, build: Callable[[], BuiltLoop],
                 checkpoint_path: Optional[str],
                 hooks: Optional[Sequence[tf.compat.v1.train.SessionRunHook]],
                 prepare: Callable[[], None] = lambda: None):
  """`restored` for evaluate and predict: on `checkpoint_path`, or on the
  newest checkpoint of the run in `job.config.model_dir`."""
  model_dir = job.config.model_dir
  return restored(
      build, lambda order: choose(model_dir, checkpoint_path, order),
      restore_order.RestoreOrder(model_dir),
      fixed=checkpoint_path is not None, master=job.config.session_target,
      session_config=job.session_config, hooks=hooks,
      prepare=prepare, tpu=job.config.tpu,
      variable_device=job.device.variable_device)


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
          session_config: tf.compat.v1.ConfigProto, hooks,
          tpu: Optional[TPUConfig],
          rechoose: Optional[Callable[[str], str]]
          ) -> Tuple[tf.compat.v1.train.MonitoredSession, str]:
  """A MonitoredSession restored from `checkpoint`, or from the one
  `rechoose` gave when it was rotated away; and which it was."""
  scaffold, users_saver = scaffold_for(loop.spec, tf.compat.v1.train.Saver)
  if not users_saver:
    # A user's saver (e.g. mapping moving-average names onto the model's
    # variables) restores what it was built for; TF's restore says what is
    # missing then.
    restore_order.check_matches(checkpoint, tf.compat.v1.global_variables())
  creator = CheckedRestore(checkpoint, scaffold=scaffold, master=master,
                           config=session_config, tpu=tpu, rechoose=rechoose)
  spec_hooks = loop.spec.hooks_for_mode if loop.spec is not None else ()
  session = tf.compat.v1.train.MonitoredSession(
      session_creator=creator,
      hooks=list(loop.hooks) + [InfeedHook(loop.infeed)] + list(spec_hooks)
      + list(hooks or []))
  return session, creator.checkpoint

"""Writing the checkpoints a `CheckpointSaverHook` decides on.

The hook decides when to save and calls the listeners around each save; a
`Checkpointer` saves: with the `Saver` in use (the one given, the
scaffold's, or the one in the graph's SAVERS collection), or, with
`async_save`, from a snapshot of the variables written on a background
thread (`hooks.async_writer`). Where asked, it refuses to save NaN or Inf
weights (`NonFiniteWeightsError`). A write that fails raises
`CheckpointSaveError`.

All file I/O goes through TensorFlow's filesystem layer, so the save path
may be a `gs://` URL.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from hooks import _tf_internals
from hooks.async_writer import AsyncCheckpointWriter
from hooks.async_writer import CommitRefused


# The floating-point dtypes tf.debugging.check_numerics takes (and
# tf.math.is_finite: the 8-bit floats neither takes are not checked).
_CHECKABLE = (tf.float16, tf.bfloat16, tf.float32, tf.float64)


class CheckpointSaveError(RuntimeError):
  """Writing a checkpoint failed (after TensorFlow's own I/O retries).

  Deliberately not a `tf.errors.UnavailableError`: MonitoredSession treats
  that as a worker preemption and recreates the session, whose first act is
  another save, so a persistent storage outage (a GCS bucket gone, lost
  permissions) would loop forever instead of stopping with this error. The
  previous checkpoint is untouched: the state file moves to a checkpoint
  only after all its files are written.
  """


class NonFiniteWeightsError(RuntimeError):
  """A variable held NaN or Inf when a checkpoint was due; it was not saved.
  """


class Checkpointer:
  """Saves checkpoints under one prefix, synchronously or in the background.
  """

  def __init__(self, save_path: str, *,
               saver: Optional[tf.compat.v1.train.Saver] = None,
               scaffold: Optional[tf.compat.v1.train.Scaffold] = None,
               async_save: bool = False,
               check_finite: bool = False,
               save_graph_def: bool = True,
               write_guard: Callable[[], None] = lambda: None):
    """Initializes a `Checkpointer`; builds nothing yet (see `begin`).

    Args:
      save_path: the checkpoint prefix without the step, e.g.
        `dir/model.ckpt`.
      saver: the `Saver` to save with; else the scaffold's, else the one
        in the graph's SAVERS collection. The caller checked that at most
        one of `saver` and `scaffold` is given.
      scaffold: a `Scaffold` whose saver is used.
      async_save: write on a background thread (see
        `CheckpointSaverHook`).
      check_finite: refuse to save a floating-point variable that holds
        NaN or Inf.
      save_graph_def: write a `.meta` file with each checkpoint.
      write_guard: called with async_save in the background before a
        write is committed (see `AsyncCheckpointWriter.configure`).
    """
    self._save_path = save_path
    self._saver = saver
    self._scaffold = scaffold
    self._async = async_save
    self._check_finite = check_finite
    self._save_graph_def = save_graph_def
    self._write_guard = write_guard
    self._writer: Optional[AsyncCheckpointWriter] = None
    self._checked: List[tf.Variable] = []
    self._finite_check: Optional[tf.Operation] = None
    self._meta_graph: Optional[Callable[[], bytes]] = None
    self._latest_saved: Optional[str] = None

  @property
  def latest_saved(self) -> Optional[str]:
    """The prefix of the last checkpoint completed, or None."""
    return self._latest_saved

  def begin(self) -> None:
    """Builds what saves need in the default graph (still editable): the
    background writer's snapshot, or the finiteness checks.

    Raises:
      ValueError: `async_save` with saveable objects other than variables
        in the graph.
    """
    if self._async:
      if tf.compat.v1.get_collection(
          tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS):
        raise ValueError(
            "`async_save` saves variables only; this graph has other "
            "saveable objects (tf.compat.v1.GraphKeys.SAVEABLE_OBJECTS). "
            "Use async_save=False.")
      # What the saver saves, where it was given a list of variables; else
      # what a default Saver saves.
      saver = self._saver or (self._scaffold.saver if self._scaffold
                              else None)
      self._writer = AsyncCheckpointWriter(
          _tf_internals.saver_variables(saver)
          or tf.compat.v1.global_variables(), self._save_path)
    elif self._check_finite:
      # One CheckNumerics per variable, run as one group: half the ops of a
      # reduce_all(is_finite(v)) each (measured: 17 ms to build instead of
      # 37 ms, and 43 ms instead of 52 ms for its first run, for 60
      # variables of a small ResNet); which variables failed is read
      # only when one did (`_non_finite`).
      self._checked = [v for v in tf.compat.v1.global_variables()
                       if v.dtype.base_dtype in _CHECKABLE]
      if self._checked:
        with tf.name_scope("check_finite"):
          self._finite_check = tf.group(*[
              tf.debugging.check_numerics(v, v.op.name)
              for v in self._checked])

  def saver(self) -> tf.compat.v1.train.Saver:
    """The `Saver` in use.

    Raises:
      RuntimeError: none was given and the graph has no one Saver.
    """
    if self._saver is not None:
      return self._saver
    if self._scaffold is not None:
      if self._scaffold.saver is None:
        raise RuntimeError(
            "The `scaffold` passed to CheckpointSaverHook has no saver yet: "
            "finalize it (MonitoredSession does) or pass `saver=`.")
      return self._scaffold.saver
    savers = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.SAVERS)
    if not savers:
      raise RuntimeError(
          "CheckpointSaverHook found no saver: pass `saver=` or `scaffold=`, "
          "or add a tf.compat.v1.train.Saver to the "
          "tf.compat.v1.GraphKeys.SAVERS collection (MonitoredTrainingSession"
          "'s default Scaffold does this).")
    if len(savers) > 1:
      raise RuntimeError(
          f"CheckpointSaverHook found {len(savers)} savers in the "
          f"tf.compat.v1.GraphKeys.SAVERS collection; pass the one to use "
          f"as `saver=`.")
    self._saver = savers[0]
    return self._saver

  def session_created(self, meta_graph: Optional[Callable[[], bytes]],
                      finalized: bool) -> None:
    """At each session's creation: what `.meta` files get.

    Args:
      meta_graph: returns the serialized MetaGraphDef (it may wait for its
        export; see `hooks.graph_export`), called once per `.meta` written,
        after the checkpoint's other files; or None where no `.meta` is
        written.
      finalized: whether the graph is finalized: it cannot change, so
        every checkpoint of the session gets `meta_graph()` instead of a
        MetaGraphDef exported again (most of a small model's save).
        Background writes always get `meta_graph()`.

    Raises:
      RuntimeError: with `async_save`, no Saver to follow (see `saver`).
    """
    self._meta_graph = meta_graph if finalized else None
    if self._writer is not None:
      saver = self.saver()
      self._writer.configure(
          max_to_keep=saver.saver_def.max_to_keep,
          recent=saver.last_checkpoints, save_relative_paths=True,
          meta_graph=meta_graph, before_commit=self._write_guard)

  def save(self, session, step: int, check: bool = True) -> Optional[int]:
    """Saves the checkpoint of `step`; with async_save, starts writing it
    (a write in flight must have finished: see `finish`).

    Args:
      session: the session whose variables are saved.
      step: the global step the checkpoint is named after.
      check: with check_finite, check the variables (False: the caller
        knows they were checked, or not changed, since they were restored
        or initialized).

    Returns:
      `step` once its checkpoint is complete; None while it is written in
      the background.

    Raises:
      NonFiniteWeightsError: with check_finite, a variable is NaN or Inf.
      CheckpointSaveError: the save failed.
      BaseException: what `meta_graph()` (see `session_created`) raised,
        as it was, once the checkpoint's other files are written.
    """
    logging.info("Saving checkpoints for %d into %s.", step, self._save_path)
    if self._writer is not None:
      values = self._writer.snapshot(session)
      if self._check_finite and check:
        self._refuse_non_finite(step, self._writer.non_finite(values))
      self._writer.start(step, values)
      return None
    if self._finite_check is not None and check:
      self._refuse_non_finite(step, self._non_finite(session))
    try:
      path = self.saver().save(
          session, self._save_path, global_step=step,
          write_meta_graph=self._save_graph_def and self._meta_graph is None)
      if self._meta_graph is not None:  # After the state file, as Saver does.
        # What the export raises (no OpError: see hooks.graph_export)
        # passes through as it is.
        meta_graph = self._meta_graph()
        with tf.io.gfile.GFile(path + ".meta", "wb") as meta_file:
          meta_file.write(meta_graph)
    except tf.errors.OpError as error:
      raise CheckpointSaveError(
          f"Saving the checkpoint for step {step} into {self._save_path} "
          f"failed: {type(error).__name__}: {error.message}") from error
    return self._completed(step)

  def finish(self, wait: bool) -> Optional[int]:
    """With async_save, the step of a background write that finished (or,
    with `wait`, finishes), or None: none in flight, not finished, or sync
    saves.

    Raises:
      CheckpointSaveError: the background write failed.
      Exception: what the write guard raised before the write's commit.
    """
    if self._writer is None:
      return None
    step = self._writer.step_in_flight
    try:
      done = self._writer.wait() if wait else self._writer.collect()
    except CommitRefused as refused:
      raise refused.cause from None
    except Exception as error:  # pylint: disable=broad-except
      raise CheckpointSaveError(
          f"Writing the checkpoint for step {step} into {self._save_path} "
          f"failed in the background: {type(error).__name__}: "
          f"{getattr(error, 'message', error)}") from error
    return None if done is None else self._completed(done)

  def finish_pending(self) -> Optional[int]:
    """Finishes a background write still in flight, for when training stops
    with an error: waits for it, logs its outcome, and releases the writer.
    Never raises, so as not to hide the error that stopped training.

    Returns:
      The step of the checkpoint the write completed, or None (no write in
      flight, sync saves, or the write failed: logged as an error).
    """
    if self._writer is None:
      return None
    step = self._writer.step_in_flight
    try:
      done = self._writer.wait()
    except Exception as error:  # pylint: disable=broad-except
      logging.error("The background write of checkpoint %s failed: %s; the "
                    "state file still names the checkpoint before it.",
                    step, error)
      done = None
    else:
      if done is not None:
        self._completed(done)
        logging.info("Finished writing checkpoint %d (%s) after training "
                     "stopped.", done, self._latest_saved)
    finally:
      self._writer.close()
    return done

  def close(self) -> None:
    """Releases the background writer, if any."""
    if self._writer is not None:
      self._writer.close()

  def _completed(self, step: int) -> int:
    self._latest_saved = f"{self._save_path}-{step}"
    return step

  def _non_finite(self, session) -> List[str]:
    """The names of the checked variables that hold NaN or Inf, sorted."""
    try:
      session.run(self._finite_check)
      return []
    except tf.errors.InvalidArgumentError:
      # One at a time: the host holds one variable's value at most.
      names = sorted(v.op.name for v in self._checked
                     if not np.all(np.isfinite(session.run(v))))
      if not names:  # Not the check's error.
        raise
      return names

  def _refuse_non_finite(self, step: int, names: Sequence[str]) -> None:
    if not names:
      return
    kept = (f"the newest checkpoint is still {self._latest_saved}"
            if self._latest_saved else
            "no checkpoint was saved in this session")
    raise NonFiniteWeightsError(
        f"Variables {list(names)} hold NaN or Inf at step {step}; their "
        f"checkpoint was not saved, and {kept}. (The loss can still be "
        f"finite when the last update of a run makes the weights "
        f"non-finite.) Lower the learning rate or check the input, then "
        f"train again: training resumes from that checkpoint.")

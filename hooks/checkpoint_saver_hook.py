"""`CheckpointSaverHook` with a public `steps_per_run`.

Call order (as a `tf.compat.v1.train.MonitoredSession` or our runner drives
it; one `Session.run` may advance `global_step` by `steps_per_run` steps)::

  hook.begin()                      # graph still editable; listeners' begin()
  while the session is (re)created:
    hook.after_create_session(s)    # graph.pbtxt, graph + meta graph events,
                                    # save at the current step
    while not should_stop:
      hook.before_run(ctx)          # fetch the global step with the run
      s.run(train_op)               # global_step += steps_per_run
      hook.after_run(ctx, values)   # pre-check stale_step + increment; if due,
                                    # read the real step; if that is due, save
  hook.end(s)                       # save unless just saved; listeners' end()

`end()` also runs after the input raised OutOfRangeError. The decisions are
those of TF 2.21's `tf.compat.v1.train.CheckpointSaverHook` whenever
`steps_per_run` is the true per-run increment. When it is not, this hook learns
the observed increment (see `hooks.run_increment`), so a save is never
delayed by more than one run.

The hook decides when to save and calls the listeners; the save itself
(the Saver or the background write, the non-finite check, its errors) is
`hooks.checkpointer.Checkpointer`'s, and the graph's export (its events,
`.meta`, `graph.pbtxt`) `hooks.graph_export`'s.

All file I/O goes through TensorFlow's filesystem layer (`tf.io.gfile`, the
Saver, the summary writer), so `checkpoint_dir` may be a `gs://` URL.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Optional

from absl import logging
import tensorflow as tf

from hooks import _tf_internals
from hooks import paths
from hooks import validation
from hooks.checkpointer import Checkpointer
from hooks.graph_export import GraphExport
from hooks.run_increment import RunIncrement
from hooks.schedule import StepOrSecondsSchedule
from hooks.trigger import StepTrigger

_LISTENER_BASE = tf.compat.v1.train.CheckpointSaverListener
# What the hook calls on a listener; like TF's hook, it accepts any object
# that has them.
_LISTENER_METHODS = ("begin", "before_save", "after_save", "end")


class CheckpointSaverHook(tf.compat.v1.train.SessionRunHook):
  """Saves checkpoints every N steps or every N seconds."""

  def __init__(self,
               checkpoint_dir: str,
               save_secs: Optional[float] = None,
               save_steps: Optional[int] = None,
               saver: Optional[tf.compat.v1.train.Saver] = None,
               checkpoint_basename: str = "model.ckpt",
               scaffold: Optional[tf.compat.v1.train.Scaffold] = None,
               listeners: Optional[Iterable[_LISTENER_BASE]] = None,
               steps_per_run: int = 1,
               save_graph_def: bool = True,
               *,
               clock: Callable[[], float] = time.monotonic,
               async_save: bool = False,
               check_finite: bool = False,
               write_guard: Optional[Callable[[], None]] = None):
    """Initializes a `CheckpointSaverHook`.

    Args:
      checkpoint_dir: base directory for the checkpoint files; a local path
        or a `gs://` URL.
      save_secs: save every N seconds (a fraction is fine). Exactly one of
        `save_secs` and `save_steps` must be set.
      save_steps: save every N steps.
      saver: the `Saver` used for saving. Default: the scaffold's, else the
        one Saver in the graph's SAVERS collection.
      checkpoint_basename: base name of the checkpoint files.
        `checkpoint_dir` and `checkpoint_basename` may not contain `*`, `?`,
        `[` or a backslash: TF's checkpoint code globs them.
      scaffold: a `Scaffold` whose saver is used.
      listeners: listeners called around each save: instances of our or
        TF's `CheckpointSaverListener`, or any object with `begin`,
        `before_save`, `after_save` and `end` methods, as TF's hook accepts.
      steps_per_run: steps one `Session.run` advances, e.g. the
        `iterations_per_loop` of a TPU loop. If the observed increment is
        larger, the hook uses the observed one.
      save_graph_def: whether to write `graph.pbtxt` and a `.meta` file for
        each checkpoint.
      clock: returns the current time in seconds; a fake one in tests.
      async_save: write checkpoints on a background thread. A save then
        stalls training only to copy the variables to host memory; the
        files, then the `checkpoint` state file, are written meanwhile.
        Listeners' `after_save` (and a stop it asks for) and the CHECKPOINT
        event come when the write is complete, at the next hook call. Saves
        never overlap: a save waits for the write before it. `end()` waits
        for the last write. A failed write raises `CheckpointSaveError` at
        the next hook call. Saves all global variables, keyed by name, as a
        default Saver does (not partitioned variables or other saveables);
        the state file gets relative paths. If training stops with an
        error, `end()` is not called: call `finish_pending_save()`.
      check_finite: before each save, check that every floating-point
        variable is finite, and raise `NonFiniteWeightsError` instead of
        saving if one is not (so a NaN never reaches a checkpoint, even
        when the loss was still finite). With `async_save` the check runs
        on the snapshot the save takes anyway; otherwise it is one extra
        read of the variables per save. The save at a session's creation
        is not checked: it holds what was restored (checked when it was
        saved) or initialized, before any step could change it.
      write_guard: called before each write into `checkpoint_dir`: every
        save, `graph.pbtxt`, listeners' `after_save` and the CHECKPOINT
        event, and with `async_save` once more in the background before the
        write is committed (`.meta`, rotation, the state file). What it
        raises stops that write and propagates as it is, e.g. a trainer
        that lost its hold on the directory. A write already under way is
        not stopped.

    Raises:
      ValueError: both or neither of `save_secs` and `save_steps`; a
        non-positive `save_secs`, `save_steps` or `steps_per_run`; both
        `saver` and `scaffold`; an empty `checkpoint_dir` or
        `checkpoint_basename`, or one with glob characters.
      TypeError: a non-integer `save_steps` or `steps_per_run`; a
        non-number `save_secs`; `listeners` not a list of listeners;
        `saver` without a `save` method; `scaffold` not a Scaffold; a
        non-path `checkpoint_dir`.
    """
    self._checkpoint_dir = paths.check_no_glob_characters(
        "checkpoint_dir",
        validation.non_empty_path("checkpoint_dir", checkpoint_dir))
    paths.check_no_glob_characters(
        "checkpoint_basename",
        validation.non_empty_str("checkpoint_basename", checkpoint_basename))
    self._schedule = StepOrSecondsSchedule(
        every_steps=save_steps, every_secs=save_secs,
        steps_name="save_steps", secs_name="save_secs")
    self._increment = RunIncrement(steps_per_run, name="steps_per_run")
    self._trigger = StepTrigger(self._schedule, self._increment)
    validation.at_most_one({"saver": saver, "scaffold": scaffold})
    if saver is not None and not callable(getattr(saver, "save", None)):
      raise TypeError(
          f"`saver` ({saver!r}) must be a tf.compat.v1.train.Saver "
          f"(an object with a save() method).")
    if scaffold is not None and not isinstance(
        scaffold, tf.compat.v1.train.Scaffold):
      raise TypeError(
          f"`scaffold` ({scaffold!r}) must be a "
          f"tf.compat.v1.train.Scaffold, got {type(scaffold).__name__}.")
    self._listeners = validation.with_methods(
        "listeners", listeners, _LISTENER_METHODS,
        "CheckpointSaverListeners")
    self._save_path = os.path.join(self._checkpoint_dir, checkpoint_basename)
    self._save_graph_def = bool(save_graph_def)
    self._clock = clock
    if write_guard is not None and not callable(write_guard):
      raise TypeError(f"`write_guard` ({write_guard!r}) must be callable "
                      f"with no arguments.")
    self._write_guard = write_guard or (lambda: None)
    self._checkpointer = Checkpointer(
        self._save_path, saver=saver, scaffold=scaffold,
        async_save=bool(async_save), check_finite=bool(check_finite),
        save_graph_def=self._save_graph_def, write_guard=self._write_guard)
    self._global_step_tensor = None
    self._summary_writer = None
    self._stepped = False  # Whether the session ran since its creation.
    logging.info("Create CheckpointSaverHook (dir=%s, steps_per_run=%d).",
                 self._checkpoint_dir, steps_per_run)

  @property
  def steps_per_run(self) -> int:
    """The declared steps per `Session.run`."""
    return self._increment.declared

  @property
  def latest_saved(self) -> Optional[str]:
    """The prefix of the last checkpoint this hook completed, or None."""
    return self._checkpointer.latest_saved

  @property
  def observed_steps_per_run(self) -> int:
    """The largest per-run increment seen so far (0 before any run)."""
    return self._increment.observed

  def due(self, step: int, now: Optional[float] = None) -> bool:
    """Whether a save would be due at global step `step` reached at time
    `now` (default: the clock's now). Asks the schedule without acting; a
    feeder that must prepare for saves (an input position) may call it
    from another thread."""
    return self._schedule.should_trigger(
        step, self._clock() if now is None else now)

  def begin(self) -> None:
    self._summary_writer = tf.compat.v1.summary.FileWriterCache.get(
        self._checkpoint_dir)
    self._global_step_tensor = _tf_internals.global_step_read()
    if self._global_step_tensor is None:
      raise RuntimeError(
          "CheckpointSaverHook needs a global step in the graph: create it "
          "with tf.compat.v1.train.get_or_create_global_step() before the "
          "session is created, and advance it in the train op.")
    self._checkpointer.begin()
    for listener in self._listeners:
      listener.begin()

  def after_create_session(self, session, coord) -> None:
    del coord  # Unused.
    self._increment.new_session()
    self._stepped = False
    global_step = int(session.run(self._global_step_tensor))
    graph = tf.compat.v1.get_default_graph()
    self._write_guard()
    # A finalized graph (MonitoredSession finalizes it) cannot change: it is
    # exported once, on a thread while the first checkpoint is saved, and
    # every checkpoint of the session gets that MetaGraphDef. The graph is
    # the one that runs: every hook's begin() had its chance to add ops.
    # Without a .meta to wait for it, the graph's events are written first
    # (before this save's CHECKPOINT event), and the text is not written.
    export = GraphExport(
        graph, self._checkpointer.saver().saver_def, self._summary_writer,
        self._checkpoint_dir if self._save_graph_def else None,
        background=self._save_graph_def)
    try:
      self._checkpointer.session_created(
          export.meta_graph if self._save_graph_def else None,
          finalized=graph.finalized)
      # The checkpoint saved here is the state at step `global_step`.
      self._save(session, global_step)
    except BaseException:
      export.join()  # The save's error is the one to raise.
      raise
    export.wait()
    self._schedule.mark_triggered(global_step, self._clock())

  def before_run(self, run_context):
    del run_context  # Unused.
    return tf.compat.v1.train.SessionRunArgs(self._global_step_tensor)

  def after_run(self, run_context, run_values) -> None:
    self._stepped = True
    if self._after_save(run_context.session,
                        self._checkpointer.finish(wait=False)):
      run_context.request_stop()
    fired = self._trigger.poll(
        int(run_values.results), self._clock(),
        lambda: int(run_context.session.run(self._global_step_tensor)))
    if fired is not None and self._save(run_context.session, fired[0]):
      run_context.request_stop()

  def end(self, session) -> None:
    """Saves the final step unless it was just saved; calls listeners' end.

    Raises:
      CheckpointSaveError: the save failed.
      NonFiniteWeightsError: with check_finite, a weight was NaN or Inf.
    """
    last_step = int(session.run(self._global_step_tensor))
    try:
      if last_step != self._schedule.last_triggered_step:
        self._save(session, last_step)
      self._after_save(session, self._checkpointer.finish(wait=True))
    finally:
      self._checkpointer.close()
    for listener in self._listeners:
      listener.end(session, last_step)
    self._summary_writer.flush()

  def finish_pending_save(self) -> Optional[int]:
    """Finishes a background write still in flight, for when training stops
    with an error (`end()` is then not called): waits for it, logs its
    outcome, and releases the writer. Never raises, so as not to hide the
    error that stopped training.

    Returns:
      The step of the checkpoint the write completed, or None (no write in
      flight, sync saves, or the write failed: logged as an error).
    """
    return self._checkpointer.finish_pending()

  def _save(self, session, step: int) -> bool:
    """Saves a checkpoint at `step`; returns whether a listener asks to stop.

    With async_save, starts the write and returns whether a listener asked
    to stop when the previous write completed.
    """
    should_stop = self._after_save(session,
                                   self._checkpointer.finish(wait=True))
    logging.info("Calling checkpoint listeners before saving checkpoint %d...",
                 step)
    for listener in self._listeners:
      listener.before_save(session, step)
    self._write_guard()
    # Nothing changed the variables before the session's first run.
    done = self._checkpointer.save(session, step, check=self._stepped)
    return self._after_save(session, done) or should_stop

  def _after_save(self, session, step: Optional[int]) -> bool:
    """The CHECKPOINT event and listeners' after_save for the checkpoint
    completed at `step` (nothing if None); returns whether a listener asks
    to stop."""
    if step is None:
      return False
    self._write_guard()  # Listeners and the event may write.
    self._summary_writer.add_session_log(
        tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.CHECKPOINT,
                                checkpoint_path=self._save_path),
        step)
    logging.info("Calling checkpoint listeners after saving checkpoint %d...",
                 step)
    should_stop = False
    for listener in self._listeners:
      if listener.after_save(session, step):
        logging.info("CheckpointSaverListener %r requested that training "
                     "stop.", listener)
        should_stop = True
    return should_stop

"""One trainer per `model_dir`: a lease file with a heartbeat.

Two trainers writing one `model_dir` interleave their saves, and each one's
rotation deletes the other's checkpoints. A trainer therefore holds a lease,
the file `<model_dir>/.tpu_harness_lease.json`, while it trains:

  acquire:  read the lease. Held by a live trainer -> ModelDirBusyError
            naming it. Absent, released or stale -> write ours, wait
            `settle_secs`, read it back: if another trainer's token is
            there, it won the race -> ModelDirBusyError. In two parts,
            `claim` (read, write, start the heartbeat) and `settle` (wait
            out what is left of `settle_secs`, read back): the trainer
            builds its graph in between, which writes nothing into
            `model_dir`, and the wait (1 s on gs://) overlaps it.
  heartbeat: a thread rewrites the lease every `heartbeat_secs`; if it
            finds another token there, the lease was taken over and `lost`
            turns True (the runner then stops with LeaseLostError rather
            than write beside the new owner).
  confirm:  before every write into `model_dir` (saves, the state file,
            rotation, events). Free while the last renewal is recent (less
            than `stale_secs / 2` ago: no one may have taken it over);
            after a stall (a stopped process, a suspended VM), renews as
            acquire does (read: still ours? write, settle, read back) and
            raises LeaseLostError if it is not, or is gone.
  release:  delete the lease if it is still ours.

A lease is stale when its heartbeat is older than `stale_secs` (hosts' clocks
are assumed to agree to within seconds, as NTP keeps Cloud VMs), or at once
when it was written on this host by a process that no longer runs (a killed
trainer restarted on the same machine takes over without waiting).

The storage layer offers no atomic create-if-absent for gs:// through
`tf.io.gfile`, hence write-then-read-back: two trainers that start within
`settle_secs` of each other resolve to one owner; a trainer whose read and
write of the lease are more than `settle_secs` apart could still share the
directory until the next heartbeat, when the loser stops. A write that
was already under way when the trainer stalled completes when it continues
(nothing can stop a write in flight); every write after it is confirmed.
Evaluation does not take the lease: it may run beside training.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import threading
import time
import uuid
from typing import Callable, Iterator, Optional

from absl import logging
import tensorflow as tf

from hooks import paths
from tpu_harness import errors
from tpu_harness._model_dir import contents
from tpu_harness._model_dir import storage
from tpu_harness.errors import LeaseLostError
from tpu_harness.errors import ModelDirBusyError

LEASE_NAME = contents.LEASE_NAME
# Defaults of every lease: a trainer rewrites its lease every HEARTBEAT_SECS;
# one not rewritten for STALE_SECS may be taken over. (Processes that must
# agree on other values, such as tests' trainers, set both before training.)
HEARTBEAT_SECS = 10.0
STALE_SECS = 60.0


def _process_is_gone(pid: int) -> bool:
  """Whether no live process has `pid` on this host (zombies are gone)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:
    return False
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
      return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
  except (OSError, IndexError):
    return False


class ModelDirLease:
  """The lease of one trainer on one `model_dir`."""

  def __init__(self, model_dir: str, *,
               heartbeat_secs: Optional[float] = None,
               stale_secs: Optional[float] = None,
               settle_secs: Optional[float] = None,
               clock: Callable[[], float] = time.time,
               sleep: Callable[[float], None] = time.sleep):
    """Initializes the lease (nothing is written until `acquire`).

    Args:
      model_dir: the directory.
      heartbeat_secs: how often the holder rewrites the lease; default
        HEARTBEAT_SECS.
      stale_secs: a lease whose heartbeat is older than this may be taken
        over; several heartbeats; default STALE_SECS.
      settle_secs: wait between writing the lease and reading it back;
        default 1 s on remote storage, 0.05 s on local disks.
      clock: wall-clock seconds (compared across hosts).
      sleep: waits; a fake one in tests.

    Raises:
      ValueError: `stale_secs` is not larger than `heartbeat_secs`.
    """
    heartbeat_secs = (HEARTBEAT_SECS if heartbeat_secs is None
                      else heartbeat_secs)
    stale_secs = STALE_SECS if stale_secs is None else stale_secs
    if not stale_secs > heartbeat_secs > 0:
      raise ValueError(f"`stale_secs` ({stale_secs!r}) must be larger than "
                       f"`heartbeat_secs` ({heartbeat_secs!r}) > 0.")
    self._model_dir = model_dir
    self._path = paths.join(model_dir, LEASE_NAME)
    self._heartbeat_secs = heartbeat_secs
    self._stale_secs = stale_secs
    self._settle_secs = (settle_secs if settle_secs is not None else
                         1.0 if "://" in model_dir else 0.05)
    self._clock = clock
    self._sleep = sleep
    self._token = uuid.uuid4().hex
    self._host = socket.gethostname()
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None
    self._lost = False
    self._held = False
    # Whether a claim is made and not yet released; the clock time at the
    # end of its write.
    self._claimed = False
    self._written = -math.inf
    # Serializes renewals: the heartbeat thread and confirm().
    self._lock = threading.Lock()
    # Clock time at the start of the last renewal that found the lease ours.
    self._renewed = -math.inf

  @property
  def path(self) -> str:
    return self._path

  @property
  def lost(self) -> bool:
    """Whether another trainer took the lease over since `acquire`."""
    return self._lost

  def check(self) -> None:
    """Raises LeaseLostError if the lease was found taken over (reads
    nothing; see `confirm`)."""
    if self._lost:
      raise LeaseLostError(
          f"Another trainer took over the lease on `model_dir` "
          f"({self._model_dir!r}) (see {self._path}), or it was removed: "
          f"this trainer stopped without writing there again, so as not to "
          f"write beside another one. It happens when this trainer was "
          f"stalled for longer than {self._stale_secs:g} s (a stopped "
          f"process, a suspended VM). Its last checkpoint in `model_dir` is "
          f"the one before the stall.")

  def confirm(self) -> None:
    """Call before each write into `model_dir`: raises LeaseLostError
    unless the lease is still this trainer's.

    Reads nothing while the last renewal is less than `stale_secs / 2` old
    (no other trainer can have found the lease stale); otherwise renews it
    first, as `acquire` does.

    Raises:
      LeaseLostError: another trainer took the lease over, or it is gone.
      ModelDirBusyError: the lease was claimed, not yet settled, and
        another trainer won it (see `settle`).
      StorageError: storage kept failing while renewing it.
    """
    self.check()
    if self._claimed and not self._held:
      self.settle()
      return
    if not self._held or (self._clock() - self._renewed
                          < self._stale_secs / 2):
      return
    self._renew()
    self.check()

  def acquire(self) -> None:
    """Takes the lease and starts the heartbeat: `claim`, then `settle`.

    Raises:
      ModelDirBusyError: a live trainer holds it, or another trainer
        wrote it at the same time and won.
      StorageError: storage kept failing.
    """
    self.claim()
    self.settle()

  def claim(self) -> None:
    """Writes this trainer's lease unless a live trainer holds it, and
    starts the heartbeat (a graph that takes minutes to build keeps the
    lease fresh). Until `settle` (or the first `confirm`), write nothing
    into `model_dir`.

    Raises:
      ModelDirBusyError: a live trainer holds it.
      StorageError: storage kept failing.
    """
    started = self._clock()
    current = self._read()
    if current is not None and current.get("token") != self._token:
      reason = self._stale_reason(current)
      if reason is None:
        raise ModelDirBusyError(self._busy_message(current))
      logging.warning("Taking over the lease on %s from %s: %s.",
                      self._model_dir, _describe(current), reason)
    self._write()
    self._claimed = True
    self._written = self._clock()
    self._lost = False
    self._renewed = started
    self._stop.clear()
    self._thread = threading.Thread(target=self._beat, daemon=True,
                                    name="model_dir_lease")
    self._thread.start()

  def settle(self) -> None:
    """Completes `claim`: waits until `settle_secs` have passed since its
    write and reads the lease back. Nothing to do once the lease is
    held.

    Raises:
      ModelDirBusyError: another trainer wrote the lease after this one's
        claim (it won the race).
      RuntimeError: no claim was made.
      StorageError: storage kept failing.
    """
    if self._held:
      return
    if not self._claimed:
      raise RuntimeError("ModelDirLease.settle() without a claim().")
    elapsed = self._clock() - self._written
    self._sleep(min(self._settle_secs,
                    max(0.0, self._settle_secs - elapsed)))
    current = self._read()
    if current is None or current.get("token") != self._token:
      raise ModelDirBusyError(self._busy_message(current or {}))
    self._held = True
    logging.info("Holding the lease on %s (%s).", self._model_dir, self._path)

  def release(self) -> None:
    """Stops the heartbeat and deletes the lease if it is still ours (a
    claim not yet settled too)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
    if not self._held and not self._claimed:
      return
    self._held = False
    self._claimed = False
    try:
      current = self._read()
      if current is not None and current.get("token") == self._token:
        tf.io.gfile.remove(self._path)
    except (tf.errors.OpError, errors.StorageError) as error:
      logging.warning("Could not release the lease %s (%s); the next trainer "
                      "takes it over when it is stale.", self._path,
                      storage.first_line(error))

  def __enter__(self) -> "ModelDirLease":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  @contextlib.contextmanager
  def claimed(self) -> Iterator["ModelDirLease"]:
    """`claim` for the block (the caller settles before its first write
    into `model_dir`), then `release`."""
    self.claim()
    try:
      yield self
    finally:
      self.release()

  # Internals.

  def _record(self) -> dict:
    return {"token": self._token, "host": self._host, "pid": os.getpid(),
            "heartbeat": self._clock()}

  def _write(self) -> None:
    text = json.dumps(self._record())
    # An object store replaces an object whole on upload; a local file is
    # written beside and renamed, so a reader never sees it half-written.
    staging = (self._path if "://" in self._path else
               f"{self._path}.{self._token}.tmp")

    def write():
      with tf.io.gfile.GFile(staging, "w") as f:
        f.write(text)
      if staging != self._path:
        tf.io.gfile.rename(staging, self._path, overwrite=True)
    storage.retry(write, f"writing the lease {self._path}", sleep=self._sleep)

  def _read(self) -> Optional[dict]:
    """The lease's content, or None if there is none."""
    def read():
      try:
        with tf.io.gfile.GFile(self._path, "r") as f:
          return f.read()
      except tf.errors.NotFoundError:
        return None
    for _ in range(3):
      text = storage.retry(read, f"reading the lease {self._path}",
                           sleep=self._sleep)
      if text is None:
        return None
      try:
        record = json.loads(text)
        if isinstance(record, dict):
          return record
      except ValueError:
        pass
      self._sleep(self._settle_secs)  # Being written; read again.
    return {"token": "?", "heartbeat": 0.0}  # Unreadable: treat as stale.

  def _stale_reason(self, record: dict) -> Optional[str]:
    heartbeat = record.get("heartbeat", 0.0)
    if (isinstance(heartbeat, bool)
        or not isinstance(heartbeat, (int, float))
        or not math.isfinite(heartbeat)):
      # Not written by a trainer (or damaged): no one is heart-beating it.
      return f"its heartbeat ({heartbeat!r}) is not a time"
    age = self._clock() - float(heartbeat)
    if age > self._stale_secs:
      return f"its last heartbeat was {age:.0f} s ago"
    pid = record.get("pid")
    if (record.get("host") == self._host and isinstance(pid, int)
        and _process_is_gone(pid)):
      return f"process {pid} on this host no longer runs"
    return None

  def _busy_message(self, record: dict) -> str:
    return (f"`model_dir` ({self._model_dir!r}) is in use by another trainer "
            f"({_describe(record)}, lease {self._path}). Two trainers in one "
            f"model_dir would overwrite and delete each other's checkpoints. "
            f"Use another model_dir, or wait: a lease whose trainer stopped "
            f"heart-beating is taken over after {self._stale_secs:g} s. "
            f"Evaluation may run beside training.")

  def _renew(self) -> None:
    """Rewrites the lease if it is still ours; else marks it lost. After a
    renewal overdue by `stale_secs / 2` (a stall: another trainer may be
    taking it over right now), settles and reads back as `acquire` does,
    and a missing lease counts as lost too."""
    with self._lock:
      if self._lost:
        return
      started = self._clock()
      overdue = started - self._renewed >= self._stale_secs / 2
      current = self._read()
      if current is None and not overdue:
        current = {"token": self._token}  # Removed by hand: write it again.
      if current is None or current.get("token") != self._token:
        self._mark_lost(current)
        return
      self._write()
      if overdue:
        self._sleep(self._settle_secs)
        current = self._read()
        if current is None or current.get("token") != self._token:
          self._mark_lost(current)
          return
      self._renewed = started

  def _mark_lost(self, current: Optional[dict]) -> None:
    self._lost = True
    if current is None:
      logging.error("The lease on %s is gone: it was removed while this "
                    "trainer was stalled.", self._model_dir)
    else:
      logging.error("The lease on %s was taken over by %s.",
                    self._model_dir, _describe(current))

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_secs):
      try:
        self._renew()
        if self._lost:
          return
      except Exception as error:  # pylint: disable=broad-except
        logging.warning("Lease heartbeat for %s failed (%s); trying again.",
                        self._model_dir, storage.first_line(error))


def _describe(record: dict) -> str:
  return (f"process {record.get('pid', '?')} on host "
          f"{record.get('host', '?')}")


class LeaseHook(tf.compat.v1.train.SessionRunHook):
  """Confirms the lease before and after every `Session.run`. First among a
  session's hooks, so that after a stall no other hook writes (step-rate
  events, checkpoints) before the lease is confirmed."""

  def __init__(self, lease: ModelDirLease):
    self._lease = lease

  def before_run(self, run_context):
    del run_context  # Unused.
    self._lease.confirm()

  def after_run(self, run_context, run_values) -> None:
    del run_context, run_values  # Unused.
    self._lease.confirm()

"""lease: one trainer per model_dir, stale-lease takeover, lost leases."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

import tpu_harness as th
from tpu_harness._model_dir import lease as lease_lib


class _Clock:

  def __init__(self, now=1000.0):
    self.now = now

  def __call__(self):
    return self.now


def _lease(model_dir, clock=None, **kwargs):
  kwargs.setdefault("settle_secs", 0.0)
  return lease_lib.ModelDirLease(str(model_dir), clock=clock or _Clock(),
                                 **kwargs)


def _write_record(model_dir, **record):
  base = {"token": "someone-else", "host": socket.gethostname(),
          "pid": os.getpid(), "heartbeat": 1000.0}
  base.update(record)
  with open(os.path.join(model_dir, lease_lib.LEASE_NAME), "w") as f:
    json.dump(base, f)


def _read_record(model_dir):
  with open(os.path.join(model_dir, lease_lib.LEASE_NAME)) as f:
    return json.load(f)


def test_acquire_writes_and_release_deletes(tmp_path):
  lease = _lease(tmp_path)
  with lease:
    record = _read_record(tmp_path)
    assert record["pid"] == os.getpid()
    assert record["host"] == socket.gethostname()
  assert not os.path.exists(lease.path)


def test_second_trainer_is_refused_while_the_first_holds(tmp_path):
  with _lease(tmp_path):
    with pytest.raises(th.ModelDirBusyError) as info:
      _lease(tmp_path).acquire()
  message = str(info.value)
  assert f"`model_dir` ({str(tmp_path)!r}) is in use by another trainer" in (
      message)
  assert f"process {os.getpid()} on host {socket.gethostname()}" in message
  assert "Evaluation may run beside training" in message
  # Released: the next one gets it.
  with _lease(tmp_path):
    pass


@pytest.mark.parametrize("age,host,takes_over", [
    (30, "another-host", False),   # Fresh heartbeat elsewhere: busy.
    (61, "another-host", True),    # Stale heartbeat: taken over.
    (5, None, False),              # This host, live process: busy.
])
def test_stale_leases_are_taken_over(tmp_path, age, host, takes_over):
  clock = _Clock()
  _write_record(str(tmp_path), heartbeat=clock.now - age,
                **({"host": host} if host else {}))
  lease = _lease(tmp_path, clock=clock, stale_secs=60)
  if takes_over:
    with lease:
      assert _read_record(tmp_path)["pid"] == os.getpid()
  else:
    with pytest.raises(th.ModelDirBusyError):
      lease.acquire()
    assert _read_record(tmp_path)["token"] == "someone-else"


@pytest.mark.parametrize("heartbeat", ["soon", None, [1], "NaN"])
def test_a_lease_whose_heartbeat_is_not_a_time_is_taken_over(
    tmp_path, heartbeat, caplog):
  _write_record(str(tmp_path), heartbeat=(float("nan") if heartbeat == "NaN"
                                          else heartbeat),
                host="another-host")
  with caplog.at_level("WARNING"):
    with _lease(tmp_path):
      assert _read_record(tmp_path)["pid"] == os.getpid()
  assert any("is not a time" in r.getMessage() for r in caplog.records)


@pytest.mark.system
def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(
    tmp_path):
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  _write_record(str(tmp_path), pid=process.pid)  # Heartbeat is fresh.
  with _lease(tmp_path):
    assert _read_record(tmp_path)["pid"] == os.getpid()


def test_losing_the_race_after_writing_is_busy(tmp_path):
  # Both read "no lease"; the other trainer writes after us but before our
  # read-back: it won.
  def other_writes(_):
    _write_record(str(tmp_path), host="another-host")

  with pytest.raises(th.ModelDirBusyError):
    _lease(tmp_path, sleep=other_writes).acquire()
  assert _read_record(tmp_path)["host"] == "another-host"


class _Sleeps(list):
  """A fake sleep: records each wait."""

  def __call__(self, secs):
    self.append(secs)


# (seconds between the claim's write and settle(), the wait settle() adds).
_SETTLE_CASES = [(0.0, 0.05), (0.02, 0.03), (0.05, 0.0), (3.0, 0.0),
                 (-5.0, 0.05)]  # A clock set back: at most settle_secs.


@pytest.mark.parametrize("elapsed,wait", _SETTLE_CASES)
def test_settle_waits_what_is_left_after_the_claim(tmp_path, elapsed, wait):
  clock, sleeps = _Clock(), _Sleeps()
  lease = _lease(tmp_path, clock=clock, sleep=sleeps, settle_secs=0.05)
  lease.claim()
  assert _read_record(tmp_path)["pid"] == os.getpid()
  assert sleeps == []  # The claim does not wait.
  clock.now += elapsed
  lease.settle()
  assert sleeps == [pytest.approx(wait)]
  lease.settle()  # Held: nothing more.
  assert len(sleeps) == 1
  lease.release()
  assert not os.path.exists(lease.path)


@pytest.mark.parametrize("first", ["settle", "confirm"])
def test_a_claim_overwritten_before_it_settles_is_busy(tmp_path, first):
  lease = _lease(tmp_path)
  lease.claim()
  _write_record(str(tmp_path), host="another-host")  # It won the race.
  with pytest.raises(th.ModelDirBusyError):
    getattr(lease, first)()
  lease.release()
  assert _read_record(tmp_path)["host"] == "another-host"  # Left alone.


def test_a_claim_released_unsettled_deletes_the_lease(tmp_path):
  lease = _lease(tmp_path)
  with lease.claimed():
    assert os.path.exists(lease.path)
  assert not os.path.exists(lease.path)
  with pytest.raises(RuntimeError):
    lease.settle()  # Released: no claim to settle.


def test_takeover_is_noticed_by_the_heartbeat(tmp_path):
  lease = _lease(tmp_path, heartbeat_secs=0.01, stale_secs=1)
  beats = threading.Event()
  with lease:
    lease.check()  # Still ours: no error.
    _write_record(str(tmp_path), host="another-host")
    for _ in range(500):
      if lease.lost:
        break
      beats.wait(0.01)
    assert lease.lost
    with pytest.raises(th.LeaseLostError, match="took over the lease"):
      lease.check()
  # The new owner's lease is not deleted by the old owner's release.
  assert _read_record(tmp_path)["host"] == "another-host"


@pytest.mark.parametrize("stalled_secs, file, outcome", [
    # A recent renewal: no one can have found the lease stale; nothing read.
    (5, "another's", "ours"),
    # After a stall: read back, then renewed (written, read back again).
    (40, "ours", "renewed"),
    (40, "another's", "lost"),
    (40, "gone", "lost"),
    (61, "another's", "lost"),
])
def test_confirm_after_a_stall_reads_the_lease_again(
    tmp_path, stalled_secs, file, outcome):
  clock = _Clock()
  # The heartbeat thread does not beat during the test.
  lease = _lease(tmp_path, clock=clock, heartbeat_secs=30, stale_secs=60)
  with lease:
    clock.now += stalled_secs
    if file == "another's":
      _write_record(str(tmp_path), host="another-host", heartbeat=clock.now)
    elif file == "gone":
      os.remove(lease.path)
    if outcome == "lost":
      with pytest.raises(th.LeaseLostError,
                         match="this trainer stopped without writing"):
        lease.confirm()
      assert lease.lost
    else:
      lease.confirm()
      assert not lease.lost
      if outcome == "renewed":
        assert _read_record(tmp_path)["heartbeat"] == clock.now
        # Renewed: free again until the next stall.
        _write_record(str(tmp_path), host="another-host")
        lease.confirm()


@pytest.mark.parametrize("how", ["acquired", "claimed"])
def test_heartbeat_refreshes_the_lease(tmp_path, how):
  # Claimed too: a graph that takes minutes to build keeps it fresh.
  clock = _Clock()
  lease = _lease(tmp_path, clock=clock, heartbeat_secs=0.01, stale_secs=1)
  with lease if how == "acquired" else lease.claimed():
    clock.now += 100
    for _ in range(500):
      if _read_record(tmp_path)["heartbeat"] == clock.now:
        break
      threading.Event().wait(0.01)
    assert _read_record(tmp_path)["heartbeat"] == clock.now


def test_bad_timings_are_refused(tmp_path):
  with pytest.raises(ValueError, match=r"`stale_secs` \(5\) must be larger "
                     r"than `heartbeat_secs` \(10\)"):
    lease_lib.ModelDirLease(str(tmp_path), heartbeat_secs=10, stale_secs=5)

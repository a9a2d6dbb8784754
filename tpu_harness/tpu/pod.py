"""A pod: several hosts, one TF server task each, each with its own infeed.

A Cloud TPU pod slice has several host VMs, each feeding its own TPU cores
from its own input pipeline. The runner reaches them through TensorFlow's
distributed runtime: a `ClusterSpec` with one task per host (job
`worker`, task h at `hosts[h]`), the session target the task 0 server. The
chief (the process running the `Runner`) builds one graph: host h's
replicas on `/job:worker/task:h` devices, its input pipeline, iterator and
infeed queue on `/job:worker/task:h/device:CPU:0`, read by its own host
thread in the chief; the variables on task 0. Gradients are combined over
every replica of every host in the graph. Only the chief writes checkpoints
and events.

This module names the pod's devices and looks after its hosts:
`wait_for_hosts` checks that every host accepts connections before a
session is created (TF itself waits for a missing task forever), and a
session made `for_pod` fails with `HostUnavailableError` naming the hosts
that stopped answering: at once when a run fails because of them, and
within `TPUConfig.host_timeout_secs` when a run waits on a host that died,
froze or was cut off (see `tpu_harness.tpu.host_watch`). The hosts'
infeeds are `tpu_harness._infeed.pod`.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List, Sequence

from absl import logging
import tensorflow as tf

from tpu_harness.errors import HostUnavailableError

JOB = "worker"


def host_device(host: int) -> str:
  """The CPU device of host `host`, where its input pipeline runs."""
  return f"/job:{JOB}/task:{host}/device:CPU:0"


def replica_device(host: int, core: int) -> str:
  """The device replica `core` of host `host` runs on (an emulated core:
  one of the host's virtual CPUs)."""
  return f"/job:{JOB}/task:{host}/device:CPU:{core}"


def cluster_spec(hosts: Sequence[str]) -> tf.train.ClusterSpec:
  """The pod's cluster: job `worker`, task h at hosts[h]."""
  return tf.train.ClusterSpec({JOB: list(hosts)})


def _accepts(address: str, timeout: float) -> bool:
  host, _, port = address.rpartition(":")
  try:
    with socket.create_connection((host.strip("[]"), int(port)),
                                  timeout=timeout):
      return True
  except OSError:
    return False


def unreachable_hosts(hosts: Sequence[str], timeout: float = 2.0
                      ) -> List[int]:
  """The indices of the hosts that do not accept connections now."""
  return [index for index, address in enumerate(hosts)
          if not _accepts(address, timeout)]


def wait_for_hosts(hosts: Sequence[str], wait_secs: float, *,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> None:
  """Returns once every host accepts connections.

  Raises:
    HostUnavailableError: some did not within `wait_secs`; the message
      names them.
  """
  deadline = clock() + wait_secs
  while True:
    missing = unreachable_hosts(hosts, timeout=1.0)
    if not missing:
      return
    if clock() >= deadline:
      raise HostUnavailableError(
          f"{_named(hosts, missing)} of the pod did not accept connections "
          f"within {wait_secs:g} s (`TPUConfig.host_wait_secs`). Start a TF "
          f"server for each host (`python -m scripts.local_pod` does, on "
          f"loopback) or fix `TPUConfig.hosts` ({list(hosts)}).")
    sleep(min(1.0, max(0.0, deadline - clock())))


def lost_hosts_error(hosts: Sequence[str], cause: str
                     ) -> HostUnavailableError:
  """The error for a session to the pod that failed (`cause`), naming the
  hosts that stopped answering."""
  missing = unreachable_hosts(hosts)
  if missing:
    what = f"{_named(hosts, missing)} of the pod stopped answering"
  else:
    what = "A host of the pod failed (every host answers again now)"
  return HostUnavailableError(
      f"{what} during the session ({cause}). Nothing after the latest "
      f"checkpoint was saved; restart the host's TF server and train again "
      f"to resume from it.")


# How long closing a session to a pod with a host gone may take.
CLOSE_WAIT_SECS = 10.0


def close_in_background(close: Callable[[], None],
                        name: str) -> threading.Thread:
  """Starts `close` (a session's) on a daemon thread named `name`, and
  returns the thread: a session to a gone host may take long to close.

  A close that fails (the host is gone: the session's deadline passes) is
  logged at debug level, not raised on the thread, where Python would
  print its traceback into the user's log.
  """
  def run():
    try:
      close()
    except tf.errors.OpError as error:
      logging.debug("Closing a session to the pod failed: %s", error)

  thread = threading.Thread(target=run, daemon=True, name=name)
  thread.start()
  return thread


def reset(hosts: Sequence[str], wait_secs: float) -> None:
  """Closes every session the pod's master (host 0) holds and clears the
  hosts' default resource containers (`tf.compat.v1.Session.reset`): what
  chiefs that died left there (about 4 threads and 20-40 MB on each host
  per chief, never given back while the servers live). Only a trainer
  (which holds `model_dir`'s lease) does this, before its session: an
  evaluation running on the same pod at that moment loses its session.

  Raises:
    HostUnavailableError: host 0 did not answer within `wait_secs`.
  """
  done = threading.Event()

  def run():
    try:
      tf.compat.v1.Session.reset(f"grpc://{hosts[0]}")
    except tf.errors.OpError as error:
      logging.warning("Could not reset the pod's sessions: %s",
                      str(error).splitlines()[0])
    finally:
      done.set()

  threading.Thread(target=run, daemon=True, name="reset_pod").start()
  if not done.wait(wait_secs):
    raise HostUnavailableError(
        f"Host 0 ({hosts[0]}) of the pod did not answer within "
        f"{wait_secs:g} s (`TPUConfig.host_timeout_secs`) while the "
        f"sessions earlier chiefs left on it were closed: its TF server is "
        f"stopped or stuck. Restart it and train again; nothing was "
        f"written.")


class _PodSession(tf.compat.v1.Session):
  """A session to a pod (see `for_pod`)."""

  _pod_hosts: tuple = ()
  _pod_watch = None

  def run(self, *args, **kwargs):
    run = super().run
    try:
      if self._pod_watch is None:
        return run(*args, **kwargs)
      return self._pod_watch.run(lambda: run(*args, **kwargs))
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.InternalError) as error:
      if not unreachable_hosts(self._pod_hosts):
        raise
      raise lost_hosts_error(self._pod_hosts,
                             f"a run failed: {type(error).__name__}") from error

  def close(self):
    if getattr(self, "_closed", True) or not getattr(self, "_opened", False):
      # Closed already (the garbage collector's `__del__` closes again, and
      # may run inside another thread's `start()`, where starting a thread
      # would wait for ever on its lock).
      return
    if self._pod_watch is not None:
      self._pod_watch.stop()
    closer = close_in_background(super().close, "close_pod_session")
    closer.join(CLOSE_WAIT_SECS)
    if closer.is_alive():
      logging.warning("Closing the session to the pod did not finish within "
                      "%g s (a host is gone); leaving it.", CLOSE_WAIT_SECS)


def for_pod(session: tf.compat.v1.Session, hosts: Sequence[str],
            watch=None) -> tf.compat.v1.Session:
  """`session` (to a pod of `hosts`), made to raise HostUnavailableError
  naming the hosts that went away when a run fails because of them, or
  when `watch` (a started `host_watch.HostWatch`, stopped when the session
  closes) finds one silent while a run waits; and to close within
  CLOSE_WAIT_SECS.

  Why: TF takes such a failure for a preemption; MonitoredSession would
  close the session and create a new one, and TF's close waits for the
  gone host without end. (The session's class is switched to a subclass
  that adds both: TF creates the session inside ChiefSessionCreator.)
  """
  session.__class__ = _PodSession
  session._pod_hosts = tuple(hosts)  # pylint: disable=protected-access
  session._pod_watch = watch  # pylint: disable=protected-access
  return session


def _named(hosts: Sequence[str], indices: Sequence[int]) -> str:
  names = ", ".join(f"host {index} ({hosts[index]})" for index in indices)
  return names[0].upper() + names[1:]

"""Watching a pod's hosts: which answer, and whether they are the pod.

TensorFlow's gRPC session has no deadline of its own: a run waits for ever
on a host that died (host 0, the session master, above all), froze (SIGSTOP,
a paused VM) or was cut off without its connections being closed. So while
a session to a pod is open, a `HostWatch` pings every host on its own (a
tiny run on that host alone, with a deadline), and each run of the session
goes through `HostWatch.run`: it waits for the run's result, or for a host
to stay silent for `timeout_secs`, whichever comes first, and then raises
HostUnavailableError naming the silent hosts. Nothing can cancel the run
left waiting: it stays on a daemon thread, which the process does not wait
for when it exits.

When the watch starts, `check_cluster` checks that each of
`TPUConfig.hosts` is the server that host 0's cluster runs that task on
(by the incarnations TF gives each device), so that a wrong address is
named rather than silently bypassed, and later checks look at the hosts
the session really runs on.

`Liveness` decides when a host counts as silent (pure logic); `HostWatch`
does the pinging and waiting.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from absl import logging
import tensorflow as tf

from tpu_harness.errors import HostUnavailableError
from tpu_harness.tpu import pod

T = TypeVar("T")

# A ping's deadline and the pause between pings, at most.
_PING_DEADLINE_SECS = 10.0
_PING_EVERY_SECS = 5.0
# How often a waiting run looks at the hosts' liveness.
_POLL_SECS = 0.25


class Liveness:
  """When each host last answered, and which have been silent too long."""

  def __init__(self, hosts: int, timeout_secs: float, now: float):
    """All `hosts` count as having answered at `now`."""
    self._timeout = timeout_secs
    self._last = [now] * hosts

  def answered(self, host: int, now: float) -> None:
    self._last[host] = max(self._last[host], now)

  def silent(self, now: float) -> List[Tuple[int, float]]:
    """(host, seconds since it last answered) of every host silent for
    more than the timeout."""
    return [(host, now - last) for host, last in enumerate(self._last)
            if now - last > self._timeout]


def _session(address: str, task: Optional[int], deadline_secs: float,
             graph: tf.Graph) -> tf.compat.v1.Session:
  """A session to `address` that sees only task `task` (None: every task)
  besides the server's own devices, each call bounded by
  `deadline_secs`."""
  config = tf.compat.v1.ConfigProto(
      device_filters=[] if task is None else [f"/job:{pod.JOB}/task:{task}"],
      operation_timeout_in_ms=max(1, int(deadline_secs * 1000)))
  return tf.compat.v1.Session(f"grpc://{address}", graph=graph,
                              config=config)


def _cpu_incarnations(session: tf.compat.v1.Session) -> Dict[int, int]:
  """{task: incarnation of its CPU:0} of the devices `session` lists."""
  found = {}
  for device in session.list_devices():
    spec = tf.DeviceSpec.from_string(device.name)
    if (spec.job == pod.JOB and spec.device_type == "CPU"
        and spec.device_index == 0):
      found[spec.task] = device.incarnation
  return found


def check_cluster(hosts: Sequence[str], deadline_secs: float) -> None:
  """Checks that `hosts[h]` is the server of task h in host 0's cluster
  (the one a session to host 0 runs on), for every h.

  Raises:
    HostUnavailableError: a host did not answer within `deadline_secs`.
    ValueError: host 0's cluster has another number of tasks, or a host's
      address is not that of the server host 0's cluster has at its task.
  """
  def listed(host: int, task: Optional[int]) -> Dict[int, int]:
    session = _session(hosts[host], task, deadline_secs, tf.Graph())
    try:
      return _cpu_incarnations(session)
    except tf.errors.DeadlineExceededError as error:
      raise HostUnavailableError(
          f"Host {host} ({hosts[host]}) of the pod accepts connections but "
          f"did not answer within {deadline_secs:g} s "
          f"(`TPUConfig.host_timeout_secs`): its TF server is stopped or "
          f"stuck.") from error
    finally:
      pod.close_in_background(session.close, "close_ping_session")

  cluster = listed(0, None)
  if sorted(cluster) != list(range(len(hosts))):
    raise ValueError(
        f"Host 0's TF server ({hosts[0]}) runs a cluster of tasks "
        f"{sorted(cluster)} of job '{pod.JOB}', but `TPUConfig.hosts` names "
        f"{len(hosts)} hosts ({list(hosts)}): give every host of the "
        f"cluster the servers were started with, in task order.")
  for host in range(1, len(hosts)):
    own = listed(host, host)
    others = sorted(task for task in own if task != host)
    if others:
      raise ValueError(
          f"`TPUConfig.hosts[{host}]` ({hosts[host]!r}) is the TF server of "
          f"task {others[0]}, not task {host}: list the hosts in task "
          f"order, as the servers were started.")
    if own.get(host) != cluster[host]:
      raise ValueError(
          f"`TPUConfig.hosts[{host}]` ({hosts[host]!r}) is a TF server of "
          f"task {host}, but not the one host 0's cluster runs task {host} "
          f"on (another pod's, or an old one): a session to host 0 would "
          f"run there, not on {hosts[host]}. Give the addresses the "
          f"servers were started with.")


class HostWatch:
  """Pings each host of a pod; runs calls that end when a host is lost."""

  def __init__(self, hosts: Sequence[str], timeout_secs: float, *,
               clock: Callable[[], float] = time.monotonic):
    """Initializes the watch (nothing runs before `start`).

    Args:
      hosts: the pod's hosts' addresses, task h at hosts[h].
      timeout_secs: a host that answers no ping for this long is lost.
      clock: monotonic seconds.
    """
    self._hosts = tuple(hosts)
    self._timeout = timeout_secs
    self._clock = clock
    self._ping_every = min(_PING_EVERY_SECS, timeout_secs / 4)
    self._ping_deadline = min(_PING_DEADLINE_SECS, timeout_secs / 2)
    self._liveness = Liveness(len(hosts), timeout_secs, clock())
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._threads: List[threading.Thread] = []

  @property
  def hosts(self) -> Tuple[str, ...]:
    return self._hosts

  def start(self) -> None:
    """Checks the cluster (see `check_cluster`) and starts the pings.

    Raises:
      HostUnavailableError, ValueError: what `check_cluster` raises.
    """
    check_cluster(self._hosts, self._timeout)
    with self._lock:
      self._liveness = Liveness(len(self._hosts), self._timeout,
                                self._clock())
    self._stop.clear()
    self._threads = [
        threading.Thread(target=self._ping, args=(host,), daemon=True,
                         name=f"ping_host_{host}")
        for host in range(len(self._hosts))]
    for thread in self._threads:
      thread.start()

  def stop(self) -> None:
    """Stops the pings (without waiting for one in flight)."""
    self._stop.set()
    self._threads = []

  def lost(self) -> Optional[HostUnavailableError]:
    """The error naming the hosts silent for longer than the timeout, or
    None while every host answers."""
    with self._lock:
      silent = self._liveness.silent(self._clock())
    if not silent:
      return None
    names = ", ".join(f"host {host} ({self._hosts[host]}) for {secs:.0f} s"
                      for host, secs in silent)
    return HostUnavailableError(
        f"The pod lost a host: no answer from {names} "
        f"(`TPUConfig.host_timeout_secs` is {self._timeout:g}): it died, "
        f"is stopped or frozen, or the network to it is cut. Training "
        f"stopped; nothing after the latest checkpoint was saved. Restart "
        f"that host's TF server and train again to resume from it.")

  def run(self, call: Callable[[], T]) -> T:
    """Returns `call()`, run on a daemon thread with the caller's default
    graph, or raises what it raised.

    Raises:
      HostUnavailableError: a host went silent before `call` returned (the
        call is left waiting).
    """
    lost = self.lost()
    if lost is not None:
      raise lost
    done = threading.Event()
    outcome: dict = {}
    graph = tf.compat.v1.get_default_graph()

    def target():
      try:
        with graph.as_default():
          outcome["value"] = call()
      except BaseException as error:  # pylint: disable=broad-except
        outcome["error"] = error
      finally:
        done.set()

    threading.Thread(target=target, daemon=True, name="pod_call").start()
    while not done.wait(_POLL_SECS):
      lost = self.lost()
      if lost is not None:
        logging.error("%s", lost)
        raise lost
    if "error" in outcome:
      raise outcome["error"]
    return outcome["value"]

  def _ping(self, host: int) -> None:
    graph = tf.Graph()
    with graph.as_default(), tf.device(pod.host_device(host)):
      ping = tf.no_op(name="ping")
    session = _session(self._hosts[host], host, self._ping_deadline, graph)
    try:
      while True:
        try:
          session.run(ping)
        except tf.errors.OpError as error:
          logging.debug("Ping of host %d failed: %s", host,
                        type(error).__name__)
        else:
          with self._lock:
            self._liveness.answered(host, self._clock())
        if self._stop.wait(self._ping_every):
          return
    finally:
      pod.close_in_background(session.close, "close_ping_session")

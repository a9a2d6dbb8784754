"""Host servers of a pod on this machine: one TF server process per host on
free loopback ports (`python -m scripts.local_pod --serve`), for the local
pod, its tests and its benchmark."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import List, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_ports(count: int) -> List[int]:
  """`count` loopback ports nothing listens on now."""
  sockets = [socket.socket() for _ in range(count)]
  try:
    for sock in sockets:
      sock.bind(("localhost", 0))
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def server_command(hosts: Sequence[str], task: int,
                   cores_per_host: int) -> List[str]:
  return [sys.executable, "-m", "scripts.local_pod", "--serve",
          f"--task={task}", f"--cluster={','.join(hosts)}",
          f"--cores_per_host={cores_per_host}"]


def start_server(hosts: Sequence[str], task: int,
                 cores_per_host: int) -> subprocess.Popen:
  """Starts host `task`'s server process (it accepts connections a few
  seconds later, once TF is imported), in a session of its own: a Ctrl-C
  in the launcher's terminal does not stop it under a job still saving."""
  return subprocess.Popen(server_command(hosts, task, cores_per_host),
                          cwd=ROOT, stdout=subprocess.DEVNULL,
                          env=dict(os.environ, PYTHONPATH=ROOT),
                          start_new_session=True)


def start_pod(count: int, cores_per_host: int
              ) -> Tuple[List[str], List[subprocess.Popen]]:
  """Starts `count` host servers on free loopback ports; returns (their
  host:port addresses, their processes)."""
  hosts = [f"localhost:{port}" for port in free_ports(count)]
  return hosts, [start_server(hosts, task, cores_per_host)
                 for task in range(count)]


def stop(processes: Sequence[subprocess.Popen]) -> None:
  """Stops the servers (SIGTERM, then SIGKILL after 30 s)."""
  for process in processes:
    if process.poll() is None:
      process.send_signal(signal.SIGTERM)
  for process in processes:
    try:
      process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      process.kill()
      process.wait()


def serve(hosts: Sequence[str], task: int, cores_per_host: int) -> None:
  """Runs host `task`'s server until the process is stopped."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tpu_harness.tpu import pod  # pylint: disable=g-import-not-at-top
  server = tf.distribute.Server(
      pod.cluster_spec(hosts), job_name=pod.JOB, task_index=task,
      config=tf.compat.v1.ConfigProto(
          device_count={"CPU": cores_per_host}))
  server.join()

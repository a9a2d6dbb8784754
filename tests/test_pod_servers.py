"""scripts/pod_servers.py: host servers start on free ports, serve the
cluster's devices, and stop."""

import pytest
import tensorflow as tf

from scripts import pod_servers
from tpu_harness.tpu import pod

pytestmark = pytest.mark.system


def test_free_ports_are_distinct_and_unused():
  ports = pod_servers.free_ports(3)
  assert len(set(ports)) == 3
  assert pod.unreachable_hosts([f"localhost:{p}" for p in ports],
                               timeout=0.5) == [0, 1, 2]


def test_a_pod_of_servers_has_each_hosts_cores_and_stops():
  hosts, processes = pod_servers.start_pod(2, 3)
  try:
    pod.wait_for_hosts(hosts, 120)
    with tf.Graph().as_default(), tf.compat.v1.Session(
        f"grpc://{hosts[0]}") as session:
      devices = {d.name for d in session.list_devices()}
    for task in range(2):
      for core in range(3):
        assert (f"/job:worker/replica:0/task:{task}/device:CPU:{core}"
                in devices), devices
  finally:
    pod_servers.stop(processes)
  assert all(process.returncode is not None for process in processes)
  assert pod.unreachable_hosts(hosts, timeout=0.5) == [0, 1]

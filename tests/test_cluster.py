"""resolve_master: Cloud TPU names through cloud-tpu-client and TF's
TPUClusterResolver against a fake Cloud TPU API, gRPC targets, and errors."""

import socket

import pytest
import tensorflow as tf

import tpu_harness as th
from google.auth import credentials as google_credentials

from support.fake_tpu_api import FakeTpuApi
from tpu_harness.tpu import cluster


@pytest.fixture
def api():
  with FakeTpuApi() as fake:
    yield fake


@pytest.fixture(scope="module")
def worker():
  """A real TF gRPC server standing in for the TPU worker."""
  server = tf.distribute.Server.create_local_server()
  yield int(server.target.rsplit(":", 1)[1])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _resolve(api, name, **kwargs):
  return cluster.resolve_master(
      tpu=name, zone=api.zone, project=api.project,
      credentials=google_credentials.AnonymousCredentials(),
      discovery_url=api.discovery_url, **kwargs)


def test_local_when_nothing_is_given():
  assert cluster.resolve_master() == ""


def test_grpc_targets_are_used_directly(worker):
  target = f"grpc://127.0.0.1:{worker}"
  assert cluster.resolve_master(master=target) == target
  assert cluster.resolve_master(tpu=target) == target


def test_tpu_name_resolves_to_its_endpoint(api, worker):
  api.add_node("my-tpu", worker)
  assert _resolve(api, "my-tpu") == f"grpc://127.0.0.1:{worker}"


def test_waits_until_ready_and_healthy(api, worker):
  node = api.add_node("slow-tpu", worker, state="CREATING", health="")
  waits = []

  def sleep(secs):
    waits.append(secs)
    if len(waits) == 2:
      node["state"] = "READY"
    if len(waits) == 3:
      node["health"] = "HEALTHY"

  target = _resolve(api, "slow-tpu", poll_secs=5, sleep=sleep)
  assert target == f"grpc://127.0.0.1:{worker}"
  assert waits == [5, 5, 5]


def test_not_ready_in_time_is_a_clear_error(api, worker):
  api.add_node("stuck-tpu", worker, state="CREATING", health="")
  now = [0.0]

  def sleep(secs):
    now[0] += secs

  with pytest.raises(th.TPUNotReadyError,
                     match="TPU 'stuck-tpu' is CREATING .* after waiting 30 s"):
    _resolve(api, "stuck-tpu", wait_secs=30, poll_secs=10,
             clock=lambda: now[0], sleep=sleep)


def test_unknown_name_is_a_clear_error(api):
  with pytest.raises(th.TPUNotFoundError,
                     match="TPU 'nope' was not found in project "
                     "'test-project', zone 'test-zone'"):
    _resolve(api, "nope")


def test_unreachable_endpoint_is_a_clear_error(api):
  port = _free_port()
  api.add_node("dead-tpu", port)
  with pytest.raises(th.TPUUnreachableError,
                     match=f"Cannot reach the TPU worker at grpc://127.0.0.1:"
                     f"{port}"):
    _resolve(api, "dead-tpu")
  with pytest.raises(th.TPUUnreachableError):
    cluster.resolve_master(master=f"grpc://127.0.0.1:{port}")


@pytest.mark.parametrize("kwargs,message", [
    (dict(tpu="a", master="grpc://h:1"), "not both"),
    (dict(master="http://h:1"), r"`master` \('http://h:1'\) must look like "
     "grpc://HOST:PORT"),
    (dict(master="grpc://nohost"), "must look like grpc://HOST:PORT"),
])
def test_bad_targets(kwargs, message):
  with pytest.raises(ValueError, match=message):
    cluster.resolve_master(**kwargs)

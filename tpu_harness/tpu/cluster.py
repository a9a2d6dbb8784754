"""Where the loop runs: a Cloud TPU by name, a gRPC master, or this process.

    resolve_master(tpu=None, master=None)         -> ""  (local emulation)
    resolve_master(master="grpc://10.0.0.2:8470") -> that target
    resolve_master(tpu="grpc://10.0.0.2:8470")    -> that target
    resolve_master(tpu="my-tpu", zone=..., project=...)
        -> asks the Cloud TPU API (through cloud-tpu-client and
           TF's TPUClusterResolver) until the node is READY and HEALTHY,
           then returns its grpc://ip:port, after checking it accepts
           connections.

Each failure is its own error type with a message that says what to do:
`TPUNotFoundError`, `TPUNotReadyError`, `TPUUnreachableError`. Nothing here
touches the model directory, so a failed resolution leaves nothing behind.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, List, Optional
from urllib.parse import urlparse

from absl import logging
import cloud_tpu_client
import tensorflow as tf
from tpu_harness.errors import NoTPUError
from tpu_harness.errors import TPUNotFoundError
from tpu_harness.errors import TPUNotReadyError
from tpu_harness.errors import TPUUnreachableError

READY, HEALTHY = "READY", "HEALTHY"


def check_tpu_devices(target: str) -> List[str]:
  """Returns the TPU devices of session target `target` ('' = this
  process).

  Raises:
    NoTPUError: it has none; the message names the target, what it has, and
      how to run without a TPU.
  """
  with tf.Graph().as_default(), tf.compat.v1.Session(target) as session:
    devices = session.list_devices()
  tpus = [d.name for d in devices if d.device_type == "TPU"]
  if not tpus:
    found = sorted({d.device_type for d in devices})
    where = target or "this process"
    raise NoTPUError(
        f"use_tpu is set, but the session target ({where}) has no TPU "
        f"devices; it has {len(devices)} device(s) of types {found}. To run "
        f"on CPU, set use_tpu=False (--use_tpu=false); to emulate N TPU "
        f"cores here, use the CPU emulation (TPUEstimator: use_tpu=True "
        f"with TPUConfig(num_shards=N) and no cluster or master).")
  return tpus


def resolve_master(*,
                   tpu: Optional[str] = None,
                   zone: Optional[str] = None,
                   project: Optional[str] = None,
                   master: Optional[str] = None,
                   credentials: Any = "default",
                   discovery_url: Optional[str] = None,
                   wait_secs: float = 600.0,
                   poll_secs: float = 10.0,
                   connect_timeout_secs: float = 10.0,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> str:
  """Returns the session target: "" (in-process) or "grpc://host:port".

  Args:
    tpu: a Cloud TPU name, or a grpc:// address.
    zone: the TPU's zone (default: this VM's, from the metadata server).
    project: the TPU's project (default: this VM's).
    master: an explicit grpc:// target; excludes `tpu`.
    credentials: for the Cloud TPU API: "default" (application default
      credentials) or a google.auth credentials object.
    discovery_url: the Cloud TPU API discovery document (for an emulated
      API); the environment variable TPU_API_DISCOVERY_URL also works.
    wait_secs: how long to wait for READY and HEALTHY.
    poll_secs: time between state queries while waiting.
    connect_timeout_secs: time allowed to open a TCP connection to the
      worker.
    clock: seconds, for the wait.
    sleep: sleeps, for the wait.

  Raises:
    ValueError: both `tpu` and `master`, or a target that is not grpc://.
    TPUNotFoundError, TPUNotReadyError, TPUUnreachableError: as named.
  """
  if tpu and master:
    raise ValueError(f"Pass `tpu` ({tpu!r}) or `master` ({master!r}), not "
                     f"both.")
  if master:
    return _checked(_grpc("master", master), connect_timeout_secs)
  if not tpu:
    return ""
  if tpu.startswith("grpc://"):
    return _checked(_grpc("tpu", tpu), connect_timeout_secs)
  try:
    client = cloud_tpu_client.Client(tpu=tpu, zone=zone, project=project,
                                     credentials=credentials,
                                     discovery_url=discovery_url)
  except ValueError as error:
    raise TPUNotFoundError(_not_found(tpu, zone, project, error)) from error
  _wait_until_ready(client, tpu, zone, project, wait_secs, poll_secs, clock,
                    sleep)
  resolver = _resolver(tpu, zone, project, credentials, discovery_url)
  return _checked(_grpc("tpu", resolver.master()), connect_timeout_secs)


def _grpc(name: str, target: str) -> str:
  parsed = urlparse(target)
  if parsed.scheme != "grpc" or not parsed.hostname or not parsed.port:
    raise ValueError(f"`{name}` ({target!r}) must look like "
                     f"grpc://HOST:PORT.")
  return target


def _checked(target: str, timeout: float) -> str:
  parsed = urlparse(target)
  try:
    with socket.create_connection((parsed.hostname, parsed.port),
                                  timeout=timeout):
      pass
  except OSError as error:
    raise TPUUnreachableError(
        f"Cannot reach the TPU worker at {target}: {error}. Check that the "
        f"TPU is running, that this VM is in the TPU's network, and the "
        f"address.") from error
  return target


def _resolver(tpu, zone, project, credentials, discovery_url):
  try:
    return tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=tpu, zone=zone, project=project, credentials=credentials,
        discovery_url=discovery_url)
  except ValueError as error:
    raise TPUNotFoundError(_not_found(tpu, zone, project, error)) from error


def _not_found(tpu, zone, project, error) -> str:
  return (f"TPU {tpu!r} was not found in project {project!r}, zone {zone!r}:"
          f" {str(error).splitlines()[0][:300]}. Check --tpu, --tpu_zone and "
          f"--gcp_project (`gcloud compute tpus list --zone=...`).")


def _wait_until_ready(client, tpu, zone, project, wait_secs, poll_secs,
                      clock, sleep):
  started = clock()
  while True:
    try:
      state, health = client.state(), client.health()
    except ValueError as error:  # The API answered 404 for the name.
      raise TPUNotFoundError(_not_found(tpu, zone, project, error)) from error
    if state == READY and health == HEALTHY:
      return
    waited = clock() - started
    if waited >= wait_secs:
      raise TPUNotReadyError(
          f"TPU {tpu!r} is {state} (health {health}) after waiting "
          f"{waited:.0f} s for {READY}/{HEALTHY}. If it is being created or "
          f"repaired, wait and retry; if it is PREEMPTED or TERMINATED, "
          f"recreate it.")
    logging.warning("Waiting for TPU %r to be %s and %s: it is %s (health "
                    "%s); asking again in %g s.", tpu, READY, HEALTHY, state,
                    health, poll_secs)
    sleep(poll_secs)

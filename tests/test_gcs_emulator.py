"""support.gcs_emulator: the proxy, over real TLS, with a plain HTTP client."""

import http.client
import json
import ssl

import pytest
from cryptography import x509

from support.gcs_emulator import Fault
from support.gcs_emulator import make_certificates

pytestmark = pytest.mark.system

AUTH = {"Authorization": "Bearer dummy"}


def _https(gcs, host="www.googleapis.com"):
  """An HTTPS connection to a Google host through the emulator's proxy."""
  context = ssl.create_default_context(cafile=gcs.ca_path)
  proxy_port = int(gcs.proxy_url.rsplit(":", 1)[1])
  connection = http.client.HTTPSConnection("127.0.0.1", proxy_port,
                                           context=context, timeout=30)
  connection.set_tunnel(host, 443)
  return connection


def _request(gcs, method, path, body=None, headers=None, host=None):
  connection = _https(gcs, host or "www.googleapis.com")
  try:
    connection.request(method, path, body=body,
                       headers=dict(AUTH, **(headers or {})))
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()
  finally:
    connection.close()


def test_certificates_name_the_google_hosts(tmp_path):
  paths = make_certificates(str(tmp_path))
  with open(paths["cert"], "rb") as f:
    cert = x509.load_pem_x509_certificate(f.read())
  names = cert.extensions.get_extension_for_class(
      x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
  assert names == ["www.googleapis.com", "storage.googleapis.com"]


def test_tls_through_the_proxy_reaches_the_emulator(gcs):
  status, _, body = _request(gcs, "GET", f"/storage/v1/b/{gcs.bucket}")
  assert status == 200 and json.loads(body)["name"] == gcs.bucket


def test_requests_without_credentials_get_401(gcs):
  connection = _https(gcs)
  try:
    connection.request("GET", f"/storage/v1/b/{gcs.bucket}")
    response = connection.getresponse()
    assert response.status == 401
    assert b"no credentials" in response.read()
  finally:
    connection.close()


def test_storage_layout_is_answered(gcs):
  status, _, body = _request(gcs, "GET",
                             f"/storage/v1/b/{gcs.bucket}/storageLayout")
  assert status == 200
  assert json.loads(body)["hierarchicalNamespace"] == {"enabled": False}
  status, _, _ = _request(gcs, "GET", "/storage/v1/b/nope/storageLayout")
  assert status == 404


def test_resumable_upload_location_points_back_at_google(gcs):
  name = "emulator-test/upload.txt"
  status, headers, _ = _request(
      gcs, "POST", f"/upload/storage/v1/b/{gcs.bucket}/o?uploadType="
      f"resumable&name={name}", body=b"",
      headers={"Expect": "100-continue", "Transfer-Encoding": "identity",
               "Content-Length": "0"})
  assert status == 200
  location = headers["Location"]
  assert location.startswith("https://www.googleapis.com/upload/")
  path = location[len("https://www.googleapis.com"):]
  status, _, _ = _request(gcs, "PUT", path, body=b"hello",
                          headers={"Content-Length": "5"})
  assert status == 200
  assert gcs.read_object(name) == b"hello"
  status, _, body = _request(gcs, "GET", f"/{gcs.bucket}/{name}",
                             host="storage.googleapis.com")
  assert (status, body) == (200, b"hello")


def test_object_name_is_the_path_within_the_bucket(gcs):
  assert gcs.object_name(f"gs://{gcs.bucket}/run-3/model") == "run-3/model"
  with pytest.raises(ValueError, match="is not in"):
    gcs.object_name("gs://another-bucket/run-3")


def test_copy_prefix_copies_every_object_and_only_those(gcs):
  source, other = (gcs.object_name(gcs.new_path("copy-src"))
                   for _ in range(2))
  for name, body in [(f"{source}/a", b"one"), (f"{source}/d/b", b"two"),
                     (f"{other}/c", b"not copied")]:
    status, _, _ = _request(
        gcs, "POST", f"/upload/storage/v1/b/{gcs.bucket}/o?uploadType="
        f"media&name={name}", body=body,
        headers={"Content-Length": str(len(body))})
    assert status == 200
  assert gcs.copy_prefix(source, "copy-dst") == ["a", "d/b"]
  assert gcs.list_objects("copy-dst/") == ["copy-dst/a", "copy-dst/d/b"]
  assert gcs.read_object("copy-dst/d/b") == b"two"
  assert gcs.list_objects(source + "/") == [f"{source}/a", f"{source}/d/b"]


def test_injected_faults_then_recovery(gcs):
  path = f"/storage/v1/b/{gcs.bucket}"
  gcs.inject(Fault("GET", r"/b/" + gcs.bucket + "$", "status", 503, times=1))
  gcs.inject(Fault("GET", r"/b/" + gcs.bucket + "$", "drop", times=1))
  try:
    assert _request(gcs, "GET", path)[0] == 503
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError,
                        ssl.SSLError)):
      _request(gcs, "GET", path)
    assert _request(gcs, "GET", path)[0] == 200
  finally:
    gcs.clear_faults()


def test_plain_http_to_the_proxy_is_refused(gcs):
  proxy_port = int(gcs.proxy_url.rsplit(":", 1)[1])
  connection = http.client.HTTPConnection("127.0.0.1", proxy_port,
                                          timeout=30)
  try:
    connection.request("GET", "http://www.googleapis.com/")
    assert connection.getresponse().status == 405
  finally:
    connection.close()


def test_by_hand_helper_prints_env_and_stops_on_ctrl_c():
  import os  # pylint: disable=g-import-not-at-top
  import signal  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  # Started as from a process that ignores SIGINT (a background job, as
  # a full run can be): Ctrl-C must stop it all the same.
  process = subprocess.Popen(
      [sys.executable, "-m", "tests.support.gcs_emulator", "--bucket=by-hand"],
      cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
  lines = []
  for line in process.stdout:
    lines.append(line)
    if "Ctrl-C" in line:
      break
  process.send_signal(signal.SIGINT)
  try:
    process.communicate(timeout=60)
  except subprocess.TimeoutExpired:
    # The helper's threads' stacks say where its stop hung. (Seen in full
    # runs, its main thread still sleeping: the test process ignored
    # SIGINT, and so did the helper until it set the default handler.)
    process.send_signal(signal.SIGUSR1)
    try:
      _, stderr = process.communicate(timeout=5)
    except subprocess.TimeoutExpired as expired:
      stderr = (expired.stderr or b"").decode("utf-8", "replace")
    process.kill()
    process.communicate()
    pytest.fail(f"The helper did not stop within 60 s of Ctrl-C; its "
                f"threads:\n{stderr[-6000:]}")
  assert process.returncode == 0
  exports = dict(line[len("export "):].strip().split("=", 1)
                 for line in lines if line.startswith("export "))
  assert exports["HTTPS_PROXY"].startswith("http://127.0.0.1:")
  assert exports["CURL_CA_BUNDLE"].endswith("ca.pem")
  assert "gs://by-hand/" in lines[-1]

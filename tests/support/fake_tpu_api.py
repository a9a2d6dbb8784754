"""A fake Cloud TPU REST API on loopback, for cloud-tpu-client.

Serves a minimal discovery document for `projects.locations.nodes.get` and
the node JSON of the TPUs in `nodes`; an unknown node gets a 404 JSON error,
as the real API answers. Tests change `nodes` (state, health, endpoint)
while it runs.
"""

from __future__ import annotations

import http.server
import json
import threading
from typing import Dict


class FakeTpuApi:
  """`with FakeTpuApi() as api:` ... `api.discovery_url`."""

  def __init__(self, project: str = "test-project", zone: str = "test-zone"):
    self.project, self.zone = project, zone
    self.nodes: Dict[str, dict] = {}
    api = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):
        del args

      def do_GET(self):  # pylint: disable=invalid-name
        if self.path.startswith("/discovery"):
          return self._json(200, api.discovery_document())
        prefix = f"/v1/projects/{api.project}/locations/{api.zone}/nodes/"
        path = self.path.split("?", 1)[0]
        if path.startswith(prefix):
          node = api.nodes.get(path[len(prefix):])
          if node is not None:
            return self._json(200, node)
        return self._json(404, {"error": {
            "code": 404, "status": "NOT_FOUND",
            "message": f"Resource '{self.path}' was not found"}})

      def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True

  @property
  def root(self) -> str:
    return f"http://127.0.0.1:{self._server.server_address[1]}/"

  @property
  def discovery_url(self) -> str:
    return self.root + "discovery"

  def add_node(self, name: str, port: int, state: str = "READY",
               health: str = "HEALTHY") -> dict:
    node = {"name": f"projects/{self.project}/locations/{self.zone}/nodes/"
                    f"{name}",
            "acceleratorType": "v3-8", "state": state, "health": health,
            "tensorflowVersion": "2.21.0",
            "networkEndpoints": [{"ipAddress": "127.0.0.1", "port": port}]}
    self.nodes[name] = node
    return node

  def discovery_document(self) -> dict:
    return {
        "kind": "discovery#restDescription", "discoveryVersion": "v1",
        "id": "tpu:v1", "name": "tpu", "version": "v1", "protocol": "rest",
        "rootUrl": self.root, "servicePath": "", "baseUrl": self.root,
        "batchPath": "batch", "parameters": {},
        "schemas": {"Node": {"id": "Node", "type": "object",
                             "properties": {}}},
        "resources": {"projects": {"resources": {"locations": {
            "resources": {"nodes": {"methods": {"get": self._get_method()}}}}}}},
    }

  @staticmethod
  def _get_method() -> dict:
    return {
        "id": "tpu.projects.locations.nodes.get",
        "path": "v1/{+name}",
        "flatPath": "v1/projects/{projectsId}/locations/{locationsId}"
                    "/nodes/{nodesId}",
        "httpMethod": "GET",
        "parameters": {"name": {
            "type": "string", "required": True, "location": "path",
            "pattern": "^projects/[^/]+/locations/[^/]+/nodes/[^/]+$"}},
        "parameterOrder": ["name"],
        "response": {"$ref": "Node"},
    }

  def __enter__(self) -> "FakeTpuApi":
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._server.shutdown()
    self._server.server_close()

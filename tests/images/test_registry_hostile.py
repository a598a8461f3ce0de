"""A registry's documents are data: malformed manifests, indexes and configs from a hostile registry on loopback
give a clear InvalidParameter (an API 400) for pull and distribution inspect, never a crash (a 500)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from machines.runtime.errors import InvalidParameter

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = b"[]"  # a config that is not an object
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()
DOCUMENTS = {
    "/v2/bad/manifests/array": (MANIFEST_V2, b"[1, 2]"),
    "/v2/bad/manifests/index": (OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                       "manifests": ["junk", 3]}).encode()),
    "/v2/bad/manifests/config": (MANIFEST_V2, json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_V2,
                                                          "config": {"digest": CONFIG_DIGEST}, "layers": []}).encode()),
    f"/v2/bad/blobs/{CONFIG_DIGEST}": ("application/octet-stream", CONFIG),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        media, body = DOCUMENTS.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in DOCUMENTS else 404)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("tag, message", [("array", "not a JSON object"), ("index", "invalid manifest"),
                                          ("config", "invalid manifest")])
def test_distribution_inspect_of_malformed_documents(service, hostile, tag, message):
    with pytest.raises(InvalidParameter, match=message):
        service.inspect_distribution(f"{hostile}/bad:{tag}")


@pytest.mark.parametrize("tag, message", [("array", "not a JSON object"), ("index", "invalid manifest"),
                                          ("config", "invalid manifest")])
def test_pull_of_malformed_documents(service, store, hostile, tag, message):
    with pytest.raises(InvalidParameter, match=message):
        service.pull(f"{hostile}/bad:{tag}")  # raised by the call: the API answers 400 before any progress
    assert store.list(all=True) == []

"""HTTPS registries with a per-registry CA, bearer tokens from a token server, and redirects off-host.

The token server and the redirecting registry are small servers owned by these tests, on loopback only.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import threading

import pytest

from machines.runtime.errors import HostError
from machines.runtime.images.registry import Unauthorized
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore


def test_https_registry_with_bearer_tokens(tmp_path, tls_token_registry, busybox_tar):
    reg, tokens, certs = tls_token_registry
    service = ImageService(ImageStore(str(tmp_path / "store")), certs_dirs=[certs])
    store = service.store
    tag = f"{reg.host}/secure/app:1"
    image_id = store.import_tar(io.BytesIO(busybox_tar), tag)
    good = {"username": "bob", "password": "hunter2", "serveraddress": reg.host}
    with pytest.raises(Unauthorized, match="incorrect username or password"):
        list(service.push(tag, auth=dict(good, password="nope")))
    aux = list(service.push(tag, auth=good))[-1]["aux"]
    assert "repository:secure/app:pull,push" in tokens.scopes
    store.remove(tag)
    assert list(service.pull(tag, auth=good))[-2] == {"status": f"Digest: {aux['Digest']}"}
    assert store.resolve(tag).id == image_id and "repository:secure/app:pull" in tokens.scopes
    assert service.login(good)["Status"] == "Login Succeeded"
    with pytest.raises(Unauthorized):
        service.login(dict(good, password="nope"))
    # a certs.d folder without the registry's CA: HTTPS is used and the handshake refused, never skipped
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / reg.host).mkdir(parents=True)
    untrusting = ImageService(ImageStore(str(tmp_path / "store2")), certs_dirs=[str(elsewhere)])
    with pytest.raises(HostError, match="CERTIFICATE_VERIFY_FAILED"):
        list(untrusting.pull(tag, auth=good))


class _StubRegistry(http.server.ThreadingHTTPServer):
    """A one-image registry that requires Basic auth and redirects blob GETs to another host (127.0.0.2)."""

    def __init__(self, blobs: dict, manifest: bytes, cdn_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _StubHandler)
        self.blobs, self.manifest, self.cdn_port = blobs, manifest, cdn_port
        self.seen: list = []


class _StubHandler(http.server.BaseHTTPRequestHandler):
    server: _StubRegistry

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"", headers: dict = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        srv.seen.append((self.headers.get("Host"), self.path, self.headers.get("Authorization"),
                         self.headers.get("Range")))
        if self.headers.get("Host", "").startswith("127.0.0.2"):
            data = srv.blobs[self.path.rsplit("/", 1)[1]]
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                start = int(ranged[6:].rstrip("-"))
                self._reply(206, data[start:], {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                return
            self._reply(200, data)
            return
        if self.headers.get("Authorization") != "Basic " + base64.b64encode(b"bob:hunter2").decode():
            self._reply(401, b"{}", {"WWW-Authenticate": 'Basic realm="stub"'})
            return
        if "/manifests/" in self.path:
            self._reply(200, srv.manifest, {"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
        elif "/blobs/" in self.path:
            digest = self.path.rsplit("/", 1)[1]
            self._reply(307, b"", {"Location": f"http://127.0.0.2:{srv.cdn_port}/cdn/{digest}"})
        else:
            self._reply(200, b"{}")


def test_redirected_blobs_do_not_receive_the_authorization_header(tmp_path, busybox_tar):
    import gzip
    layer = gzip.compress(busybox_tar, mtime=0)
    diff_id = "sha256:" + hashlib.sha256(busybox_tar).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    digest = {b: "sha256:" + hashlib.sha256(b).hexdigest() for b in (layer, config)}
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                      "digest": digest[config], "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                                       "digest": digest[layer], "size": len(layer)}]}).encode()
    cdn = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _StubHandler)
    stub = _StubRegistry({digest[layer]: layer, digest[config]: config}, manifest, cdn.server_address[1])
    cdn.blobs, cdn.seen = stub.blobs, stub.seen  # type: ignore[attr-defined]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (stub, cdn)]
    for t in threads:
        t.start()
    try:
        service = ImageService(ImageStore(str(tmp_path / "store")))
        store = service.store
        tag = f"127.0.0.1:{stub.server_address[1]}/stub:1"
        # an earlier pull was cut off half-way through the layer: this one resumes from there
        os.makedirs(os.path.join(store.root, "downloads"))
        with open(os.path.join(store.root, "downloads", digest[layer][7:] + ".partial"), "wb") as f:
            f.write(layer[:len(layer) // 2])
        messages = list(service.pull(tag, auth={"username": "bob", "password": "hunter2"}))
        assert messages[-1]["status"] == f"Status: Downloaded newer image for {tag}"
        cdn_requests = [s for s in stub.seen if s[0].startswith("127.0.0.2")]
        assert len(cdn_requests) == 2 and all(auth is None for _, _, auth, _ in cdn_requests)
        assert (f"bytes={len(layer) // 2}-") in [r for _, _, _, r in cdn_requests]
        assert store.resolve(tag).id == digest[config]
        assert os.listdir(os.path.join(store.root, "downloads")) == []
    finally:
        for s in (stub, cdn):
            s.shutdown()
            s.server_close()

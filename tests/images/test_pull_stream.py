"""Issue 18 item 5: a layer is unpacked while it downloads. What a user sees stays as before: a connection that drops
half-way through a layer is resumed (with Range, or from the start when the registry ignores Range) and the image
is whole; a blob that is not what its digest says leaves no layer, no image and nothing in the store's tmp/."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import tarfile
import threading
from collections.abc import Iterator

import pytest

from machines.runtime.errors import InvalidParameter
from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore

FILE = os.urandom(3 << 20)  # incompressible: the gzip blob is as large, so a drop lands inside the layer's data


def _layer_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("data/blob.bin")
        info.size, info.mode = len(FILE), 0o644
        tar.addfile(info, io.BytesIO(FILE))
    return buf.getvalue()


class _Registry(http.server.ThreadingHTTPServer):
    """One image on loopback; ``drop_once`` cuts the first layer download half-way, ``ignore_range`` answers every
    blob GET with the whole blob, ``served`` replaces the layer's bytes (same digest claimed)."""

    def __init__(self, drop_once: bool = False, ignore_range: bool = False, served: bytes | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        tar = _layer_tar()
        self.layer = gzip.compress(tar, mtime=0)
        self.served = served if served is not None else self.layer
        digest = "sha256:" + hashlib.sha256(self.layer).hexdigest()
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                             "rootfs": {"type": "layers",
                                        "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
        self.config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        self.blobs = {digest: self.served, self.config_digest: config}
        self.layer_digest = digest
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": self.config_digest,
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": digest,
                        "size": len(self.layer)}]}).encode()
        self.drop_once, self.ignore_range = drop_once, ignore_range
        self.ranges: list[str | None] = []


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Registry
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        if "/manifests/" in self.path:
            body, status, headers = srv.manifest, 200, {
                "Content-Type": "application/vnd.docker.distribution.manifest.v2+json"}
        elif "/blobs/" in self.path:
            data = srv.blobs[self.path.rsplit("/", 1)[1]]
            ranged = self.headers.get("Range")
            if data is srv.served:
                srv.ranges.append(ranged)
            start = int(ranged[6:].rstrip("-")) if ranged and not srv.ignore_range else 0
            body, status, headers = data[start:], 206 if start else 200, {}
            if data is srv.served and srv.drop_once:
                srv.drop_once = False
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
        else:
            body, status, headers = b"{}", 200, {}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve() -> Iterator:
    servers: list[_Registry] = []

    def start(**options: object) -> _Registry:
        server = _Registry(**options)  # type: ignore[arg-type]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("ignore_range", [False, True])
def test_a_dropped_connection_mid_layer_resumes_and_the_image_is_whole(serve, tmp_path, ignore_range: bool) -> None:
    registry = serve(drop_once=True, ignore_range=ignore_range)
    service = ImageService(ImageStore(str(tmp_path / "store")))
    tag = f"127.0.0.1:{registry.server_address[1]}/stream:1"
    messages = list(service.pull(tag))
    assert messages[-1]["status"] == f"Status: Downloaded newer image for {tag}"
    assert registry.ranges[0] is None and registry.ranges[1] == f"bytes={len(registry.layer) // 2}-"
    image = service.store.resolve(tag)
    assert image.id == registry.config_digest
    with open(os.path.join(image.layer_dirs()[0], "data", "blob.bin"), "rb") as f:
        assert f.read() == FILE
    layer = image.layers()[0]
    assert layer.meta["blob_digest"] == registry.layer_digest
    with open(layer.blob_path, "rb") as f:
        assert f.read() == registry.layer  # the kept blob (for save and push) is the registry's, byte for byte
    assert os.listdir(os.path.join(service.store.root, "downloads")) == []


def test_a_valid_layer_under_the_wrong_digest_leaves_nothing(serve, tmp_path) -> None:
    """The substitute unpacks cleanly; it is refused by its digest at the end, before the layer is committed."""
    other = gzip.compress(_layer_tar()[:-1024] + bytes(1024), mtime=1)
    registry = serve(served=other)
    store = ImageStore(str(tmp_path / "store"))
    tag = f"127.0.0.1:{registry.server_address[1]}/stream:1"
    with pytest.raises(InvalidParameter, match="filesystem layer verification failed for digest "
                       + registry.layer_digest):
        list(ImageService(store).pull(tag))
    assert store.list(all=True) == []
    assert os.listdir(os.path.join(store.root, "layers")) == []
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert os.listdir(os.path.join(store.root, "downloads")) == []

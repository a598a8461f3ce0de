"""A front for Debian's docker-registry that adds the registry signature extension as OpenShift's registry serves
it (``pkg/dockerregistry/server/signaturedispatcher.go``), since Debian's registry has none.

Every answer carries ``X-Registry-Supports-Signatures: 1`` (OpenShift sets it as a header of all responses);
``GET|PUT /extensions/v2/<name>/signatures/<digest>`` are answered here, everything else is passed to the registry
unchanged (chunked request bodies, as Go clients send them, are passed on whole). As in OpenShift: a manifest the
registry does not have is 404 with no body; ``GET`` lists ``{"signatures": [...]}`` (schemaVersion 2, name, type,
content in base64); ``PUT`` takes one such object, refuses a body that is not one (400 ``SIGNATURE_INVALID``, also for
a schemaVersion other than 2), defaults the type to ``atomic``, refuses a name that is not ``<digest>@<name>`` (400)
or is taken (409 ``SIGNATURE_EXISTS``) and answers 201 with no body. ``listing`` replaces the GET answer (status,
body: a hostile or failing registry) while set.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import re
import threading
from collections.abc import Callable

HEADER = "X-Registry-Supports-Signatures"
ROUTE = re.compile(r"^/extensions/v2/(?P<name>[a-z0-9][a-z0-9._/-]*)/signatures/(?P<digest>sha256:[0-9a-f]{64})$")
MANIFESTS = ", ".join(("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                       "application/vnd.docker.distribution.manifest.v2+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json"))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def _errors(code: str, message: str, detail: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": detail}]}).encode()


class SignatureFront:
    """The front on 127.0.0.1 (``host``), its signatures in memory: ``stored[(repository, digest)]`` is the list of
    ``{"name", "type", "content": bytes}`` in the order they were added."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.stored: dict[tuple[str, str], list[dict]] = {}
        self.listing: Callable[[str, str], tuple[int, bytes]] | None = None
        self.lock = threading.Lock()
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                front.handle(self)

            do_PUT = do_POST = do_PATCH = do_HEAD = do_DELETE = do_GET

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    # --- one request -------------------------------------------------------------------------------------------

    def handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        body = self._body(req)
        route = ROUTE.match(req.path.split("?", 1)[0])
        if route is None:
            self._proxy(req, body)
            return
        name, digest = route["name"], route["digest"]
        if req.command not in ("GET", "PUT"):
            self._answer(req, 405, b"")
        elif not self._has_manifest(name, digest):
            self._answer(req, 404, b"")
        elif req.command == "GET":
            status, listed = self._list(name, digest)
            self._answer(req, status, listed, "application/json; charset=utf-8")
        else:
            status, answer = self._add(name, digest, body)
            self._answer(req, status, answer, "application/json; charset=utf-8" if answer else None)

    def _list(self, name: str, digest: str) -> tuple[int, bytes]:
        if self.listing is not None:
            return self.listing(name, digest)
        with self.lock:
            entries = list(self.stored.get((name, digest), []))
        return 200, json.dumps({"signatures": [
            {"schemaVersion": 2, "name": e["name"], "type": e["type"],
             "content": base64.b64encode(e["content"]).decode()}
            for e in entries]}).encode()

    def _add(self, name: str, digest: str, body: bytes) -> tuple[int, bytes]:
        try:
            sig = json.loads(body)
            content = base64.b64decode(sig.get("content") or "", validate=True)
            version, sig_name, kind = sig.get("schemaVersion"), sig.get("name"), sig.get("type") or "atomic"
        except (ValueError, AttributeError, TypeError) as exc:
            return 400, _errors("SIGNATURE_INVALID", "invalid image signature", str(exc))
        if version != 2:
            return 400, _errors("SIGNATURE_INVALID", "invalid image signature",
                                "only schemaVersion=2 is currently supported")
        signed, _, short = str(sig_name).partition("@")
        if signed != digest or not short:
            return 400, _errors("SIGNATURE_INVALID", "invalid image signature",
                                f'ImageSignature "{sig_name}" is invalid: metadata.name: Invalid value')
        with self.lock:
            entries = self.stored.setdefault((name, digest), [])
            if any(e["name"] == sig_name for e in entries):
                return 409, _errors("SIGNATURE_EXISTS", "image signature already exists",
                                    f'imagesignatures.image.openshift.io "{sig_name}" already exists')
            entries.append({"name": sig_name, "type": kind, "content": content})
        return 201, b""

    # --- plumbing ----------------------------------------------------------------------------------------------

    @staticmethod
    def _body(req: http.server.BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (req.headers.get("Transfer-Encoding") or "").lower():
            parts = []
            while True:
                size = int(req.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while req.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(req.rfile.read(size))
                req.rfile.readline()
        length = int(req.headers.get("Content-Length") or 0)
        return req.rfile.read(length) if length else b""

    def _has_manifest(self, name: str, digest: str) -> bool:
        conn = http.client.HTTPConnection(self.upstream, timeout=30)
        try:
            conn.request("HEAD", f"/v2/{name}/manifests/{digest}", headers={"Accept": MANIFESTS})
            return conn.getresponse().status == 200
        finally:
            conn.close()

    def _proxy(self, req: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        conn = http.client.HTTPConnection(self.upstream, timeout=120)
        try:  # every header line kept (Go sends one Accept per media type), Host too: Locations point back here
            conn.putrequest(req.command, req.path, skip_host=True, skip_accept_encoding=True)
            for key, value in req.headers.items():
                if key.lower() not in HOP_BY_HOP | {"content-length"}:
                    conn.putheader(key, value)
            if body or req.command in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read()
            req.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in HOP_BY_HOP and (key.lower() != "content-length" or req.command == "HEAD"):
                    req.send_header(key, value)
            req.send_header(HEADER, "1")
            if req.command != "HEAD":
                req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            if req.command != "HEAD":
                req.wfile.write(data)
        finally:
            conn.close()

    @staticmethod
    def _answer(req: http.server.BaseHTTPRequestHandler, status: int, body: bytes, media: str | None = None) -> None:
        req.send_response(status)
        req.send_header(HEADER, "1")
        req.send_header("Docker-Distribution-Api-Version", "registry/2.0")
        if media:
            req.send_header("Content-Type", media)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

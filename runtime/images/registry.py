"""Registry client (distribution API v2) for pull, push and login, standard library only.

Auth follows the ``WWW-Authenticate`` challenge (anonymous, Basic, or a Bearer token from the realm with pull or
pull,push scope). Every digest is checked: manifests, the config, each compressed blob as it streams in and each
layer's diff ID as it is unpacked. Layers download in parallel, resume from a partial file after an interruption,
and an image is recorded only once all of its layers are in the store, so a failed pull leaves no half image.
Plain HTTP is used only for loopback registries and those named as insecure; HTTPS verifies against the system
CAs plus ``<certs.d>/<host>/ca.crt``, and Authorization is never sent on to a redirect's other host. Requests go
through the daemon's proxies (``runtime.proxy``: CONNECT for https), and pulls of Docker Hub images try the
daemon's registry mirrors first, falling back to the next mirror and then the hub when one fails, as dockerd does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import http.client
import ipaddress
import json
import os
import queue
import re
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Callable

from machines.runtime.errors import EngineError, HostError, InvalidParameter, NotFound
from machines.runtime.images import archive, reference
from machines.runtime.images.media import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_LIST,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    chain_ids,
    host_platform,
    sha256_bytes,
)
from machines.runtime.images.reference import Reference
from machines.runtime.images.store import Image, ImageStore, Layer
from machines.runtime.proxy import ProxyConfig

MANIFEST_ACCEPT = ", ".join([MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST])
GZIP_LAYER_TYPES = (MEDIA_DOCKER_LAYER_GZIP, MEDIA_OCI_LAYER_GZIP)
PARALLEL = 3
CHUNK = 1 << 18
TIMEOUT = 60
MAX_MANIFEST = 4 << 20
USER_AGENT = "docker/28.0 (machines runtime)"


class Unauthorized(EngineError):
    """The registry refused the credentials (Docker answers 401)."""

    status = 401


def decode_auth(header: str | None) -> dict:
    """``X-Registry-Auth``: base64url JSON (``e30=`` is ``{}``); tolerant of missing padding like moby."""
    if not header:
        return {}
    try:
        raw = base64.b64decode(header + "=" * (-len(header) % 4), altchars=b"-_", validate=True)
        value = json.loads(raw or b"{}")
    except (ValueError, TypeError, RecursionError, binascii.Error):
        raise InvalidParameter("invalid X-Registry-Auth header") from None
    return value if isinstance(value, dict) else {}


def as_auth(auth: dict | str | None) -> dict:
    """Credentials as a dict, from a dict or a raw ``X-Registry-Auth`` header."""
    if isinstance(auth, str) or auth is None:
        return decode_auth(auth)
    return auth


def auth_for_host(config: dict, host: str) -> dict:
    """Pick the entry for ``host`` from an ``X-Registry-Config`` map (keys may be URLs or Docker Hub's alias)."""
    for key, value in (config or {}).items():
        name = urllib.parse.urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if name in ("index.docker.io", "registry-1.docker.io"):
            name = "docker.io"
        if name == host:
            return value
    return {}


def _registry_error(resp_body: bytes, fallback: str) -> str:
    """Registry JSON errors -> Docker's ``code: message`` form."""
    try:
        errors = json.loads(resp_body).get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    parts = [f"{str(e.get('code', '')).lower().replace('_', ' ')}: {e.get('message', '')}"
             for e in errors if isinstance(e, dict)]
    return ", ".join(parts) or fallback


def _progress_bar(current: int, total: int) -> str:
    width = 50
    filled = int(width * current / total) if total else 0
    bar = "=" * max(filled - 1, 0) + (">" if filled else "") + " " * (width - filled)
    return f"[{bar}] {_human(current)}/{_human(total)}"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return (f"{n:.4g}{unit}")
        n /= 1000.0
    return f"{n:.4g}TB"


def _message(status: str, layer_id: str | None = None, **extra: object) -> dict:
    msg: dict = {"status": status}
    if layer_id is not None:
        msg["progressDetail"] = extra.pop("progressDetail", {})
        msg["id"] = layer_id
    msg.update(extra)
    return msg


class RegistryOptions:
    """Per-daemon registry settings: which hosts may use plain HTTP and where per-registry CAs live."""

    def __init__(self, insecure_registries: Sequence[str] = (), certs_dirs: Sequence[str] = (), *,
                 mirrors: Sequence[str] = (), proxies: ProxyConfig | None = None) -> None:
        self.insecure_registries = list(insecure_registries)
        self.certs_dirs = list(certs_dirs)
        self.mirrors = [mirror.rstrip("/") for mirror in mirrors]
        self.proxies = proxies or ProxyConfig()
        self._contexts: dict[str, ssl.SSLContext] = {}

    def mirrors_for(self, ref: Reference) -> list[str]:
        """The mirrors a pull of ``ref`` tries before its registry: only Docker Hub images have them."""
        return self.mirrors if ref.domain == "docker.io" else []

    def is_insecure(self, host: str) -> bool:
        """127.0.0.0/8 (and localhost) like Docker's default, plus opted-in hosts or CIDRs."""
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if name == "localhost" or host in self.insecure_registries or name in self.insecure_registries:
            return True
        try:
            addr = ipaddress.ip_address(name)
        except ValueError:
            return False
        if addr.is_loopback:
            return True
        for item in self.insecure_registries:
            try:
                if "/" in item and addr in ipaddress.ip_network(item, strict=False):
                    return True
            except ValueError:
                continue
        return False

    def has_ca(self, host: str) -> bool:
        """A certs.d folder for the host means it speaks TLS, even on loopback."""
        return any(os.path.isdir(os.path.join(base, host)) for base in self.certs_dirs)

    def ssl_context(self, host: str) -> ssl.SSLContext:
        """System CAs plus ``<certs.d>/<host>/*.crt`` (and a client.cert/client.key pair), made once per host."""
        ctx = self._contexts.get(host)
        if ctx is None:
            ctx = self._contexts[host] = self._make_context(host)
        return ctx

    def _make_context(self, host: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        for base in self.certs_dirs:
            folder = os.path.join(base, host)
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if name.endswith(".crt"):
                    ctx.load_verify_locations(cafile=path)
            cert, key = os.path.join(folder, "client.cert"), os.path.join(folder, "client.key")
            if os.path.exists(cert) and os.path.exists(key):
                ctx.load_cert_chain(cert, key)
        return ctx


class Response:
    """A finished or streaming registry response; ``close`` releases the connection."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse, url: str) -> None:
        self.conn = conn
        self.resp = resp
        self.url = url
        self.status = resp.status

    def header(self, name: str) -> str:
        return self.resp.getheader(name) or ""

    def read(self, n: int = -1) -> bytes:
        return self.resp.read() if n < 0 else self.resp.read(n)

    def close(self) -> None:
        self.conn.close()


class Session:
    """One repository on one registry, with the credentials and token for a scope."""

    def __init__(self, ref: Reference, auth: dict, options: RegistryOptions, actions: str = "pull",
                 endpoint: str | None = None) -> None:
        """``endpoint``: a mirror's ``scheme://host[:port]`` to ask instead of the reference's registry."""
        self.ref = ref
        self.auth = auth or {}
        self.options = options
        self.scope = f"repository:{ref.path}:{actions}"
        if endpoint:
            parts = urllib.parse.urlsplit(endpoint)
            self.host, self.scheme = parts.netloc, parts.scheme
        else:
            self.host = ref.api_host
            self.scheme = "http" if options.is_insecure(self.host) and not options.has_ca(self.host) else "https"
        self.base = f"{self.scheme}://{self.host}"
        self._authorization: str | None = None
        self._lock = threading.Lock()

    # --- transport --------------------------------------------------------------------------------------------

    def _send(self, method: str, url: str, headers: dict[str, str], body: object = None) -> Response:
        parts = urllib.parse.urlsplit(url)
        host = parts.netloc
        proxy = self.options.proxies.for_url(url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        all_headers = {"User-Agent": USER_AGENT}
        try:
            if parts.scheme == "https":
                conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                    proxy.host if proxy else host, proxy.port if proxy else None, timeout=TIMEOUT,
                    context=self.options.ssl_context(host))
                if proxy:  # CONNECT host:port through the proxy, then TLS with the registry itself
                    tunnel = {"Proxy-Authorization": proxy.authorization} if proxy.authorization else None
                    conn.set_tunnel(host, headers=tunnel)
            elif parts.scheme == "http":
                conn = http.client.HTTPConnection(proxy.host if proxy else host, proxy.port if proxy else None,
                                                  timeout=TIMEOUT)
                if proxy:  # a plain-HTTP request goes to the proxy in absolute form
                    path = url
                    if proxy.authorization:
                        all_headers["Proxy-Authorization"] = proxy.authorization
            else:
                raise HostError(f"unsupported URL scheme in {url}")
            all_headers.update(headers)
            conn.request(method, path or "/", body=body, headers=all_headers)  # type: ignore[arg-type]
            return Response(conn, conn.getresponse(), url)
        except ssl.SSLError as exc:
            raise HostError(f'{method.capitalize()} "{url}": tls: {exc}') from None
        except OSError as exc:
            raise HostError(f'{method.capitalize()} "{url}": {exc}') from None

    def ping(self) -> Response:
        """``GET /v2/`` without credentials, as clients probe a registry for its API version and extensions."""
        return self._send("GET", self.base + "/v2/", {})

    def request(self, method: str, path_or_url: str, headers: dict[str, str] | None = None,
                body: object = None, *, redirects: int = 5) -> Response:
        """Send with auth; answer one 401 challenge; follow redirects (dropping Authorization off-host)."""
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        headers = dict(headers or {})
        for attempt in range(2):
            sent = dict(headers)
            if self._authorization and urllib.parse.urlsplit(url).netloc == self.host:
                sent["Authorization"] = self._authorization
            resp = self._send(method, url, sent, body)
            if resp.status == 401 and attempt == 0 and not hasattr(body, "read"):
                challenge = resp.header("WWW-Authenticate")
                resp.read()
                resp.close()
                with self._lock:  # parallel layer threads share one token
                    self._authenticate(challenge)
                continue
            break
        hops = 0
        while resp.status in (301, 302, 303, 307, 308) and hops < redirects:
            location = urllib.parse.urljoin(url, resp.header("Location"))
            resp.read()
            resp.close()
            hops += 1
            same_host = urllib.parse.urlsplit(location).netloc == self.host
            sent = dict(headers)
            if same_host and self._authorization:
                sent["Authorization"] = self._authorization
            if resp.status == 303:
                method, body = "GET", None
            url = location
            resp = self._send(method, url, sent, body)
        if resp.status == 401:
            text = _registry_error(resp.read(), "authentication required")
            resp.close()
            raise Unauthorized(f"{self.ref.familiar_name}: {text}" if "unauthorized" not in text
                               else text)
        return resp

    def _authenticate(self, challenge: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        user, password = self.auth.get("username"), self.auth.get("password")
        basic = None
        if user and password:
            basic = "Basic " + base64.b64encode((f"{user}:{password}").encode()).decode()
        if scheme.lower() == "basic":
            if basic is None:
                raise Unauthorized("unauthorized: authentication required")
            self._authorization = basic
            return
        if scheme.lower() != "bearer" or "realm" not in params:
            raise Unauthorized(f"unauthorized: unsupported authentication challenge {scheme!r}")
        if self.auth.get("registrytoken"):
            self._authorization = "Bearer " + self.auth["registrytoken"]
            return
        query = {"scope": self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        token_url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        headers = {"Authorization": basic} if basic else {}
        resp = self._send("GET", token_url, headers)
        data = resp.read()
        resp.close()
        if resp.status != 200:
            raise Unauthorized('Get "{}": {}'.format(params["realm"], _registry_error(
                data, "unauthorized: incorrect username or password")))
        try:
            token = json.loads(data)
            self._authorization = "Bearer " + (token.get("token") or token["access_token"])
        except (ValueError, KeyError, TypeError):
            raise Unauthorized(f"invalid token response from {params['realm']}") from None

    def get_json_blob(self, path: str, accept: str, expected: str | None, *,
                      missing: str = "manifest for {ref} not found: ") -> tuple[dict, bytes, str, str]:
        """GET a manifest or config; verify its digest. Returns (doc, bytes, media type, digest). A 404 is NotFound
        with ``missing`` (``{ref}``: the familiar reference) before the registry's own words."""
        resp = self.request("GET", path, {"Accept": accept})
        data = resp.read(MAX_MANIFEST + 1)
        resp.close()
        if resp.status == 404:
            raise NotFound(missing.format(ref=self.ref.familiar()) + _registry_error(data, "manifest unknown"))
        if resp.status != 200:
            raise HostError(f"{path}: {_registry_error(data, f'HTTP {resp.status}')}")
        if len(data) > MAX_MANIFEST:
            raise InvalidParameter("manifest too large")
        digest = sha256_bytes(data)
        claimed = resp.header("Docker-Content-Digest")
        if (expected and digest != expected) or (claimed and claimed.startswith("sha256:") and claimed != digest):
            raise InvalidParameter("manifest verification failed for digest %s" % (expected or claimed))
        try:
            doc = json.loads(data)
        except ValueError:
            raise InvalidParameter(f"invalid JSON from {path}") from None
        if not isinstance(doc, dict):
            raise InvalidParameter(f"invalid manifest from {path}: not a JSON object")
        media = doc.get("mediaType") or resp.header("Content-Type").split(";")[0]
        return doc, data, media, digest


# --- pull ------------------------------------------------------------------------------------------------------

def _choose_platform(index: dict, wanted: dict[str, str]) -> dict:
    """The index entry for the wanted platform; attestation entries (unknown/unknown) never match."""
    best = None
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) != (wanted["os"], wanted["architecture"]):
            continue
        variant = wanted.get("variant")
        if variant and plat.get("variant") not in (None, variant):
            continue
        if best is None or plat.get("variant") == variant:
            best = desc
    if best is None:
        raise NotFound(f"no matching manifest for {wanted['os']}/{wanted['architecture']} in the manifest list entries")
    return best


def parse_platform(text: str | None) -> dict[str, str]:
    if not text:
        return host_platform()
    parts = text.split("/")
    out = {"os": parts[0], "architecture": parts[1] if len(parts) > 1 else host_platform()["architecture"]}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


_download_locks: dict[str, threading.Lock] = {}
_download_guard = threading.Lock()


def _download_lock(key: str) -> threading.Lock:
    with _download_guard:
        return _download_locks.setdefault(key, threading.Lock())


class _Puller:
    """One pull: resolves the manifest, fetches layers in parallel threads and reports through a queue."""

    def __init__(self, store: ImageStore, session: Session, events: queue.Queue[dict | None],
                 stop: threading.Event) -> None:
        self.store = store
        self.session = session
        self.events = events
        self.stop = stop
        self.downloads = os.path.join(store.root, "downloads")
        os.makedirs(self.downloads, exist_ok=True)

    def layer(self, desc: dict, diff_id: str, parent: str | None, pins: list[str]) -> None:
        """Download and unpack one layer in a single pass (``ImageStore.add_layer_from``: the blob's digest is
        checked before the layer is committed)."""
        short = desc["digest"][7:19]
        with _download_lock(self.store.root + desc["digest"]):
            download = _Download(self, desc, short)
            try:
                with download:
                    layer = self.store.add_layer_from(download, parent, diff_id=diff_id, pins=pins)
                self.store.remember_blob(layer.chain_id, desc)
            finally:
                if os.path.exists(download.path):
                    os.unlink(download.path)
        self.events.put(_message("Pull complete", short))


class _Download(archive.Blob):
    """A layer blob as it downloads: the bytes an interrupted earlier pull left in ``downloads/<hex>.partial``
    first, then the registry's from there on (a Range request), each appended to that file as it is read. A
    connection that drops half-way is resumed the same way (three attempts in all); a registry that ignores
    Range sends the blob from its start, and the bytes we have are skipped. Progress goes to the pull's events."""

    def __init__(self, puller: _Puller, desc: dict, short: str) -> None:
        digest = desc["digest"]
        super().__init__(os.path.join(puller.downloads, os.path.basename(puller.store.blob_path(digest)) + ".partial"),
                         digest)
        self._puller = puller
        self._short = short
        self._total = int(desc.get("size") or 0)
        self._earlier = open(self.path, "rb") if os.path.exists(self.path) else None
        self._out = open(self.path, "ab", buffering=0)
        self._resp: Response | None = None
        self._failures = 0
        self._skip = 0
        self._reported = 0
        self._ended = False
        self._verified = False

    def _message(self, status: str, **extra: object) -> None:
        self._puller.events.put(_message(status, self._short, **extra))

    def _next(self, view: memoryview) -> int:
        if self._earlier is not None:
            n = self._earlier.readinto(view) or 0
            if n:
                return n
            self._earlier.close()
            self._earlier = None
        while not self._ended:
            if self._puller.stop.is_set():
                raise HostError("pull cancelled")
            if self._resp is None:
                self._request()
                continue
            try:
                n = self._resp.resp.readinto(view[:self._skip] if self._skip else view)
            except OSError as exc:
                self._failed(exc)
                continue
            if not n:
                self._close_response()
                if self._total and self.size < self._total:
                    self._failed(HostError("connection closed before the end of the blob"))
                    continue
                self._ended = True
                self._message("Verifying Checksum")
                break
            if self._skip:
                self._skip -= n
                continue
            chunk = view[:n]
            while chunk:
                chunk = chunk[self._out.write(chunk):]
            self._progress(self.size + n)
            return n
        return 0

    def _progress(self, done: int) -> None:
        if done - self._reported >= CHUNK * 2 or done == self._total:
            self._reported = done
            self._message("Downloading", progressDetail={"current": done, "total": self._total},
                          progress=_progress_bar(done, self._total))

    def _request(self) -> None:
        digest, have = self.expected, self.size
        try:
            resp = self._puller.session.request("GET", f"/v2/{self._puller.session.ref.path}/blobs/{digest}",
                                                {"Range": f"bytes={have}-"} if have else {})
        except HostError as exc:
            self._failed(exc)
            return
        if resp.status == 416 and have:  # we have it all already
            resp.read()
            resp.close()
            self._ended = True
            self._message("Verifying Checksum")
            return
        if resp.status not in (200, 206):
            body = resp.read()
            resp.close()
            if resp.status == 404:
                raise NotFound(f"blob {digest} not found: {_registry_error(body, 'blob unknown')}")
            raise HostError(f"fetching blob {digest}: {_registry_error(body, f'HTTP {resp.status}')}")
        self._skip = have if resp.status == 200 else 0
        self._resp = resp

    def _failed(self, exc: Exception) -> None:
        self._close_response()
        self._failures += 1
        if self._failures >= 3:
            raise HostError(f"fetching blob {self.expected}: {exc}") from None

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    def finish(self) -> tuple[str, int]:
        digest, size = super().finish()
        if not self._verified:
            self._verified = True
            self._message("Download complete")
            self._message("Extracting")
        return digest, size

    def _mismatch(self, digest: str) -> None:
        self.close()
        if os.path.exists(self.path):
            os.unlink(self.path)
        raise InvalidParameter(f"filesystem layer verification failed for digest {self.expected}")

    def close(self) -> None:
        self._close_response()
        if self._earlier is not None:
            self._earlier.close()
        self._out.close()
        super().close()


def _run_parallel(tasks: list[Callable[[], None]], events: queue.Queue[dict | None],
                  stop: threading.Event) -> Iterator[dict]:
    """Run tasks on PARALLEL threads, yielding their events; re-raise the first failure after all stop."""
    pending: queue.Queue[Callable[[], None]] = queue.Queue()
    for task in tasks:
        pending.put(task)
    errors: list[BaseException] = []

    def worker() -> None:
        while not stop.is_set():
            try:
                task = pending.get_nowait()
            except queue.Empty:
                break
            try:
                task()
            except BaseException as exc:  # handed to the caller's thread below
                errors.append(exc)
                stop.set()
        events.put(None)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(PARALLEL, len(tasks)))]
    for t in threads:
        t.start()
    running = len(threads)
    try:
        while running:
            item = events.get()
            if item is None:
                running -= 1
            else:
                yield item
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def pull(store: ImageStore, image: str, tag: str | None = None, auth: dict | None = None,
         platform: str | None = None, options: RegistryOptions | None = None,
         check: Callable[[Session, str], None] | None = None) -> Iterator[dict]:
    """``POST /images/create?fromImage=..&tag=..``: Docker's JSON progress messages.

    The manifest and config are fetched before this returns, so a missing image, bad credentials or an
    unreachable registry raise here (NotFound, Unauthorized, HostError: an HTTP error status, as moby answers
    before its stream starts), and so does ``check(session, manifest digest)`` (the trust policy; a mirror whose
    manifest it refuses is skipped like a failing one); layer failures (InvalidParameter for digest mismatches,
    HostError) are raised while iterating, after progress has gone out.
    """
    ref = reference.join_repo_tag(image, tag)
    options = options or RegistryOptions()
    for mirror in options.mirrors_for(ref):
        try:
            return _pull_from(store, Session(ref, auth or {}, options, "pull", mirror), platform, check)
        except EngineError:
            continue  # a mirror that fails is skipped, as dockerd falls back to the next endpoint
    return _pull_from(store, Session(ref, auth or {}, options, "pull"), platform, check)


def _pull_from(store: ImageStore, session: Session, platform: str | None,
               check: Callable[[Session, str], None] | None) -> Iterator[dict]:
    """Resolve the manifest and config at one endpoint; the layers then stream from the same endpoint."""
    try:  # the registry's documents are data: a malformed one is a clear error, never a crash
        return _pull_layers(store, session, *_image_documents(session, platform, check))
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise InvalidParameter(f"invalid manifest for {session.ref.familiar()}: {exc!r}") from None


def _image_documents(session: Session, platform: str | None, check: Callable[[Session, str], None] | None,
                     ) -> tuple[list[dict], list[str], bytes, str]:
    """The manifest (through an index, for the wanted platform) and config of a pull: (layer descriptors, diff
    IDs, config bytes, the digest the reference points to)."""
    ref = session.ref
    doc, data, media, digest = session.get_json_blob(f"/v2/{ref.path}/manifests/{ref.digest or ref.tag}",
                                                     MANIFEST_ACCEPT, ref.digest)
    manifest_digest = ref.digest or digest  # what the tag points to (an index, for multi-platform images)
    if check is not None:
        check(session, manifest_digest)
    if media in INDEX_TYPES or "manifests" in doc:
        entry = _choose_platform(doc, parse_platform(platform))
        doc, data, media, _ = session.get_json_blob(
            f"/v2/{ref.path}/manifests/{entry['digest']}", MANIFEST_ACCEPT, entry["digest"])
    if media not in MANIFEST_TYPES and "layers" not in doc:
        raise InvalidParameter(f"unsupported manifest media type {media}")
    config_desc = doc.get("config") or {}
    config_bytes = _fetch_small_blob(session, config_desc["digest"])
    config = json.loads(config_bytes)
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = [d for d in doc.get("layers") or [] if not d.get("urls")]
    if len(layers) != len(diff_ids):
        raise InvalidParameter(f"image config has {len(diff_ids)} diff IDs for {len(layers)} layers")
    return layers, diff_ids, config_bytes, manifest_digest


def _pull_layers(store: ImageStore, session: Session, layers: list[dict], diff_ids: list[str],
                 config_bytes: bytes, manifest_digest: str) -> Iterator[dict]:
    """The streamed part of a pull: layers in parallel, then the image is recorded (all or nothing)."""
    ref = session.ref
    config_desc = {"digest": sha256_bytes(config_bytes)}
    yield {"status": f"Pulling from {ref.path}", "id": ref.tag or ref.digest}
    chains = chain_ids(diff_ids)
    tags = [ref] if ref.tag else []
    digests = [Reference(ref.domain, ref.path, None, manifest_digest)]
    up_to_date = store.exists(config_desc["digest"]) and all(store.has_layer(c) for c in chains)
    events: queue.Queue[dict | None] = queue.Queue()
    stop = threading.Event()
    with store.pinned() as pins:
        tasks: list[Callable[[], None]] = []
        for i, desc in enumerate(layers):
            short = desc["digest"][7:19]
            if store.pin_layer(chains[i], pins):
                store.remember_blob(chains[i], desc)
                if not up_to_date:
                    yield _message("Already exists", short)
                continue
            yield _message("Pulling fs layer", short)
            puller = _Puller(store, session, events, stop)
            tasks.append(functools.partial(puller.layer, desc, diff_ids[i], chains[i - 1] if i else None, pins))
        try:
            yield from _run_parallel(tasks, events, stop)
        finally:
            stop.set()
        store.register(config_bytes, tags=tags, digests=digests)
    yield {"status": f"Digest: {manifest_digest}"}
    shown = ref.familiar()
    if up_to_date:
        yield {"status": f"Status: Image is up to date for {shown}"}
    else:
        yield {"status": f"Status: Downloaded newer image for {shown}"}


def _fetch_small_blob(session: Session, digest: str) -> bytes:
    resp = session.request("GET", f"/v2/{session.ref.path}/blobs/{digest}")
    data = resp.read(MAX_MANIFEST + 1)
    resp.close()
    if resp.status != 200:
        raise HostError(f"fetching config {digest}: {_registry_error(data, f'HTTP {resp.status}')}")
    if sha256_bytes(data) != digest:
        raise InvalidParameter(f"image config verification failed for digest {digest}")
    return data


# --- push ------------------------------------------------------------------------------------------------------

class _ProgressReader:
    """File wrapper for http.client uploads that reports how much has gone out."""

    def __init__(self, path: str, report: Callable[[int], None]) -> None:
        self.file = open(path, "rb")
        self.report = report
        self.done = 0

    def read(self, n: int = -1) -> bytes:
        data = self.file.read(n if n and n > 0 else CHUNK)
        if data:
            self.done += len(data)
            self.report(self.done)
        return data

    def close(self) -> None:
        self.file.close()


def _gzip_blob(store: ImageStore, layer: Layer) -> tuple[str, str, int]:
    """A gzip blob for pushing (cached next to the layer): (path, digest, size)."""
    if layer.meta.get("media_type") == MEDIA_OCI_LAYER_GZIP:
        return layer.blob_path, layer.meta["blob_digest"], int(layer.meta["blob_size"])
    path = os.path.join(layer.path, "push.tar.gz")
    meta_path = os.path.join(layer.path, "push.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        return path, meta["digest"], meta["size"]
    import gzip
    import shutil
    tmp = path + f".{threading.get_ident()}.tmp"
    with archive.decompressed(layer.blob_path) as src, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            shutil.copyfileobj(src, gz, CHUNK)
    os.replace(tmp, path)
    digest, size = archive.file_digest(path)
    with open(meta_path + ".tmp", "w") as f:
        json.dump({"digest": digest, "size": size}, f)
    os.replace(meta_path + ".tmp", meta_path)
    return path, digest, size


def _has_blob(session: Session, digest: str) -> bool:
    resp = session.request("HEAD", f"/v2/{session.ref.path}/blobs/{digest}")
    resp.close()
    return resp.status == 200


def _upload(session: Session, path: str, digest: str, size: int, report: Callable[[int], None]) -> bool:
    """Upload one blob unless the registry has it; True if it was already there."""
    repo = session.ref.path
    if _has_blob(session, digest):
        return True
    resp = session.request("POST", f"/v2/{repo}/blobs/uploads/", {"Content-Length": "0"}, b"")
    body = resp.read()
    resp.close()
    if resp.status != 202:
        raise HostError(f"starting upload of {digest}: {_registry_error(body, f'HTTP {resp.status}')}")
    location = urllib.parse.urljoin(session.base + "/", resp.header("Location"))
    location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
    reader = _ProgressReader(path, report)
    try:
        resp = session.request("PUT", location, {"Content-Type": "application/octet-stream",
                                                 "Content-Length": str(size)}, reader)
    finally:
        reader.close()
    body = resp.read()
    resp.close()
    if resp.status not in (201, 204):
        raise HostError(f"uploading {digest}: {_registry_error(body, f'HTTP {resp.status}')}")
    return False


def push(store: ImageStore, image: str, tag: str | None = None, auth: dict | None = None,
         options: RegistryOptions | None = None) -> Iterator[dict]:
    """``POST /images/{name}/push``: Docker's push messages, ending with aux ``{Tag, Digest, Size}``.

    A missing local image raises NotFound here, before the stream; registry errors come while iterating.
    """
    base = reference.parse(image, default_tag=False)
    if tag:
        refs = [reference.join_repo_tag(image, tag)]
    elif base.tag:
        refs = [base]
    else:
        refs = [reference.parse(t) for t in store.tags_of_repo(base.name)]
    images = []
    for ref in refs or [base.with_default_tag()]:
        try:
            images.append((ref, store.resolve(str(ref))))
        except NotFound:
            raise NotFound(f"An image does not exist locally with the tag: {ref.familiar_name}") from None
    return _push_stream(store, base, images, auth or {}, options or RegistryOptions())


def _push_stream(store: ImageStore, base: Reference, images: list[tuple[Reference, Image]], auth: dict,
                 options: RegistryOptions) -> Iterator[dict]:
    yield {"status": f"The push refers to repository [{base.name}]"}
    for ref, img in images:
        yield from _push_one(store, ref, img, auth, options)


def _push_one(store: ImageStore, ref: Reference, img: Image, auth: dict,
              options: RegistryOptions) -> Iterator[dict]:
    session = Session(ref, auth, options, "pull,push")
    layers = img.layers()
    events: queue.Queue[dict | None] = queue.Queue()
    stop = threading.Event()
    descs: list[dict | None] = [None] * len(layers)
    for layer in reversed(layers):
        yield _message("Preparing", layer.diff_id[7:19])

    def task(i: int, layer: Layer) -> None:
        short = layer.diff_id[7:19]
        for known in layer.remote_blobs():
            if known.get("mediaType") in GZIP_LAYER_TYPES and _has_blob(session, known["digest"]):
                events.put(_message("Layer already exists", short))
                descs[i] = {"mediaType": MEDIA_DOCKER_LAYER_GZIP, "size": known["size"],
                            "digest": known["digest"]}
                return
        path, digest, size = _gzip_blob(store, layer)
        last = [0]

        def report(done: int) -> None:
            if done - last[0] >= CHUNK * 2 or done == size:
                last[0] = done
                events.put(_message("Pushing", short, progressDetail={"current": done, "total": size},
                                    progress=_progress_bar(done, size)))

        existed = _upload(session, path, digest, size, report)
        events.put(_message("Layer already exists" if existed else "Pushed", short))
        descs[i] = {"mediaType": MEDIA_DOCKER_LAYER_GZIP, "size": size, "digest": digest}

    yield from _run_parallel([functools.partial(task, i, layer) for i, layer in enumerate(layers)],
                             events, stop)
    config_bytes = store.get_blob(img.id)
    config_path = store.blob_path(img.id)
    _upload(session, config_path, img.id, len(config_bytes), lambda _n: None)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MEDIA_DOCKER_MANIFEST,
        "config": {"mediaType": MEDIA_DOCKER_CONFIG, "size": len(config_bytes), "digest": img.id},
        "layers": descs}, indent=3).encode()
    resp = session.request("PUT", f"/v2/{ref.path}/manifests/{ref.tag}",
                           {"Content-Type": MEDIA_DOCKER_MANIFEST}, manifest)
    body = resp.read()
    resp.close()
    if resp.status not in (201, 202):
        raise HostError(f"pushing manifest: {_registry_error(body, f'HTTP {resp.status}')}")
    digest = sha256_bytes(manifest)
    store.register(config_bytes, digests=[Reference(ref.domain, ref.path, None, digest)])
    yield {"status": f"{ref.tag}: digest: {digest} size: {len(manifest)}"}
    yield {"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": digest, "Size": len(manifest)}}


# --- distribution inspect ----------------------------------------------------------------------------------------

def _platform(fields: dict) -> dict:
    """An OCI platform as moby writes one (``architecture`` and ``os`` always, the rest when set)."""
    out = {"architecture": fields.get("architecture") or "", "os": fields.get("os") or ""}
    for key in ("os.version", "os.features", "variant"):
        if fields.get(key):
            out[key] = fields[key]
    return out


def inspect_distribution(name: str, auth: dict | None = None,
                         options: RegistryOptions | None = None) -> dict:
    """``GET /distribution/{name}/json``: the registry's manifest descriptor for ``name`` and the platforms it
    serves (an index's entries, or the one platform of an image's config), as dockerd answers it."""
    if reference.ID_RE.fullmatch(name) or (name.startswith("sha256:") and reference.ID_RE.fullmatch(name[7:])):
        raise EngineError("no manifest found for full image ID")
    ref = reference.parse(name)
    session = Session(ref, auth or {}, options or RegistryOptions(), "pull")
    doc, data, media, digest = session.get_json_blob(
        f"/v2/{ref.path}/manifests/{ref.digest or ref.tag}", MANIFEST_ACCEPT, ref.digest, missing="")
    platforms: list[dict] | None = None
    try:  # the registry's documents are data: a malformed one is a clear error, never a crash
        if media in INDEX_TYPES or "manifests" in doc:
            platforms = [_platform(entry.get("platform") or {}) for entry in doc.get("manifests") or []]
        elif (doc.get("config") or {}).get("digest"):
            config = json.loads(_fetch_small_blob(session, doc["config"]["digest"]))
            if config.get("os") or config.get("architecture"):
                platforms = [_platform(config)]
    except (ValueError, AttributeError, TypeError) as exc:
        raise InvalidParameter(f"invalid manifest for {ref.familiar()}: {exc}") from None
    return {"Descriptor": {"mediaType": media, "digest": ref.digest or digest, "size": len(data)},
            "Platforms": platforms or None}


# --- login -----------------------------------------------------------------------------------------------------

def login(auth: dict, options: RegistryOptions | None = None) -> dict:
    """``POST /auth``: check the credentials against ``serveraddress`` (``GET /v2/``)."""
    server = (auth.get("serveraddress") or "docker.io").strip()
    if "://" in server:
        server = urllib.parse.urlsplit(server).netloc
    server = server.split("/")[0]
    if server in ("index.docker.io", "registry-1.docker.io"):
        server = "docker.io"
    ref = Reference(server, "library/login" if server == "docker.io" else "login", "latest")
    session = Session(ref, auth, options or RegistryOptions(), "pull")
    session.scope = ""
    url = session.base + "/v2/"
    resp = session.ping()
    resp.read()
    resp.close()
    if resp.status == 401:
        challenge = resp.header("WWW-Authenticate")
        try:
            session._authenticate(challenge)
        except Unauthorized as exc:
            raise Unauthorized(f"login attempt to {url} failed: {exc}") from None
        resp = session._send("GET", url, {"Authorization": session._authorization or ""})
        resp.read()
        resp.close()
        if resp.status != 200:
            raise Unauthorized(f'login attempt to {url} failed with status: {resp.status} {http.client.responses.get(resp.status, "")}')
    elif resp.status != 200:
        raise HostError(f"login attempt to {url} failed with status: {resp.status}")
    return {"Status": "Login Succeeded", "IdentityToken": ""}

"""Debian's docker-registry on loopback with a config the test owns (never the packaged one).

A pytest plugin loaded for every area by ``tests/conftest.py``: the ``registry`` fixture is an anonymous plain-HTTP
registry on 127.0.0.1 for one test; ``tls_token_registry`` one over HTTPS with bearer tokens; ``start_registry`` makes
others (users, TLS, a pull-through proxy).
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

CONFIG = """version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {addr}
{tls}{auth}{proxy}"""
TLS = """  tls:
    certificate: {cert}
    key: {key}
"""
TOKEN_AUTH = """auth:
  token:
    realm: {realm}
    service: {service}
    issuer: {issuer}
    rootcertbundle: {bundle}
"""
HTPASSWD_AUTH = """auth:
  htpasswd:
    realm: machines-test
    path: {path}
"""


@dataclass
class Registry:
    host: str
    data: str
    proc: subprocess.Popen

    def blob_path(self, digest: str) -> str:
        hexpart = digest.split(":", 1)[1]
        return os.path.join(self.data, "docker/registry/v2/blobs/sha256", hexpart[:2], hexpart, "data")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry(folder: str, users: dict | None = None, *, tls: tuple[str, str] | None = None,
                   token: dict | None = None, address: str = "127.0.0.1", proxy_for: str | None = None) -> Registry:
    """Start a registry storing into ``folder``.

    ``users`` ({name: password}) turns on htpasswd auth; ``token`` (realm, service, issuer, bundle) turns on
    bearer-token auth; ``tls`` is (certificate, key) files. ``address``: where it listens (on a free port);
    ``proxy_for``: an upstream URL, making this a pull-through cache of it (a registry mirror).
    """
    os.makedirs(folder, exist_ok=True)
    auth = TOKEN_AUTH.format(**token) if token else ""
    if users:
        import bcrypt  # from the test venv (paramiko depends on it): the registry accepts only bcrypt lines

        path = os.path.join(folder, "htpasswd")
        with open(path, "w") as f:
            for name, password in users.items():
                hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode()
                f.write(f"{name}:{hashed}\n")
        auth = HTPASSWD_AUTH.format(path=path)
    data = os.path.join(folder, "data")
    config = os.path.join(folder, "config.yml")
    with open(config, "w") as f:
        f.write(CONFIG.format(data=data, auth=auth, tls=TLS.format(cert=tls[0], key=tls[1]) if tls else "",
                              addr=f"{address}:0", proxy=f"proxy:\n  remoteurl: {proxy_for}\n" if proxy_for else ""))
    log_path = os.path.join(folder, "registry.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", config], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(log_path, "rb") as f:
            m = re.search(rb"listening on ([0-9.]+:\d+)", f.read())
        if m:
            return Registry(m.group(1).decode(), data, proc)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    with open(log_path, "rb") as f:
        raise RuntimeError(f"docker-registry did not start: {f.read().decode(errors='replace')[-2000:]}")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's docker-registry on 127.0.0.1 (anonymous, plain HTTP), stopped afterwards."""
    server = start_registry(str(tmp_path / "registry"))
    yield server
    server.stop()


# --- HTTPS with bearer tokens: a token server owned by the tests, on loopback ------------------------------------

USERS = {"bob": "hunter2"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _self_signed(folder: str, name: str):
    """An EC key and a self-signed CA certificate for 127.0.0.1 (serves both TLS and token signing)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(folder, name + ".crt"), os.path.join(folder, name + ".key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return key, cert, cert_path, key_path


class _TokenServer(http.server.ThreadingHTTPServer):
    """Issues ES256 JWTs the registry trusts (x5c chain to its rootcertbundle) for valid Basic credentials."""

    def __init__(self, key, cert) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.key, self.cert = key, cert
        self.scopes: list = []

    def token(self, user: str, scope: str) -> str:
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(
            self.cert.public_bytes(serialization.Encoding.DER)).decode()]}
        access = []
        if scope:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "test-issuer", "sub": user, "aud": "test-registry", "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = (_b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())).encode()
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return signing_input.decode() + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server: _TokenServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        from urllib.parse import parse_qs, urlsplit
        query = parse_qs(urlsplit(self.path).query)
        scope = (query.get("scope") or [""])[0]
        self.server.scopes.append(scope)
        user = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            name, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            if USERS.get(name) == password:
                user = name
        if user is None:
            body = json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "incorrect username or password"}]})
            self.send_response(401)
        else:
            body = json.dumps({"token": self.server.token(user, scope), "expires_in": 300})
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())


@pytest.fixture
def tls_token_registry(tmp_path):
    """An HTTPS registry with its own CA, bearer tokens from a token server for ``USERS``: (registry, token
    server, a certs.d folder trusting the CA)."""
    folder = str(tmp_path / "tls-registry")
    os.makedirs(folder)
    key, cert, cert_path, key_path = _self_signed(folder, "registry")
    server = _TokenServer(key, cert)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = {"realm": f"http://127.0.0.1:{server.server_address[1]}/token", "service": "test-registry",
             "issuer": "test-issuer", "bundle": cert_path}
    reg = start_registry(folder, tls=(cert_path, key_path), token=token)
    certs = tmp_path / "certs.d"
    (certs / reg.host).mkdir(parents=True)
    (certs / reg.host / "ca.crt").write_bytes(open(cert_path, "rb").read())
    yield reg, server, str(certs)
    reg.stop()
    server.shutdown()
    server.server_close()

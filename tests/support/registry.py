"""Debian's docker-registry on loopback with a config the test owns (never the packaged one).

A pytest plugin loaded for every area by ``tests/conftest.py``: the ``registry`` fixture is an anonymous plain-HTTP
registry on 127.0.0.1 for one test; ``start_registry`` makes others (users, TLS, a pull-through proxy).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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

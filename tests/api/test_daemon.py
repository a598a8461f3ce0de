"""The daemon as shipped: from the zipapp bootstrap builds, under the host's system python, with a pidfile and a
clean exit on SIGTERM; and the committed OpenAPI description matches the routes served."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from machines.bootstrap.bundle import build
from machines.runtime.api import openapi
from tests.support.daemon import REPO, free_subnet

SYSTEM_PYTHON = "/usr/bin/python3"


def test_zipapp_daemon_pidfile_and_sigterm(tmp_path: Path) -> None:
    bundle = build(tmp_path / "cache")
    version = subprocess.run([SYSTEM_PYTHON, str(bundle.path), "version"], capture_output=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith(b"runtime %s (API 1.47" % bundle.version.encode())
    sock, pidfile = tmp_path / "d.sock", tmp_path / "d.pid"
    argv = [SYSTEM_PYTHON, str(bundle.path), "daemon", "--data-root", str(tmp_path / "data"), "--exec-root",
            str(tmp_path / "exec"), "--host", f"unix://{sock}", "--pidfile", str(pidfile),
            "--bridge-name", f"apiz{os.getpid() % 100000}", "--bridge-subnet", free_subnet(197)]
    log = tmp_path / "log"
    process = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while b"listening on" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert pidfile.read_text().strip() == str(process.pid)
        ping = subprocess.run([SYSTEM_PYTHON, str(bundle.path), "dial-stdio", "--host", f"unix://{sock}"],
                              input=b"GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n",
                              capture_output=True, timeout=30)
        assert ping.stdout.startswith(b"HTTP/1.1 200 OK")
        second = subprocess.run(argv, capture_output=True, timeout=30)
        assert second.returncode == 1
        assert second.stderr.decode().startswith(f"runtime: pid file {pidfile} names running process")
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert not pidfile.exists() and not sock.exists()


def test_bad_flags_are_one_line_errors(tmp_path: Path) -> None:
    for extra, expected in ((["--host", "tcp://0.0.0.0:2399"], b"refusing to listen on tcp://0.0.0.0:2399"),
                            (["--host", "http://x"], b"invalid host 'http://x'"),
                            (["--host", "tcp://127.0.0.1:1", "--tlsverify"], b"--tlsverify needs")):
        result = subprocess.run([SYSTEM_PYTHON, "-m", "machines.runtime", "daemon", "--data-root", str(tmp_path / "d"),
                                 "--exec-root", str(tmp_path / "e"), *extra], capture_output=True, timeout=30,
                                cwd=str(REPO))
        assert result.returncode == 1 and result.stderr.startswith(b"runtime: ") and expected in result.stderr
        assert result.stderr.count(b"\n") == 1


def test_openapi_description_is_current() -> None:
    committed = (REPO / "runtime" / "api" / "openapi.json").read_text()
    assert committed == openapi.render(), "run: python -m machines.runtime.api.openapi > runtime/api/openapi.json"
    paths = openapi.describe()["paths"]
    assert {"/containers/create", "/containers/{ref}/attach", "/exec/{exec_id}/start", "/images/{name}/json",
            "/_ping", "/version", "/networks/{ref}/connect", "/volumes/{name}"} <= set(paths)

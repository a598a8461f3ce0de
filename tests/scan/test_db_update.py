"""``machines scan --db-update`` against a mirror on loopback in osv.dev's layout (``<ecosystem>/all.zip``), its
archives built from the real records in tests/scan/osv as osv.dev's exporter builds them. Never the internet."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scan import fixtures
from tests.trust.conftest import run_machines

OSV_DB = Path(__file__).parent / "osv"
FOUND = {"/Alpine/all.zip", "/Go/all.zip", "/PyPI/all.zip", "/npm/all.zip"}  # the Alpine fixture's ecosystems
EXPECTED_IDS = {"ALPINE-CVE-2025-26519", "CVE-2022-27449", "GHSA-35jh-r3h4-6jhm", "GHSA-j8r2-6x86-q33q", "GO-2022-0969", "GO-2022-1059"}


def osv_archives() -> dict[str, bytes]:
    """``/<ecosystem>/all.zip`` -> archive: each record under every base ecosystem it affects, as ``<ID>.json``."""
    members: dict[str, dict[str, bytes]] = {}
    for path in sorted(OSV_DB.glob("*.json")):
        record = json.loads(path.read_bytes())
        for ecosystem in {a["package"]["ecosystem"].split(":")[0] for a in record["affected"]}:
            members.setdefault(ecosystem, {})[record["id"] + ".json"] = path.read_bytes()
    archives = {}
    for ecosystem, files in members.items():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        archives[f"/{ecosystem}/all.zip"] = buffer.getvalue()
    return archives


class Mirror(http.server.ThreadingHTTPServer):
    """Serves ``files``; ``short`` paths promise more bytes than they send; ``status`` paths answer an error."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = osv_archives()
        self.short: set[str] = set()
        self.status: dict[str, int] = {}
        self.requested: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Mirror

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requested.append(self.path)
        if self.path in self.server.status or self.path not in self.server.files:
            self.send_error(self.server.status.get(self.path, 404))
            return
        body = self.server.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if self.path in self.server.short else body)
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = Mirror()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def alpine_archive(tmp_path) -> Path:
    return fixtures.save_archive(tmp_path / "alpine.tar", fixtures.alpine_layers())


def _update(image: Path, db: Path, mirror: Mirror, *more: str):
    return run_machines("scan", str(image), "--db", str(db), "--db-update", "--format", "json", *more,
                        env={"MACHINES_OSV_URL": mirror.url, "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_update_fetches_the_ecosystems_found_and_swaps_the_folder_whole(alpine_archive, tmp_path, mirror):
    home = tmp_path / "home"
    db = home / "osv"
    db.mkdir(parents=True)
    (db / "Alpine.zip").write_bytes(mirror.files["/npm/all.zip"])  # stale: no Alpine record
    (db / "Debian.zip").write_bytes(mirror.files["/Debian/all.zip"])  # another image's ecosystem: kept
    (db / "local").mkdir()
    (db / "local" / "TEST-1.json").write_text('{"id": "TEST-1", "affected": []}')  # the user's own records: kept
    before = db.stat().st_ino

    result = _update(alpine_archive, db, mirror)
    assert result.code == 0, result.err
    assert set(mirror.requested) == FOUND and len(mirror.requested) == len(FOUND)  # only what the image holds
    assert {v["id"] for v in json.loads(result.out)["vulnerabilities"]} == EXPECTED_IDS
    assert sorted(os.listdir(db)) == ["Alpine.zip", "Debian.zip", "Go.zip", "PyPI.zip", "local", "npm.zip"]
    assert (db / "Alpine.zip").read_bytes() == mirror.files["/Alpine/all.zip"]
    assert (db / "Debian.zip").read_bytes() == mirror.files["/Debian/all.zip"]
    assert (db / "local" / "TEST-1.json").exists()
    assert db.stat().st_ino != before  # a new folder took the old one's place
    assert os.listdir(home) == ["osv"]  # no staging folder or old copy left beside it

    again = run_machines("scan", str(alpine_archive), "--db", str(db), "--format", "json")  # offline, same data
    assert {v["id"] for v in json.loads(again.out)["vulnerabilities"]} == EXPECTED_IDS


def _corrupt(archive: bytes) -> bytes:
    """A complete zip whose first member's compressed bytes are damaged (its CRC no longer matches)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        info = source.infolist()[0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    middle = start + info.compress_size // 2
    return archive[:middle] + bytes([archive[middle] ^ 0xFF]) + archive[middle + 1:]


@pytest.mark.parametrize("damage, message", [
    ("truncated", "cannot use OSV data from {url}/npm/all.zip: not a complete zip archive"),
    ("short", "cannot download OSV data from {url}/npm/all.zip: the connection closed {missing} bytes early"),
    ("corrupt", "cannot use OSV data from {url}/npm/all.zip: GHSA-35jh-r3h4-6jhm.json is damaged in the archive"),
    ("html", "cannot use OSV data from {url}/npm/all.zip: not a complete zip archive"),
])
def test_a_damaged_download_leaves_the_previous_data(alpine_archive, tmp_path, mirror, damage, message):
    db = tmp_path / "home" / "osv"
    db.mkdir(parents=True)
    for path in ("/Alpine/all.zip", "/npm/all.zip"):
        (db / (path.split("/")[1] + ".zip")).write_bytes(mirror.files[path])
    before, inode = _snapshot(db), db.stat().st_ino
    body = mirror.files["/npm/all.zip"]
    if damage == "truncated":
        mirror.files["/npm/all.zip"] = body[:len(body) - 40]  # the end of the central directory is missing
    elif damage == "short":
        mirror.short.add("/npm/all.zip")
    elif damage == "corrupt":
        mirror.files["/npm/all.zip"] = _corrupt(body)
    else:
        mirror.files["/npm/all.zip"] = b"<html>captive portal</html>"

    result = _update(alpine_archive, db, mirror)
    assert result.code == 1
    expected = message.format(url=mirror.url, missing=len(body) - len(body) // 2)
    assert result.err.strip().startswith(f"Error: {expected}"), result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert "/Alpine/all.zip" in mirror.requested  # downloaded before npm failed, and thrown away
    assert _snapshot(db) == before and db.stat().st_ino == inode
    assert os.listdir(tmp_path / "home") == ["osv"]


@pytest.mark.parametrize("status, reason", [(404, "Not Found"), (500, "Internal Server Error"), (403, "Forbidden")])
def test_http_errors_are_one_line(alpine_archive, tmp_path, mirror, status, reason):
    mirror.status["/Go/all.zip"] = status
    result = _update(alpine_archive, tmp_path / "osv", mirror)
    assert result.code == 1
    assert result.err.strip() == f"Error: cannot download OSV data from {mirror.url}/Go/all.zip: HTTP {status} {reason}"
    assert sorted(os.listdir(tmp_path)) == ["alpine.tar"]  # no database made, nothing left behind


def test_an_image_without_packages_of_an_ecosystem_downloads_nothing_for_it(tmp_path, mirror):
    rpm = fixtures.save_archive(tmp_path / "alma.tar", fixtures.rpm_layers())
    result = _update(rpm, tmp_path / "osv", mirror)
    assert result.code == 0, result.err
    assert mirror.requested == ["/AlmaLinux/all.zip"]
    assert [v["id"] for v in json.loads(result.out)["vulnerabilities"]] == ["ALSA-2022:1065"]


def test_where_directories_cannot_be_swapped_two_renames_replace_the_folder(tmp_path, mirror, monkeypatch):
    from machines.scan import osvdata

    db = tmp_path / "osv"
    db.mkdir()
    (db / "Go.zip").write_bytes(b"old")
    (db / "kept.json").write_text("{}")
    monkeypatch.setenv("MACHINES_OSV_URL", mirror.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(osvdata, "_exchange", lambda one, other: False)  # as on macOS
    assert osvdata.update(db, {"Go"}) == [db / "Go.zip"]
    assert (db / "Go.zip").read_bytes() == mirror.files["/Go/all.zip"] and (db / "kept.json").exists()
    assert os.listdir(tmp_path) == ["osv"]


def test_a_db_folder_reached_through_a_link_is_replaced_behind_the_link(alpine_archive, tmp_path, mirror):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kept.json").write_text("{}")
    (tmp_path / "osv").symlink_to(tmp_path / "data")
    result = _update(alpine_archive, tmp_path / "osv", mirror)
    assert result.code == 0, result.err
    assert (tmp_path / "osv").is_symlink() and (tmp_path / "osv" / "Alpine.zip").is_file()
    assert (tmp_path / "osv" / "kept.json").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["alpine.tar", "data", "osv"]

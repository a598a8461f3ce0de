"""Names are checked wherever they are used, not only where objects are made: a volume name in a URL cannot walk
out of the volumes folder (``..%2F``), and no name passes with a trailing newline (``re.match`` with ``$`` would)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from machines.errors import InvalidNameError
from machines.store import Store, validate_name
from tests.support.cli import MACHINES
from tests.support.daemon import Daemon

from .test_malformed import call


@pytest.fixture
def decoy(daemon: Daemon) -> Path:
    """A folder beside ``volumes/`` that looks like a volume (it has a ``volume.json``): traversal's target."""
    folder = daemon.root / "data" / "decoy"
    (folder / "_data").mkdir(parents=True, exist_ok=True)
    (folder / "volume.json").write_text(json.dumps({"Name": "decoy", "CreatedAt": "2024-01-01T00:00:00Z"}))
    return folder


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("ref", ["..%2Fdecoy", "..%2F..%2Fdata%2Fdecoy", "%2E%2E%2Fdecoy", "..%252Fdecoy"])
def test_volume_names_in_urls_cannot_traverse(daemon: Daemon, decoy: Path, method: str, ref: str) -> None:
    status, body = call(daemon, method, f"/v1.47/volumes/{ref}?force=1")
    assert status == 404, body
    assert "no such volume" in json.loads(body)["message"]
    assert (decoy / "volume.json").is_file(), "DELETE through a traversing name removed a folder outside volumes/"


def test_volume_cli_refuses_traversing_names(daemon: Daemon, decoy: Path) -> None:
    for ref in ("../decoy", "..%2Fdecoy", "decoy\n"):
        result = daemon.docker("volume", "rm", "-f", ref)
        assert result.returncode == 1, result
        assert decoy.is_dir()


@pytest.mark.parametrize("bad", ["vol\n", "vol\nx", "../x", "a", "x/y", " vol"])
def test_volume_create_refuses_bad_names(daemon: Daemon, bad: str) -> None:
    status, body = call(daemon, "POST", "/v1.47/volumes/create", json.dumps({"Name": bad}).encode())
    assert status == 400, body
    assert "includes invalid characters for a local volume name" in json.loads(body)["message"]


@pytest.mark.parametrize("bad", ["web\n", "web\nx", "/web\n", "a/b", "-web"])
def test_container_names_are_matched_whole(daemon: Daemon, image: str, bad: str) -> None:
    status, body = call(daemon, "POST", "/v1.47/containers/create?name=" + quote(bad),
                        json.dumps({"Image": image, "Cmd": ["true"]}).encode())
    assert status == 400, body
    assert json.loads(body)["message"].startswith("Invalid container name")


@pytest.mark.parametrize("bad", ["net\n", "net\nx", "a/b", "a b", "../x"])
def test_network_names_are_matched_whole(daemon: Daemon, bad: str) -> None:
    status, body = call(daemon, "POST", "/v1.47/networks/create", json.dumps({"Name": bad}).encode())
    assert status == 400, body
    assert "invalid network name" in json.loads(body)["message"]
    assert bad not in daemon.out("network", "ls", "--format", "{{.Name}}").splitlines()


@pytest.mark.parametrize("bad", ["web\n", "web\nx", "../web", ".web", "a/b", ""])
def test_machine_names_are_matched_whole(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_name(bad)
    store = Store(tmp_path / "store")
    with pytest.raises(InvalidNameError):
        store.exists(bad)
    with pytest.raises(InvalidNameError):
        store.delete(bad)


def test_machines_cli_refuses_a_name_with_a_newline(tmp_path: Path) -> None:
    result = subprocess.run([MACHINES, "--storage-path", str(tmp_path / "store"), "create", "--driver", "generic",
                             "--generic-ip-address", "127.0.0.1", "web\n"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0
    assert "invalid machine name" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "machines" / "web\n").exists()

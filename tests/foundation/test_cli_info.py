"""ls, active, status, ip, url and inspect over a store of finished machines."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from machines.store import STATE_READY, Store, new_record

from .conftest import CliResult

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


def _ready(store_path: Path, world: Path, name: str, *, labels: list[str], running: bool, state_delay: int = 0) -> None:
    """A finished ``files`` machine; it is Running when its first resource exists."""
    store = Store(store_path)
    config = {"world": str(world), "resources": 1, "fail_at": "", "ssh_port": 1, "token": None, "state_delay": state_delay}
    record = new_record(name, "files", config, {"labels": labels})
    store.reserve(record)
    record.update(state=STATE_READY, runtime={"version": "0.1.0"})
    store.save(name, record)
    if running:
        (world / f"{name}-0").write_text("resource")


@pytest.fixture
def three(store_path: Path, file_driver: Path) -> None:
    _ready(store_path, file_driver, "web", labels=["tier=front"], running=True)
    _ready(store_path, file_driver, "db", labels=["tier=back"], running=True)
    _ready(store_path, file_driver, "old", labels=[], running=False)


def test_ls_table_filters_and_formats(cli: Callable[..., CliResult], three: None) -> None:
    table = cli("ls").stdout.splitlines()
    assert table[0].split() == ["NAME", "ACTIVE", "DRIVER", "STATE", "URL", "RUNTIME", "ERRORS"]
    assert [line.split()[:5] for line in table[1:]] == [
        ["db", "-", "files", "Running", "tcp://127.0.0.1:2376"],
        ["old", "-", "files", "NotFound", "0.1.0"],
        ["web", "-", "files", "Running", "tcp://127.0.0.1:2376"],
    ]
    assert cli("ls", "-q").stdout == "db\nold\nweb\n"
    assert cli("ls", "-q", "--filter", "state=running").stdout == "db\nweb\n"
    assert cli("ls", "-q", "--filter", "label=tier=front", "--filter", "label=tier=back").stdout == "db\nweb\n"
    assert cli("ls", "-q", "--filter", "name=^w", "--filter", "driver=files").stdout == "web\n"
    assert cli("ls", "-q", "--filter", "driver=generic").stdout == ""
    assert cli("ls", "--format", "{name}:{state}:{runtime}").stdout == "db:Running:0.1.0\nold:NotFound:0.1.0\nweb:Running:0.1.0\n"
    rows = json.loads(cli("ls", "--format", "json").stdout)
    assert [(row["name"], row["labels"]) for row in rows] == [("db", ["tier=back"]), ("old", []), ("web", ["tier=front"])]


def test_active_follows_docker_host(cli: Callable[..., CliResult], three: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert cli("active").exit_status == 4
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    # Several machines share that URL here; ``active`` reports the first running one, ``ls`` marks each.
    assert cli("active").stdout == "db\n"
    assert [line.split()[1] for line in cli("ls").stdout.splitlines()[1:]] == ["*", "-", "*"]


def test_single_machine_queries(cli: Callable[..., CliResult], three: None) -> None:
    assert cli("status", "web").stdout == "Running\n"
    assert cli("status", "old").stdout == "NotFound\n"
    assert cli("ip", "web", "db").stdout == "127.0.0.1\n127.0.0.1\n"
    assert cli("url", "web").stdout == "tcp://127.0.0.1:2376\n"
    assert cli("version", "web").stdout == "0.1.0\n"
    assert cli("version").stdout.startswith("machines version ")


def test_rm_asks_first(cli: Callable[..., CliResult], three: None, file_driver: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    declined = cli("rm", "web", "db")
    assert declined.exit_status == 1 and "About to remove web, db" in declined.stderr
    assert cli("ls", "-q").stdout == "db\nold\nweb\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert cli("rm", "web", "db").exit_status == 0
    assert cli("ls", "-q").stdout == "old\n"
    assert sorted(path.name for path in file_driver.iterdir()) == []


def test_ls_queries_in_parallel_under_one_timeout(cli: Callable[..., CliResult], three: None, store_path: Path,
                                                file_driver: Path) -> None:
    for name in ("slow1", "slow2", "slow3"):
        _ready(store_path, file_driver, name, labels=[], running=True, state_delay=30)
    started = time.monotonic()
    rows = cli("ls", "--timeout", "1", "--format", "{name} {state} {error}").stdout.splitlines()
    assert time.monotonic() - started < 10
    assert rows == ["db Running ", "old NotFound ", "slow1 Timeout no answer within 1s", "slow2 Timeout no answer within 1s",
                    "slow3 Timeout no answer within 1s", "web Running "]

"""The store: names, permissions, atomic writes, the lock under ten concurrent processes, half-made entries."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.errors import InvalidNameError, MachineExistsError, MachineNotFoundError, StoreError
from machines.store import (
    SCHEMA_VERSION,
    STATE_CREATING,
    Store,
    atomic_write,
    generate_ssh_key,
    new_record,
    validate_name,
)

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["a", "web-1", "db.prod", "0x", "A9.b-c"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "a_b", "a/b", "../x", "a b", "é", "x" * 64])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid machine name"):
        validate_name(name)


def test_reserve_writes_private_record_and_key(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    directory = store.reserve(new_record("web", "local", {"a": 1}, {"labels": []}))
    public_line = generate_ssh_key(directory, "machines-web")

    assert _mode(directory) == 0o700
    assert _mode(directory / "config.json") == 0o600
    assert _mode(directory / "id_ed25519") == 0o600
    assert (directory / "id_ed25519").read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public_line.startswith("ssh-ed25519 ") and public_line.endswith(" machines-web")
    record = store.load("web")
    assert record["state"] == STATE_CREATING and record["driver"] == {"a": 1} and record["schema_version"] == SCHEMA_VERSION
    with pytest.raises(MachineExistsError):
        store.reserve(new_record("web", "local", {}, {}))


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "config.json"
    atomic_write(target, b'{"old": true}')

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write(target, b'{"new": true}')
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["config.json"]


def test_half_made_entries_are_skipped_and_reclaimed(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.reserve(new_record("good", "local", {}, {}))
    (store.machines_dir / "crashed").mkdir()
    (store.machines_dir / ".good.removing.123").mkdir()

    assert store.names() == ["good"]
    with pytest.raises(MachineNotFoundError):
        store.load("crashed")
    store.reserve(new_record("crashed", "local", {}, {}))
    assert store.names() == ["crashed", "good"]


def test_save_never_resurrects_a_removed_machine(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.reserve(new_record("gone", "local", {}, {}))
    record = store.load("gone")
    store.delete("gone")
    with pytest.raises(MachineNotFoundError):
        store.save("gone", record)
    assert store.names() == [] and list(store.machines_dir.iterdir()) == []


def test_save_never_resurrects_a_machine_removed_while_its_record_is_written(tmp_path: Path) -> None:
    """The record is written before the store's lock is taken: a removal in between still wins."""
    store = Store(tmp_path / "s")
    store.reserve(new_record("gone", "local", {}, {}))
    record = store.load("gone")
    lock = store.lock

    @contextlib.contextmanager
    def removed_first() -> Iterator[None]:
        store.lock = lock  # type: ignore[method-assign]
        store.delete("gone")
        with lock():
            yield

    store.lock = removed_first  # type: ignore[method-assign]
    with pytest.raises(MachineNotFoundError, match="removed while this command ran"):
        store.save("gone", record)
    assert store.names() == [] and list(store.machines_dir.iterdir()) == []


def test_newer_schema_and_garbage_are_clear_errors(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.reserve(new_record("m", "local", {}, {}))
    config = store.machine_dir("m") / "config.json"
    config.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StoreError, match="schema version 99"):
        store.load("m")
    config.write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        store.load("m")


def _writer(root: str, worker: int, rounds: int) -> None:
    """One of ten processes: creates and removes its own machines and rewrites a shared one."""
    store = Store(root)
    for round_number in range(rounds):
        name = f"w{worker}-{round_number}"
        store.reserve(new_record(name, "local", {"worker": worker}, {}))
        record = store.load("shared")
        record["driver"] = {"writer": worker, "round": round_number, "padding": "x" * 20000}
        store.save("shared", record)
        if round_number % 2:
            store.delete(name)
    try:
        store.reserve(new_record("contested", "local", {"worker": worker}, {}))
    except MachineExistsError:
        pass


def test_ten_concurrent_processes_never_corrupt_the_store(tmp_path: Path) -> None:
    root = tmp_path / "s"
    store = Store(root)
    store.reserve(new_record("shared", "local", {}, {}))
    context = multiprocessing.get_context("fork")
    rounds = 8
    workers = [context.Process(target=_writer, args=(str(root), worker, rounds)) for worker in range(10)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0

    expected = {f"w{worker}-{n}" for worker in range(10) for n in range(rounds) if n % 2 == 0}
    assert set(store.names()) == expected | {"shared", "contested"}
    shared = store.load("shared")
    assert shared["driver"]["padding"] == "x" * 20000 and shared["driver"]["round"] == rounds - 1
    assert store.load("contested")["driver"]["worker"] in range(10)
    leftovers = [path for path in root.rglob("*") if path.name.startswith(".") and path.name != ".lock"]
    assert leftovers == []

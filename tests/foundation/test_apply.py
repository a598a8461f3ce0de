"""``machines apply``: every machine of the file is created at once, each all or nothing, and ``--plan`` prints one
line per create, change and remove (exit 2). Fast: the ``files`` driver, no hosts (tests/local/test_apply.py runs
the same command end to end with local machines)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from machines.drivers import registry
from machines.drivers.base import Ledger
from machines.errors import DriverError
from machines.hostoptions import HostOptions
from machines.store import STATE_READY, Store, new_record

from .conftest import CliResult
from .fakes import FileDriver

NAMES = ["a1", "a2", "a3", "a4"]


class InFlightDriver(FileDriver):
    """Makes its first resource, then waits until every machine of the file has made one, then fails: the error
    tells whether all creates were in flight together (they cannot all pass the barrier one after the other)."""

    name = "inflight"
    barrier = threading.Barrier(len(NAMES))

    def create(self, ledger: Ledger) -> None:
        path = self._path(0)
        path.write_text("resource")
        ledger.record(f"file {path.name}", path.unlink)
        try:
            self.barrier.wait(timeout=120)  # a guard against a deadlock, not a measurement
        except threading.BrokenBarrierError:
            raise DriverError("not every create was in flight at once") from None
        if self.machine_name == "a2":
            raise DriverError("injected fault with all four in flight")
        raise DriverError("made, then stopped before SSH (no hosts in this test)")


@pytest.fixture
def inflight() -> Iterator[None]:
    InFlightDriver.barrier = threading.Barrier(len(NAMES))
    registry.register("inflight", InFlightDriver)
    yield
    registry.unregister("inflight")


def _write(path: Path, machines: dict[str, dict[str, object]], label: str = "project=t") -> Path:
    path.write_text(yaml.safe_dump({"label": label, "machines": machines}))
    return path


def test_apply_creates_every_machine_at_once_and_each_all_or_nothing(
    inflight: None, file_driver: Path, store_path: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    spec = _write(tmp_path / "m.yaml", {name: {"driver": "inflight", "flags": {"world": str(file_driver)}}
                                        for name in NAMES})
    result = cli("apply", "-f", str(spec))
    assert result.exit_status != 0
    errors = sorted(line for line in result.stderr.splitlines() if line.startswith("Error:"))
    assert errors == sorted(["Error: a2: injected fault with all four in flight"] + [
        f"Error: {name}: made, then stopped before SSH (no hosts in this test)" for name in NAMES if name != "a2"])
    assert list(file_driver.iterdir()) == []  # every half-made machine rolled back
    assert Store(store_path).names() == []


def _recorded(store_path: Path, name: str, flags: dict[str, object], labels: tuple[str, ...]) -> None:
    """A ready machine of the ``files`` driver in the store, as a finished create leaves it."""
    record = new_record(name, "files", {**FileDriver.flag_defaults(), **flags},
                        HostOptions(labels=labels).to_record())
    record["state"] = STATE_READY
    Store(store_path).reserve(record)


def test_plan_prints_a_line_per_create_change_and_remove(
    file_driver: Path, store_path: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    world = str(file_driver)
    _recorded(store_path, "keep", {"world": world}, ("project=t",))
    _recorded(store_path, "grow", {"world": world}, ("project=t",))
    _recorded(store_path, "gone", {"world": world}, ("project=t",))
    _recorded(store_path, "other", {"world": world}, ("project=elsewhere",))
    spec = _write(tmp_path / "m.yaml", {
        "keep": {"driver": "files", "flags": {"world": world}},
        "grow": {"driver": "files", "flags": {"world": world, "resources": 5}, "labels": ["tier=web"]},
        "new": {"driver": "files", "flags": {"world": world}},
    })
    planned = cli("apply", "-f", str(spec), "--plan", "--prune")
    assert planned.exit_status == 2, planned.stderr
    assert planned.stdout.splitlines() == [
        "~ grow: change",
        "    engine labels: ['project=t'] -> ['tier=web', 'project=t']",
        "    files resources: 3 -> 5",
        "+ new: create (driver files, engine machines)",
        "- gone: remove (not in the file)",
    ]
    assert sorted(Store(store_path).names()) == ["gone", "grow", "keep", "other"]  # --plan changes nothing
    without_prune = cli("apply", "-f", str(spec), "--plan")
    assert without_prune.exit_status == 2 and "gone" not in without_prune.stdout
    same = _write(tmp_path / "same.yaml", {"keep": {"driver": "files", "flags": {"world": world}}})
    unchanged = cli("apply", "-f", str(same), "--plan")
    assert unchanged.exit_status == 0 and unchanged.stdout == "nothing to change\n"


def test_apply_keeps_the_policies_and_scan_the_file_cannot_name(
    file_driver: Path, store_path: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """Trust and signing policies and --engine-scan come from create/set only: a file without them keeps them."""
    world = str(file_driver)
    options = HostOptions(labels=("project=t",), trust_policy='{"default": [{"type": "reject"}]}',
                          signing_policy='{"default-docker": {}}', scan_fail_on="high", scan_db="/osv")
    record = new_record("kept", "files", {**FileDriver.flag_defaults(), "world": world}, options.to_record())
    record["state"] = STATE_READY
    Store(store_path).reserve(record)
    spec = _write(tmp_path / "m.yaml", {"kept": {"driver": "files", "flags": {"world": world}}})
    unchanged = cli("apply", "-f", str(spec), "--plan")
    assert (unchanged.exit_status, unchanged.stdout) == (0, "nothing to change\n")


def test_plan_shows_engine_and_swarm_and_refuses_to_change_them_in_place(
    file_driver: Path, store_path: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    world = str(file_driver)
    spec = _write(tmp_path / "m.yaml", {
        "boss": {"driver": "files", "flags": {"world": world}, "swarm": {"role": "manager"}},
        "hand": {"driver": "files", "flags": {"world": world}, "engine_name": "docker",
                 "swarm": {"manager": "boss", "role": "worker"}},
        "solo": {"driver": "files", "flags": {"world": world}},
    })
    planned = cli("apply", "-f", str(spec), "--plan")
    assert planned.exit_status == 2, planned.stderr
    assert planned.stdout.splitlines() == [
        "+ boss: create (driver files, engine docker, swarm manager (init))",
        "+ hand: create (driver files, engine docker, swarm worker of boss)",
        "+ solo: create (driver files, engine machines)",
    ]
    _recorded(store_path, "solo", {"world": world}, ("project=t",))
    engine = _write(tmp_path / "engine.yaml", {"solo": {"driver": "files", "flags": {"world": world},
                                                        "engine_name": "docker"}})
    refused = cli("apply", "-f", str(engine), "--plan")
    assert refused.exit_status != 0 and refused.stdout == ""
    assert refused.stderr.strip() == ("Error: solo: the file says engine docker but the machine has machines, which "
                                      "cannot change in place; recreate it ('machines rm solo')")
    role = _write(tmp_path / "role.yaml", {"solo": {"driver": "files", "flags": {"world": world},
                                                    "engine_name": "machines", "swarm": {"role": "manager"}}})
    refused = cli("apply", "-f", str(role), "--plan")
    assert refused.exit_status != 0 and "swarm needs engine_name: docker" in refused.stderr
    role = _write(tmp_path / "role.yaml", {"solo": {"driver": "files", "flags": {"world": world},
                                                    "swarm": {"role": "manager"}}})
    refused = cli("apply", "-f", str(role), "--plan")
    assert "the file says engine docker" in refused.stderr  # the engine a swarm needs, then the role
    unknown = _write(tmp_path / "unknown.yaml", {"x": {"driver": "files", "flags": {"world": world},
                                                       "swarm": {"manager": "nowhere", "role": "worker"}}})
    refused = cli("apply", "-f", str(unknown), "--plan")
    assert refused.exit_status != 0 and "'nowhere' is neither a swarm nor a member of one" in refused.stderr


def test_schema_describes_engine_and_swarm(tmp_path: Path, file_driver: Path, cli: Callable[..., CliResult]) -> None:
    import json

    machine = json.loads(cli("schema").stdout)["properties"]["machines"]["additionalProperties"]
    assert machine["properties"]["engine_name"]["enum"] == ["machines", "docker"]
    assert machine["properties"]["swarm"]["properties"]["role"]["enum"] == ["worker", "manager"]
    joining_no_manager = _write(tmp_path / "w.yaml", {"x": {"driver": "files", "flags": {"world": str(file_driver)},
                                                            "swarm": {"role": "worker"}}})
    refused = cli("apply", "-f", str(joining_no_manager), "--plan")
    assert refused.exit_status != 0 and "machines/x/swarm/role" in refused.stderr

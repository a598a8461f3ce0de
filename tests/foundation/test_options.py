"""Typed host options and the record's split of a driver's flags from what it discovered, old records included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from machines.drivers import registry
from machines.drivers.base import Driver, Flag
from machines.errors import DriverError, StoreError, UsageError
from machines.hostoptions import HostOptions
from machines.machine import Machines

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


class CloudLike(Driver):
    """Declares two flags; anything else it keeps is state it found."""

    name = "cloudlike"
    flags = [Flag("region", "where", default="r1"), Flag("ami", "the image (resolved when not given)")]


@pytest.fixture
def cloudlike() -> object:
    registry.register("cloudlike", CloudLike)
    yield CloudLike
    registry.unregister("cloudlike")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"api": "http"}, "--api must be 'tls' or 'ssh', not 'http'"),
        ({"data_root": "data"}, "--runtime-data-root must be an absolute path, not 'data'"),
        ({"data_root": ""}, "--runtime-data-root must be an absolute path, not ''"),
        ({"tls_san": ("",)}, "host options must be non-empty strings"),
    ],
)
def test_bad_host_options_are_refused_with_the_flag_named(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        HostOptions(**options)  # type: ignore[arg-type]


def test_host_options_round_trip_and_refuse_a_newer_version() -> None:
    options = HostOptions(api="ssh", tls_san=("a.example",), labels=("env=prod",), data_root="/data/runtime")
    stored = json.loads(json.dumps(options.to_record()))
    assert stored["version"] == 2 and HostOptions.from_record(stored) == options
    assert not options.api_over_tls and HostOptions().api_over_tls
    with pytest.raises(StoreError, match="host options version 7"):
        HostOptions.from_record({**stored, "version": 7})


def test_driver_gets_the_host_options_and_keeps_flags_apart_from_discovered_state(tmp_path: Path) -> None:
    driver = CloudLike("m", str(tmp_path), {"region": "r2"}, host_options=HostOptions(api="ssh"))
    assert not driver.api_over_tls()
    driver.config["ami"] = "ami-found"  # what a driver resolves goes to its discovered state...
    driver.config["instance_id"] = "i-1"
    assert driver.flag_values == {"region": "r2", "ami": None}  # ...the user's flags stay as given
    assert driver.discovered == {"ami": "ami-found", "instance_id": "i-1"}
    assert driver.config["ami"] == "ami-found" and driver.config["region"] == "r2"


def test_a_version_1_record_is_migrated_on_read(tmp_path: Path, cloudlike: object) -> None:
    machines = Machines(tmp_path / "store")
    folder = machines.store.machine_dir("old")
    folder.mkdir(parents=True)
    old = {
        "schema_version": 1, "name": "old", "driver_name": "cloudlike", "state": "ready", "ledger": [],
        "driver": {"region": "r3", "ami": "ami-1", "instance_id": "i-9"},
        "host_options": {"labels": ["a=b"], "tls_san": []},
        "runtime": {"api": "ssh", "version": "0.1.0"}, "ssh_host_key": None,
    }
    (folder / "config.json").write_text(json.dumps(old))
    machine = machines.get("old")
    assert machine.host_options == HostOptions(api="ssh", labels=("a=b",))  # the oldest kept the mode in runtime
    assert machine.driver.flag_values == {"region": "r3", "ami": "ami-1"}
    assert machine.driver.discovered == {"instance_id": "i-9"}
    machine.save()
    saved = json.loads((folder / "config.json").read_text())
    assert saved["schema_version"] == 2
    assert saved["driver"] == {"region": "r3", "ami": "ami-1"} and saved["driver_state"] == {"instance_id": "i-9"}


def test_create_stores_typed_options_and_discovered_state_apart(tmp_path: Path, cloudlike: object) -> None:
    machines = Machines(tmp_path / "store")
    options = HostOptions(api="ssh", labels=("team=a",))
    with pytest.raises(DriverError, match="does not support create"):  # kept (--keep-on-error) to read its record
        machines.create("m", "cloudlike", {"region": "r4"}, host_options=options, keep_on_error=True)
    record = machines.get("m").record
    assert record["driver"] == {"region": "r4", "ami": None}
    assert HostOptions.from_record(record["host_options"]) == options

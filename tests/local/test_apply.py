"""Issue 14: ``machines apply -f`` creates the machines of a file, changes only what differs on a second run, and
``--prune`` removes what the file no longer lists; ``--plan`` says what would change (exit 2) without changing it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from machines.drivers.nshost import Bridge
from machines.machine import Machines
from tests.support.cli import machines
from tests.support.hosts import unique_name


def _file(path: Path, bridge: Bridge, names: list[str], labels: dict[str, list[str]]) -> Path:
    document = {
        "label": "project=apply-test",
        "machines": {
            name: {"driver": "local", "flags": {"bridge": bridge.name, "subnet": bridge.subnet},
                   "labels": labels.get(name, []), "engine": {"opts": ["mtu=1400"]}}
            for name in names
        },
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_apply_creates_changes_and_prunes(tmp_path: Path, test_bridge: Bridge) -> None:
    store = tmp_path / "store"
    tag = unique_name("ap")
    a, b, c = f"{tag}a", f"{tag}b", f"{tag}c"
    spec = tmp_path / "machines.yaml"
    try:
        _file(spec, test_bridge, [a, b, c], {})
        planned = machines(store, "apply", "-f", str(spec), "--plan", check=False)
        assert planned.returncode == 2, planned.stderr
        assert planned.stdout.splitlines() == [f"+ {name}: create (driver local, engine machines)" for name in (a, b, c)]
        assert not (store / "machines").exists() or not any((store / "machines").iterdir())

        machines(store, "apply", "-f", str(spec))
        library = Machines(store)
        assert sorted(machine.name for machine in library.list()) == [a, b, c]
        assert library.get(b).host_options.labels == ("project=apply-test",)
        assert all(library.get(name).is_ready for name in (a, b, c))

        again = machines(store, "apply", "-f", str(spec), "--plan")  # exit 0: nothing would change
        assert again.stdout == "nothing to change\n"
        assert machines(store, "apply", "-f", str(spec)).stdout == "nothing to change\n"

        _file(spec, test_bridge, [a, b, c], {b: ["tier=web"]})
        planned = machines(store, "apply", "-f", str(spec), "--plan", check=False)
        assert planned.returncode == 2
        assert planned.stdout.splitlines() == [
            f"~ {b}: change", "    engine labels: ['project=apply-test'] -> ['tier=web', 'project=apply-test']"]
        machines(store, "apply", "-f", str(spec))
        assert Machines(store).get(b).host_options.labels == ("tier=web", "project=apply-test")

        _file(spec, test_bridge, [a, b], {b: ["tier=web"]})
        assert machines(store, "apply", "-f", str(spec), "--plan").stdout == "nothing to change\n"  # no --prune
        planned = machines(store, "apply", "-f", str(spec), "--plan", "--prune", check=False)
        assert planned.returncode == 2 and planned.stdout.splitlines() == [f"- {c}: remove (not in the file)"]
        machines(store, "apply", "-f", str(spec), "--prune")
        assert sorted(machine.name for machine in Machines(store).list()) == [a, b]
    finally:
        left = [machine.name for machine in Machines(store).list()]
        if left:
            machines(store, "rm", "-f", "-y", *left)


def test_bad_files_are_one_line_errors_and_the_schema_describes_the_format(tmp_path: Path) -> None:
    store = tmp_path / "store"
    bad = tmp_path / "bad.yaml"
    for text, message in (
        ("machines:\n  web:\n    driver: local\n    colour: blue\n", "machines/web: Additional properties"),
        ("machines:\n  web:\n    driver: nosuch\n", "machines/web/driver: 'nosuch' is not one of"),
        ("machines:\n  web:\n    driver: local\n    flags: {bridgee: x}\n", "machines/web/flags: Additional properties"),
        ("machines:\n  web:\n    driver: local\n    engine: {opts: [frobnicate=1]}\n", "frobnicate"),
        ("machines: [\n", "not YAML"),
    ):
        bad.write_text(text)
        result = machines(store, "apply", "-f", str(bad), check=False)
        assert result.returncode == 2 and message in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.stderr
    schema = json.loads(machines(store, "schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"label": "a=b", "machines": {"web": {"driver": "local", "flags": {"bridge": "mt0"}, "api": "ssh",
                                                 "engine": {"registry_mirrors": ["https://mirror.example"]}}}}
    jsonschema.validate(good, schema)

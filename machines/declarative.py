"""``machines apply -f machines.yaml``: machines described in a file, made to match it.

The file (YAML, or JSON which is YAML too) names each machine with its driver, the driver's create flags (by key,
``bridge`` for ``--local-bridge``) and its host options (``api``, ``tls_san``, ``labels``, ``data_root``, ``engine``).
Its top-level ``label`` (``KEY=VALUE``) is added to every machine's labels, so that ``--prune`` can tell the
machines the file made from the others. ``plan`` compares the file with the store; ``apply`` carries the plan out,
the CLI runs the steps in parallel: a missing machine is created (all or nothing, as ``create``), a differing one is changed
through ``Machine.set``, and with ``prune`` a machine carrying the file's label that the file no longer lists is
removed. ``schema()`` is the file's JSON Schema, for editors.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

from drivers import registry
from machines import hostoptions
from machines.errors import UsageError
from machines.hostoptions import API_MODES, EngineOptions, HostOptions
from machines.machine import Machines
from machines.progress import Progress
from machines.store import validate_name

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_JSON_TYPES = {str: "string", int: "integer", bool: "boolean", list: "array"}


def _strings(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "minLength": 1}, "description": description}


def schema() -> dict[str, Any]:
    """The JSON Schema of the file, with each installed driver's flags (``machines schema``)."""
    drivers = registry.available()
    engine = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "env": _strings("KEY=VALUE variables of the engine's environment (--engine-env)"),
            "insecure_registries": _strings("HOST[:PORT] or CIDR reached over plain HTTP (--engine-insecure-registry)"),
            "registry_mirrors": _strings("mirror URLs tried before Docker Hub (--engine-registry-mirror)"),
            "opts": _strings("dockerd daemon.json options as KEY=VALUE (--engine-opt)"),
        },
    }
    machine: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["driver"],
        "properties": {
            "driver": {"enum": sorted(drivers), "description": "the driver that makes the host"},
            "flags": {"type": "object", "description": "the driver's create flags by key (bridge for --local-bridge)"},
            "api": {"enum": list(API_MODES), "default": "tls"},
            "tls_san": _strings("extra names or IPs of the server certificate (--tls-san)"),
            "labels": _strings("KEY=VALUE labels of the engine (--engine-label)"),
            "data_root": {"type": "string", "pattern": "^/", "description": "--runtime-data-root"},
            "engine": engine,
        },
        "allOf": [
            {
                "if": {"properties": {"driver": {"const": name}}},
                "then": {"properties": {"flags": {
                    "additionalProperties": False,
                    "properties": {
                        flag.key(): ({"type": "array", "items": {"type": "string"}} if flag.type is list
                                     else {"type": _JSON_TYPES[flag.type]}) | {"description": flag.help}
                        for flag in driver_class.flags
                    },
                }}},
            }
            for name, driver_class in sorted(drivers.items())
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "machines apply file",
        "type": "object",
        "additionalProperties": False,
        "required": ["machines"],
        "properties": {
            "label": {"type": "string", "pattern": r"^[^=\s]+=", "description": "added to every machine; --prune "
                      "removes machines with it that the file does not list"},
            "machines": {"type": "object", "propertyNames": {"pattern": NAME_PATTERN},
                         "additionalProperties": machine},
        },
    }


@dataclasses.dataclass(frozen=True)
class Wanted:
    """One machine as the file describes it."""

    name: str
    driver: str
    flags: dict[str, Any]
    options: HostOptions


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing ``apply`` does: ``create``, ``change`` or ``remove`` a machine, and why."""

    action: str
    name: str
    details: list[str]
    wanted: Wanted | None = None
    driver_flags: dict[str, Any] = dataclasses.field(default_factory=dict)

    def lines(self) -> list[str]:
        mark = {"create": "+", "change": "~", "remove": "-"}[self.action]
        return [f"{mark} {self.name}: {self.action}" + (f" ({self.details[0]})" if self.action != "change" else ""),
                *(f"    {line}" for line in (self.details if self.action == "change" else self.details[1:]))]


def load(path: str | Path) -> tuple[str | None, list[Wanted]]:
    """The file's label and machines, checked against the schema and the same rules as ``create``."""
    import jsonschema
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise UsageError(f"-f {path}: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UsageError(f"-f {path}: not YAML: {str(error).splitlines()[0]}") from None
    problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(data))
    if problem is not None:
        where = "/".join(str(part) for part in problem.absolute_path) or "the top level"
        raise UsageError(f"-f {path}: {where}: {problem.message}")
    label = data.get("label")
    wanted = []
    for name, spec in (data.get("machines") or {}).items():
        validate_name(name)
        engine = spec.get("engine") or {}
        labels = (*(spec.get("labels") or ()), *((label,) if label and label not in (spec.get("labels") or ()) else ()))
        options = HostOptions(
            api=spec.get("api", "tls"), tls_san=spec.get("tls_san") or (), labels=labels,
            data_root=spec.get("data_root"),
            engine=EngineOptions(**{key: tuple(engine.get(key) or ()) for key in
                                    ("env", "insecure_registries", "registry_mirrors", "opts")}),
        )
        wanted.append(Wanted(name, registry.get(spec["driver"]).name, dict(spec.get("flags") or {}), options))
    return label, wanted


def plan(machines: Machines, label: str | None, wanted: list[Wanted], *, prune: bool = False) -> list[Step]:
    """What ``apply`` would do, in the file's order, removals last."""
    existing = {machine.name: machine for machine in machines.list()}
    steps = []
    for item in wanted:
        machine = existing.get(item.name)
        if machine is None:
            steps.append(Step("create", item.name, [f"driver {item.driver}"], item))
            continue
        if registry.get(machine.driver_name).name != item.driver:
            raise UsageError(f"{item.name}: the file says driver {item.driver} but the machine has "
                             f"{machine.driver_name}; remove it first ('machines rm {item.name}')")
        flags = {key: value for key, value in item.flags.items() if machine.driver.flag_values.get(key) != value}
        details = hostoptions.plan(machine.host_options, item.options)
        details += [f"{item.driver} {key}: {machine.driver.flag_values.get(key)} -> {value}"
                    for key, value in flags.items()]
        if details:
            steps.append(Step("change", item.name, details, item, flags))
    if prune:
        if not label:
            raise UsageError("--prune needs the file's label (label: KEY=VALUE): it tells its machines from others")
        listed = {item.name for item in wanted}
        steps += [Step("remove", name, ["not in the file"]) for name, machine in existing.items()
                  if name not in listed and label in machine.host_options.labels]
    return steps


def apply_step(machines: Machines, step: Step, progress: Progress, cancelled: threading.Event | None = None) -> None:
    """Carry one step out (callers run the steps of a plan at once: ``run_concurrently``)."""
    if step.action == "remove":
        machines.remove(step.name, progress=progress)
        return
    assert step.wanted is not None
    if step.action == "create":
        machines.create(step.name, step.wanted.driver, step.wanted.flags, host_options=step.wanted.options,
                        progress=progress, cancelled=cancelled).close()
        return
    machine = machines.get(step.name)
    try:
        machine.set(step.wanted.options, step.driver_flags, progress)
    finally:
        machine.close()

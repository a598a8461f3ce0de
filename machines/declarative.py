"""``machines apply -f machines.yaml``: machines described in a file, made to match it.

The file (YAML, or JSON which is YAML too) names each machine with its driver, the driver's create flags (by key,
``bridge`` for ``--local-bridge``) and its host options (``api``, ``tls_san``, ``labels``, ``data_root``, ``engine``,
``engine_name``: ``machines`` or ``docker`` as ``create --engine``), and ``swarm``: ``{role: manager}`` alone starts
a swarm on the machine, ``{manager: NAME, role: worker|manager}`` joins NAME's swarm as ``create --swarm-manager``
does (a manager the file creates is created first). Neither the engine nor the swarm role can change in place.
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

from machines import hostoptions, swarm
from machines.drivers import registry
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
            "engine_name": {"enum": list(hostoptions.ENGINE_NAMES), "description": "--engine: our runtime "
                            "(machines, the default) or Docker Engine (docker, the default with swarm)"},
            "swarm": {
                "type": "object", "additionalProperties": False, "required": ["role"],
                "description": "{role: manager} starts a swarm here; with manager: NAME, joins NAME's swarm "
                               "(--swarm-manager, --swarm-role)",
                "properties": {"manager": {"type": "string", "pattern": NAME_PATTERN},
                               "role": {"enum": list(swarm.ROLES)}},
                "if": {"not": {"required": ["manager"]}}, "then": {"properties": {"role": {"const": "manager"}}},
            },
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
    swarm_manager: str | None = None  # the swarm to join (None: none, or this machine starts one as its manager)
    swarm_role: str | None = None  # None: in no swarm

    def describe(self) -> str:
        """``driver local, engine docker, swarm worker of m1``: the plan's line of a create."""
        swarm_part = (f", swarm {self.swarm_role}" + (f" of {self.swarm_manager}" if self.swarm_manager else " (init)")
                      if self.swarm_role else "")
        return f"driver {self.driver}, engine {self.options.engine_name}{swarm_part}"


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
        joining = spec.get("swarm") or {}
        labels = (*(spec.get("labels") or ()), *((label,) if label and label not in (spec.get("labels") or ()) else ()))
        options = HostOptions(
            api=spec.get("api", "tls"), tls_san=spec.get("tls_san") or (), labels=labels,
            data_root=spec.get("data_root"),
            engine=EngineOptions(**{key: tuple(engine.get(key) or ()) for key in
                                    ("env", "insecure_registries", "registry_mirrors", "opts")}),
            engine_name=spec.get("engine_name") or ("docker" if joining else "machines"),
        )
        if joining and options.engine_name != swarm.ENGINE:
            raise UsageError(f"-f {path}: machines/{name}: swarm needs engine_name: docker")
        wanted.append(Wanted(name, registry.get(spec["driver"]).name, dict(spec.get("flags") or {}), options,
                             joining.get("manager"), joining.get("role")))
    return label, wanted


def plan(machines: Machines, label: str | None, wanted: list[Wanted], *, prune: bool = False) -> list[Step]:
    """What ``apply`` would do, in the file's order, removals last."""
    existing = {machine.name: machine for machine in machines.list()}
    steps = []
    for item in wanted:
        machine = existing.get(item.name)
        if machine is None:
            steps.append(Step("create", item.name, [item.describe()], item))
            continue
        role = (swarm.membership(machine) or {}).get("role")
        for what, recorded, written in (("driver", registry.get(machine.driver_name).name, item.driver),
                                        ("engine", machine.host_options.engine_name, item.options.engine_name),
                                        ("swarm role", role or "none", item.swarm_role or "none")):
            if recorded != written:
                raise UsageError(f"{item.name}: the file says {what} {written} but the machine has {recorded}, "
                                 f"which cannot change in place; recreate it ('machines rm {item.name}')")
        flags = {key: value for key, value in item.flags.items() if machine.driver.flag_values.get(key) != value}
        recorded = machine.host_options  # what the file cannot say (policies, scan) stays as create/set made it
        item = dataclasses.replace(item, options=dataclasses.replace(
            item.options, trust_policy=recorded.trust_policy, signing_policy=recorded.signing_policy,
            scan_fail_on=recorded.scan_fail_on, scan_db=recorded.scan_db))
        details = hostoptions.plan(recorded, item.options)
        details += [f"{item.driver} {key}: {machine.driver.flag_values.get(key)} -> {value}"
                    for key, value in flags.items()]
        if details:
            steps.append(Step("change", item.name, details, item, flags))
    creating = {step.name for step in steps if step.action == "create"}
    for step in steps:
        if step.wanted and step.wanted.swarm_manager and step.wanted.swarm_manager not in creating:
            swarm.managers(machines, step.wanted.swarm_manager)  # before anything is made, as create checks it
    if prune:
        if not label:
            raise UsageError("--prune needs the file's label (label: KEY=VALUE): it tells its machines from others")
        listed = {item.name for item in wanted}
        steps += [Step("remove", name, ["not in the file"]) for name, machine in existing.items()
                  if name not in listed and label in machine.host_options.labels]
    return steps


def waves(steps: list[Step]) -> list[list[Step]]:
    """The steps in the order they can run, each wave at once: machines joining a swarm whose manager this plan
    creates come after it."""
    created = {step.name for step in steps if step.action == "create"}
    later = [step for step in steps if step.action == "create" and step.wanted is not None
             and step.wanted.swarm_manager in created]
    first = [step for step in steps if step not in later]
    return [wave for wave in (first, later) if wave]


def apply_step(machines: Machines, step: Step, progress: Progress, cancelled: threading.Event | None = None) -> None:
    """Carry one step out (callers run the steps of a plan at once: ``run_concurrently``)."""
    if step.action == "remove":
        machines.remove(step.name, progress=progress)
        return
    assert step.wanted is not None
    if step.action == "create":
        wanted = step.wanted
        machines.create(step.name, wanted.driver, wanted.flags, host_options=wanted.options,
                        progress=progress, cancelled=cancelled).close()
        if wanted.swarm_manager and wanted.swarm_role:
            swarm.join_new(machines, step.name, wanted.swarm_manager, wanted.swarm_role, progress=progress)
        elif wanted.swarm_role:
            swarm.init_new(machines, step.name, progress=progress)
        return
    machine = machines.get(step.name)
    try:
        machine.set(step.wanted.options, step.driver_flags, progress)
    finally:
        machine.close()

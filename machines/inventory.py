"""What ``ls`` and ``active`` know about machines: states queried in parallel under one timeout, filters, formats.

A driver that hangs (an unreachable cloud, a host that does not answer) only makes its own row say ``Timeout``;
the queries run in daemon threads so a stuck one never keeps the process alive.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from machines.drivers.base import State
from machines.errors import MachinesError, UsageError
from machines.machine import Machine

DEFAULT_LS_TIMEOUT = 10.0
FILTER_KEYS = ("driver", "state", "name", "label", "swarm")

T = TypeVar("T")


@dataclasses.dataclass
class MachineInfo:
    """One row of ``ls``; the field names are what ``--format`` templates use (``{name} {state}``)."""

    name: str
    active: bool
    driver: str
    state: str
    url: str
    runtime: str
    engine: str
    swarm: str  # the swarm the machine is a member of (``machines swarm``), or ""
    error: str
    labels: list[str]
    response_time: float

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def call_all(calls: dict[str, Callable[[], T]], timeout: float) -> dict[str, T | BaseException | None]:
    """Run every call in its own daemon thread; after ``timeout`` seconds, unfinished ones give ``None``."""
    results: dict[str, T | BaseException | None] = {key: None for key in calls}
    done = threading.Semaphore(0)

    def work(key: str, call: Callable[[], T]) -> None:
        try:
            results[key] = call()
        except BaseException as error:  # noqa: BLE001 - reported in the row
            results[key] = error
        done.release()

    for key, call in calls.items():
        threading.Thread(target=work, args=(key, call), daemon=True).start()
    deadline = time.monotonic() + timeout
    for _ in calls:
        if not done.acquire(timeout=max(0.0, deadline - time.monotonic())):
            break
    return dict(results)


def describe(machine: Machine, docker_host: str | None) -> MachineInfo:
    """Query one machine's state and build its row (``url`` only for a running machine, as docker-machine)."""
    started = time.monotonic()
    error = ""
    url = ""
    try:
        state = str(machine.state())
    except MachinesError as failure:
        state, error = str(State.ERROR), str(failure)
    if state == State.RUNNING:
        try:
            url = machine.url()
        except MachinesError as failure:
            error = str(failure)
    if machine.record.get("state") != "ready":
        error = error or f"create {machine.record.get('state')}: {machine.record.get('error', 'not finished')}"
    return _row(
        machine,
        active=bool(docker_host) and state == State.RUNNING and docker_host in machine.docker_hosts(),
        state=state,
        url=url,
        error=error,
        response_time=round(time.monotonic() - started, 3),
    )


def _row(machine: Machine, *, state: str, error: str, response_time: float, active: bool = False,
         url: str = "") -> MachineInfo:
    return MachineInfo(
        name=machine.name,
        active=active,
        driver=machine.driver_name,
        state=state,
        url=url,
        runtime=_engine_version(machine),
        engine=machine.host_options.engine_name,
        swarm=str((machine.record.get("swarm") or {}).get("cluster") or ""),
        error=error,
        labels=list(machine.host_options.labels),
        response_time=response_time,
    )


def _engine_version(machine: Machine) -> str:
    """The RUNTIME column: our runtime's version, or ``docker-VERSION`` for a machine on Docker Engine."""
    version = str(machine.runtime.get("version") or "Unknown")
    engine = machine.runtime.get("engine")
    return f"{engine}-{version}" if engine else version


def describe_all(machines: Iterable[Machine], timeout: float = DEFAULT_LS_TIMEOUT) -> list[MachineInfo]:
    """Rows for all machines, queried in parallel; a machine slower than ``timeout`` shows state Timeout."""
    docker_host = os.environ.get("DOCKER_HOST")
    by_name = {machine.name: machine for machine in machines}
    results = call_all({name: functools.partial(describe, machine, docker_host) for name, machine in by_name.items()}, timeout)
    rows = []
    for name, machine in by_name.items():
        result = results[name]
        if isinstance(result, MachineInfo):
            rows.append(result)
            continue
        if result is None:
            state, error = str(State.TIMEOUT), f"no answer within {timeout:g}s"
        else:
            state, error = str(State.ERROR), str(result) or type(result).__name__
        rows.append(_row(machine, state=state, error=error, response_time=timeout))
    return rows


def parse_filters(specs: list[str]) -> dict[str, list[str]]:
    """``["driver=local", "state=Running"]`` -> by key; values of one key are alternatives (OR), keys combine (AND)."""
    filters: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or key not in FILTER_KEYS:
            raise UsageError(f"bad filter {spec!r}: use {', '.join(k + '=...' for k in FILTER_KEYS)}")
        if key == "name":
            try:
                re.compile(value)
            except re.error as error:
                raise UsageError(f"bad name filter {value!r}: {error}") from None
        filters.setdefault(key, []).append(value)
    return filters


def matches(row: MachineInfo, filters: dict[str, list[str]]) -> bool:
    tests: dict[str, Callable[[str], bool]] = {
        "driver": lambda value: row.driver.lower() == value.lower(),
        "state": lambda value: row.state.lower() == value.lower(),
        "name": lambda value: re.search(value, row.name) is not None,
        "label": lambda value: value in row.labels,
        "swarm": lambda value: row.swarm == value,
    }
    return all(any(tests[key](value) for value in values) for key, values in filters.items())


def select(machines: Iterable[Machine], specs: list[str], timeout: float = DEFAULT_LS_TIMEOUT) -> list[str]:
    """Names of the machines that ``--filter`` specs select, as ``ls --filter`` shows them (fleet commands)."""
    wanted = parse_filters(specs)
    return [row.name for row in describe_all(machines, timeout) if matches(row, wanted)]


def render(rows: list[MachineInfo], template: str) -> list[str]:
    """``json`` (one JSON array) or a Python format template per row, e.g. ``{name}\\t{state}``."""
    if template == "json":
        return [json.dumps([row.as_dict() for row in rows], indent=2)]
    return [format_template(template, row.as_dict()) for row in rows]


def format_template(template: str, values: dict[str, Any]) -> str:
    """Fill a ``str.format`` template; an unknown field is a usage error naming the known ones."""
    try:
        return template.format(**values)
    except (KeyError, AttributeError, IndexError) as error:
        raise UsageError(f"bad --format field {error}; fields: {', '.join(sorted(values))}") from None
    except ValueError as error:
        raise UsageError(f"bad --format template {template!r}: {error}") from None


def active_machine(machines: Iterable[Machine], timeout: float = DEFAULT_LS_TIMEOUT) -> MachineInfo | None:
    """The running machine whose URL or forwarded socket equals ``$DOCKER_HOST``."""
    docker_host = os.environ.get("DOCKER_HOST")
    if not docker_host:
        return None
    candidates = [machine for machine in machines if docker_host in machine.docker_hosts()]
    return next((row for row in describe_all(candidates, timeout) if row.active), None)

"""Finding drivers: the entry-point group ``machines.drivers``, plus drivers registered in-process.

A driver whose module fails to import (a missing optional dependency, a bug) must not break the others: its error
is kept and reported only when that driver is asked for.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
from typing import TYPE_CHECKING

from machines.drivers.base import Driver
from machines.errors import DriverError, DriverNotFoundError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "machines.drivers"

_registered: dict[str, type[Driver]] = {}
_lock = threading.Lock()


def register(name: str, driver_class: type[Driver]) -> None:
    """Make a driver available without packaging it (for embedding applications and tests)."""
    with _lock:
        _registered[name] = driver_class


def unregister(name: str) -> None:
    with _lock:
        _registered.pop(name, None)


@functools.lru_cache(maxsize=4)
def _declared(search_path: tuple[str, ...]) -> dict[str, EntryPoint]:
    """The group's entry points by name, found once per ``sys.path``: each scan reads every installed package's
    metadata (about 10 ms), which ``ls`` would otherwise pay once per machine."""
    import importlib.metadata  # ~50 ms: paid only by commands that look a driver up

    declared: dict[str, EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        declared.setdefault(entry.name, entry)  # the first on the path wins, as the scan by name did
    return declared


def _entry_points() -> dict[str, EntryPoint]:
    return _declared(tuple(sys.path))


def names() -> list[str]:
    """Every driver name that is declared, whether or not its module imports."""
    declared = set(_entry_points())
    with _lock:
        declared.update(_registered)
    return sorted(declared)


def get(name: str) -> type[Driver]:
    """The driver class for ``name``; ``DriverNotFoundError`` names the installed ones."""
    with _lock:
        if name in _registered:
            return _registered[name]
    entry = _entry_points().get(name)
    if entry is not None:
        try:
            driver_class = entry.load()
        except Exception as error:  # noqa: BLE001 - any import failure means this one driver is unusable
            raise DriverError(f"driver {name!r} is installed but cannot be loaded: {error}") from error
        if not (isinstance(driver_class, type) and issubclass(driver_class, Driver)):
            raise DriverError(f"driver {name!r} ({entry.value}) is not a drivers.base.Driver subclass")
        return driver_class
    raise DriverNotFoundError(f"unknown driver {name!r}; installed drivers: {', '.join(available()) or 'none'}")


def available() -> dict[str, type[Driver]]:
    """Every driver that loads, by name; broken ones are left out (and logged at debug level)."""
    drivers: dict[str, type[Driver]] = {}
    for name in names():
        try:
            drivers[name] = get(name)
        except DriverError as error:
            log.debug("%s", error)
    return drivers

"""The container engine: containers, exec, logs, volumes, events and durable state (no HTTP here).

The exports load on first use, so the launcher (``launcher.py``) can import the shim without the engine's heap.
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing's flag without importing typing, which the launcher does not need
if TYPE_CHECKING:
    from machines.runtime.engine.engine import Engine
    from machines.runtime.engine.sessions import Session
    from machines.runtime.engine.volumes import VolumeStore

__all__ = ["Engine", "Session", "VolumeStore"]


_MODULES = {"Engine": "engine", "Session": "sessions", "VolumeStore": "volumes"}


def __getattr__(name: str) -> object:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)

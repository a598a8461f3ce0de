"""The container engine: containers, exec, logs, volumes, events and durable state (no HTTP here).

The exports load on first use, so the launcher (``launcher.py``) can import the shim without the engine's heap.
"""
from __future__ import annotations

__all__ = ["Engine", "Session", "VolumeStore"]


def __getattr__(name: str) -> object:
    if name == "Engine":
        from machines.runtime.engine.engine import Engine
        return Engine
    if name == "Session":
        from machines.runtime.engine.sessions import Session
        return Session
    if name == "VolumeStore":
        from machines.runtime.engine.volumes import VolumeStore
        return VolumeStore
    raise AttributeError(f"module 'machines.runtime.engine' has no attribute {name!r}")

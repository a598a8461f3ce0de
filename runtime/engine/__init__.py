"""The container engine: containers, exec, logs, volumes, events and durable state (no HTTP here)."""
from machines.runtime.engine.engine import Engine
from machines.runtime.engine.sessions import Session
from machines.runtime.engine.volumes import VolumeStore

__all__ = ["Engine", "Session", "VolumeStore"]

"""The container engine: containers, exec, logs, volumes, events and durable state (no HTTP here)."""
from runtime.engine.engine import Engine
from runtime.engine.sessions import Session
from runtime.engine.volumes import VolumeStore

__all__ = ["Engine", "Session", "VolumeStore"]

"""The Docker Engine API over the engine: ``build_app(engine)`` gives the request handler for ``server.Server``."""

from __future__ import annotations

from machines.runtime.api import containers, images, networks, system, unsupported, volumes  # noqa: F401 - register routes
from machines.runtime.api.routing import ROUTER
from machines.runtime.api.server import App
from machines.runtime.engine import Engine


def build_app(engine: Engine, debug: bool = False) -> App:
    return App(ROUTER, engine, debug=debug)

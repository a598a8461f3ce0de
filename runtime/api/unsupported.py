"""Answers for what we do not serve: swarm (503, moby's wording) and plugins (404), never a 500."""

from __future__ import annotations

from typing import Any

from machines.runtime.api.routing import route
from machines.runtime.api.server import Request, Response, error_response
from machines.runtime.engine import Engine

_SWARM = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this "
          "node to swarm and try again.")
_METHODS = ("GET", "POST", "DELETE", "PUT", "HEAD")


def _swarm(engine: Engine, request: Request, rest: str = "") -> Response:
    return error_response(503, _SWARM)


def _plugin(engine: Engine, request: Request, name: str) -> Response:
    return error_response(404, f"plugin {name} not found")


def _plugins(engine: Engine, request: Request, rest: str = "") -> Response:
    return error_response(404, "plugins are not supported by this daemon")


for _method in _METHODS:
    for _area in ("swarm", "nodes", "services", "tasks", "secrets", "configs"):
        route(_method, f"/{_area}", "Swarm: not served (503)")(_swarm)
        route(_method, f"/{_area}/{{rest:.*}}", "Swarm: not served (503)")(_swarm)
route("GET", "/plugins/{name:.*}/json", "Plugins: none installed (404)")(_plugin)
for _method in _METHODS:
    route(_method, "/plugins", "Plugins: not served (404)")(_plugins)
    route(_method, "/plugins/{rest:.*}", "Plugins: not served (404)")(_plugins)


# Docker endpoints this daemon knows but does not implement: a clear 501 instead of "page not found".
_NOT_IMPLEMENTED = (
    ("GET", "/images/search", "searching registries is not supported by this daemon"),
    ("POST", "/session", "BuildKit sessions are not supported: build with DOCKER_BUILDKIT=0"),
    ("POST", "/grpc", "BuildKit is not supported: build with DOCKER_BUILDKIT=0"),
)


def _not_implemented(message: str) -> Any:
    def answer(engine: Engine, request: Request, **_: str) -> Response:
        return error_response(501, message)

    return answer


for _method, _pattern, _message in _NOT_IMPLEMENTED:
    route(_method, _pattern, "Not implemented (501)")(_not_implemented(_message))

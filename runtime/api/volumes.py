"""Volume routes, over the engine's volume store (Docker's Volume shape)."""

from __future__ import annotations

from machines.runtime.api import validate
from machines.runtime.api.routing import filters_arg, route
from machines.runtime.api.server import Request, Response, json_response
from machines.runtime.engine import Engine


@route("GET", "/volumes", "List volumes")
def list_volumes(engine: Engine, request: Request) -> Response:
    return json_response(engine.volumes.list(filters_arg(request)))


@route("POST", "/volumes/create", "Create a volume (201)")
def create(engine: Engine, request: Request) -> Response:
    body = request.json_object(required=False)
    validate.check(body, validate.VOLUME_CONFIG, "VolumeConfig", strict=False)
    return json_response(engine.volumes.create(body), 201)


@route("POST", "/volumes/prune", "Remove unused volumes")
def prune(engine: Engine, request: Request) -> Response:
    filters = filters_arg(request)
    if not request.version_at_least("1.42"):
        filters.add("all", "true")  # before API 1.42 prune took named volumes too, as moby keeps it for old clients
    return json_response(engine.volumes.prune(filters))


@route("GET", "/volumes/{name}", "Inspect a volume")
def inspect(engine: Engine, request: Request, name: str) -> Response:
    return json_response(engine.volumes.inspect(name))


@route("DELETE", "/volumes/{name}", "Remove a volume")
def remove(engine: Engine, request: Request, name: str) -> None:
    engine.volumes.remove(name, force=request.flag("force"))

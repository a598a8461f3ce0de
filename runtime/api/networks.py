"""Network routes: the network manager speaks Docker's shapes; connect/disconnect go through the engine."""

from __future__ import annotations

from machines.runtime.api import validate
from machines.runtime.api.routing import filters_arg, route
from machines.runtime.api.server import Request, Response, json_response
from machines.runtime.engine import Engine
from machines.runtime.errors import InvalidParameter


@route("GET", "/networks", "List networks")
def list_networks(engine: Engine, request: Request) -> Response:
    return json_response(engine.networks.list(filters_arg(request)))


@route("POST", "/networks/create", "Create a network (201)")
def create(engine: Engine, request: Request) -> Response:
    body = request.json_object()
    if not isinstance(body.get("Name"), str) or not body["Name"]:
        raise InvalidParameter("network name must be a non-empty string")
    return json_response(engine.networks.create(body), 201)


@route("POST", "/networks/prune", "Remove unused networks")
def prune(engine: Engine, request: Request) -> Response:
    return json_response(engine.networks.prune(filters_arg(request)))


@route("GET", "/networks/{ref}", "Inspect a network")
def inspect(engine: Engine, request: Request, ref: str) -> Response:
    return json_response(engine.networks.inspect(ref))


@route("DELETE", "/networks/{ref}", "Remove a network")
def remove(engine: Engine, request: Request, ref: str) -> None:
    engine.networks.remove(ref)


def _container(body: dict) -> str:
    container = body.get("Container")
    if not isinstance(container, str) or not container:
        raise InvalidParameter("Container must be a container id or name")
    return container


@route("POST", "/networks/{ref}/connect", "Connect a container")
def connect(engine: Engine, request: Request, ref: str) -> Response:
    body = request.json_object()
    config = body.get("EndpointConfig") or {}
    if not isinstance(config, dict):
        raise InvalidParameter("invalid JSON: EndpointConfig must be an object")
    validate.endpoint_config(config, "EndpointConfig")
    engine.network_connect(ref, _container(body), config)
    return Response(200)


@route("POST", "/networks/{ref}/disconnect", "Disconnect a container")
def disconnect(engine: Engine, request: Request, ref: str) -> Response:
    body = request.json_object()
    engine.network_disconnect(ref, _container(body), force=bool(body.get("Force")))
    return Response(200)

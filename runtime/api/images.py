"""Image routes: list, inspect, history, tag, remove, prune, load, save, import; pull/push/build when available."""

from __future__ import annotations

from typing import Callable, List

from runtime.api import validate
from runtime.api.routing import filters_arg, route
from runtime.api.server import Request, Response, Stream, json_response, json_stream
from runtime.engine import Engine
from runtime.errors import InvalidParameter, NotSupported
from runtime.images.dockerfile import apply_changes
from runtime.images.registry import decode_auth


def in_use(engine: Engine) -> Callable[[str], bool]:
    """Whether a container (running or not) uses an image id: such images need force to be removed."""
    used = {item.get("ImageID") for item in engine.list_containers(all=True)}
    return lambda image_id: image_id in used


@route("GET", "/images/json", "List images (all, filters)")
def list_images(engine: Engine, request: Request) -> Response:
    return json_response(engine.images.list(all=request.flag("all"), filters=filters_arg(request)))


@route("POST", "/images/prune", "Remove unused images (dangling only unless filters say otherwise)")
def prune(engine: Engine, request: Request) -> Response:
    return json_response(engine.images.prune(filters_arg(request), in_use(engine)))


@route("POST", "/images/load", "Load a docker save or OCI archive")
def load(engine: Engine, request: Request) -> Stream:
    names = engine.image_service.load(request.body)
    messages = [{"stream": ("Loaded image ID: %s\n" if name.startswith("sha256:") else "Loaded image: %s\n")
                 % name} for name in names]
    return json_stream(messages)


def _save(engine: Engine, refs: List[str]) -> Stream:
    if not refs:
        raise InvalidParameter("no image names given")
    for ref in refs:
        engine.images.resolve(ref)  # 404 before the tar starts
    return Stream(engine.image_service.save(refs), "application/x-tar")


@route("GET", "/images/get", "docker save of several images")
def save_many(engine: Engine, request: Request) -> Stream:
    return _save(engine, request.args("names"))


def _repo_tag(repo: str, tag: str) -> str:
    return "%s:%s" % (repo, tag) if repo and tag else repo


@route("POST", "/images/create", "Import a rootfs tar (fromSrc=-) or pull (fromImage)")
def create(engine: Engine, request: Request) -> Stream:
    source = request.arg("fromSrc")
    if source == "-":
        image_id = engine.images.import_tar(request.body, repo_tag=_repo_tag(request.arg("repo"), request.arg("tag"))
                                            or None, changes=request.args("changes") or None,
                                            message=request.arg("message"))
        return json_stream([{"status": image_id}])
    if source:
        raise NotSupported("importing from a URL is not supported; send the tar in the request body")
    if not request.arg("fromImage"):
        raise InvalidParameter("fromImage or fromSrc is required")
    # Primed: a missing image or refused credentials is an HTTP error before the stream starts, as with moby.
    return json_stream(engine.image_service.pull(request.arg("fromImage"), request.arg("tag") or None,
                                                 auth=request.headers.get("X-Registry-Auth") or None,
                                                 platform=request.arg("platform") or None), prime=2)


@route("POST", "/build", "Classic builder (DOCKER_BUILDKIT=0): tar context in, JSON stream out")
def build(engine: Engine, request: Request) -> Stream:
    return json_stream(engine.image_service.build(engine, request.body, request.query,
                                                  request.headers.get("X-Registry-Config") or None))


@route("POST", "/build/prune", "Build cache prune: the classic builder's cache is images, pruned with them")
def build_prune(engine: Engine, request: Request) -> Response:
    return json_response({"CachesDeleted": [], "SpaceReclaimed": 0})


@route("GET", "/images/{name:.*}/json", "Inspect an image")
def inspect(engine: Engine, request: Request, name: str) -> Response:
    return json_response(engine.images.inspect(name))


@route("GET", "/images/{name:.*}/history", "Image history")
def history(engine: Engine, request: Request, name: str) -> Response:
    return json_response(engine.images.history(name))


@route("GET", "/images/{name:.*}/get", "docker save of one image")
def save_one(engine: Engine, request: Request, name: str) -> Stream:
    return _save(engine, [name])


@route("POST", "/images/{name:.*}/tag", "Tag an image (201)")
def tag(engine: Engine, request: Request, name: str) -> Response:
    repo = request.arg("repo")
    if not repo:
        raise InvalidParameter("repository name must have at least one component")
    engine.images.tag(name, repo, request.arg("tag") or "latest")
    return Response(201)


@route("POST", "/images/{name:.*}/push", "Push to a registry (JSON progress stream)")
def push(engine: Engine, request: Request, name: str) -> Stream:
    return json_stream(engine.image_service.push(name, request.arg("tag") or None,
                                                 auth=request.headers.get("X-Registry-Auth") or None), prime=1)


@route("GET", "/distribution/{name:.*}/json", "Manifest descriptor and platforms, asked of the registry")
def distribution(engine: Engine, request: Request, name: str) -> Response:
    try:  # as moby: credentials that do not decode are ignored, not an error
        auth = decode_auth(request.headers.get("X-Registry-Auth"))
    except InvalidParameter:
        auth = {}
    return json_response(engine.image_service.inspect_distribution(name, auth))


@route("DELETE", "/images/{name:.*}", "Remove an image (force, noprune)")
def remove(engine: Engine, request: Request, name: str) -> Response:
    return json_response(engine.images.remove(name, force=request.flag("force"), noprune=request.flag("noprune"),
                                              in_use=in_use(engine)))




_COMMITTED = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "ExposedPorts", "Labels", "Volumes", "StopSignal",
              "Healthcheck", "OnBuild", "Shell")


@route("POST", "/commit", "docker commit: a new image from a container's filesystem changes (201)")
def commit(engine: Engine, request: Request) -> Response:
    ref = request.arg("container")
    if not ref:
        raise InvalidParameter("container is required")
    container = engine.inspect_container(ref)
    body = request.json_object(required=False)
    validate.check(body, validate.CONTAINER_CONFIG, "ContainerConfig", strict=True)
    config = {key: value for key, value in (container.get("Config") or {}).items()
              if key in _COMMITTED and value is not None}
    config.update({key: value for key, value in body.items() if key in _COMMITTED and value is not None})
    config = apply_changes(config, request.args("changes"))
    state = container.get("State") or {}
    pause = request.flag("pause", True) and state.get("Running") and not state.get("Paused")
    if pause:
        engine.pause(ref)  # a consistent filesystem while the layer is written, as moby does by default
    try:
        image = engine.images.commit(engine.container_upper_dir(ref), engine.images.resolve(container["Image"]),
                                     config, _repo_tag(request.arg("repo"), request.arg("tag")) or None,
                                     comment=request.arg("comment"), author=request.arg("author"))
    finally:
        if pause:
            engine.unpause(ref)
    return json_response({"Id": image.id}, 201)

"""Image routes: list, inspect, history, tag, remove, prune, load, save, import; pull/push/build when available."""

from __future__ import annotations

from typing import IO, Callable, cast

from machines.runtime.api import validate
from machines.runtime.api.routing import filters_arg, route
from machines.runtime.api.server import Request, Response, Stream, json_response, json_stream
from machines.runtime.engine import Engine
from machines.runtime.errors import EngineError, InvalidParameter, NotSupported
from machines.runtime.images.dockerfile import apply_changes


def in_use(engine: Engine) -> Callable[[str], bool]:
    """Whether a container (running or not) uses an image id: such images need force to be removed."""
    used = {item.get("ImageID") for item in engine.list_containers(all=True)}
    return lambda image_id: image_id in used


def _body(request: Request) -> IO[bytes]:
    """The request body as the image code reads it: a binary stream it only calls ``read(n)`` on."""
    return cast(IO[bytes], request.body)


@route("GET", "/images/json", "List images (all, filters)")
def list_images(engine: Engine, request: Request) -> Response:
    images = engine.images.list(all=request.flag("all"), filters=filters_arg(request))
    if not request.version_at_least("1.43"):  # before 1.43 dockerd wrote placeholders (and null) for no names
        for summary in images:
            if not summary["RepoTags"] and not summary["RepoDigests"]:
                summary.update(RepoTags=["<none>:<none>"], RepoDigests=["<none>@<none>"])
            elif not summary["RepoTags"]:
                summary["RepoTags"] = None
    return json_response(images)


@route("POST", "/images/prune", "Remove unused images (dangling only unless filters say otherwise)")
def prune(engine: Engine, request: Request) -> Response:
    return json_response(engine.images.prune(filters_arg(request), in_use(engine)))


@route("POST", "/images/load", "Load a docker save or OCI archive")
def load(engine: Engine, request: Request) -> Stream:
    """As dockerd: a refused archive is the stream's error message (status 200), not an HTTP error."""
    try:
        names = engine.image_service.load(_body(request))
    except EngineError as exc:
        while request.body.read(1 << 20):  # the client is still sending: let it finish, then read our answer
            pass
        return json_stream([{"errorDetail": {"message": str(exc)}, "error": str(exc)}])
    messages = [{"stream": ("Loaded image ID: %s\n" if name.startswith("sha256:") else "Loaded image: %s\n")
                 % name} for name in names]
    return json_stream(messages)


def _save(engine: Engine, refs: list[str]) -> Stream:
    if not refs:
        raise InvalidParameter("no image names given")
    for ref in refs:
        engine.images.resolve(ref)  # 404 before the tar starts
    return Stream(engine.image_service.save(refs), "application/x-tar")


@route("GET", "/images/get", "docker save of several images")
def save_many(engine: Engine, request: Request) -> Stream:
    return _save(engine, request.args("names"))


def _repo_tag(repo: str, tag: str) -> str:
    return f"{repo}:{tag}" if repo and tag else repo


@route("POST", "/images/create", "Import a rootfs tar (fromSrc=-) or pull (fromImage)")
def create(engine: Engine, request: Request) -> Stream:
    source = request.arg("fromSrc")
    if source == "-":
        image_id = engine.images.import_tar(_body(request), repo_tag=_repo_tag(request.arg("repo"), request.arg("tag"))
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
    return json_stream(engine.image_service.build(engine, _body(request), request.query,
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
    from machines.runtime.images.registry import decode_auth  # the registry client loads with its first use

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
_HEALTH_TIMES = ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries")


def _merge(user: dict, container: dict) -> dict:
    """dockerd's commit ``merge``: what the request (and its changes) leave unset comes from the container's
    config; Env, ExposedPorts, Labels and Volumes are unions with the request's entries winning."""
    out = dict(user)
    for key in ("User", "WorkingDir", "StopSignal"):
        out[key] = out.get(key) or container.get(key) or ""
    for key in ("ExposedPorts", "Volumes", "Labels"):
        merged = dict(container.get(key) or {})
        merged.update(out.get(key) or {})
        out[key] = merged or None
    env = list(out.get("Env") or [])
    keys = {item.split("=", 1)[0] for item in env}
    out["Env"] = env + [item for item in container.get("Env") or [] if item.split("=", 1)[0] not in keys]
    if not out.get("Entrypoint"):
        if not out.get("Cmd"):
            out["Cmd"] = container.get("Cmd")
        if out.get("Entrypoint") is None:
            out["Entrypoint"] = container.get("Entrypoint")
    if container.get("Healthcheck"):
        check = dict(out.get("Healthcheck") or {})
        for key in ("Test",) + _HEALTH_TIMES:
            if not check.get(key) and container["Healthcheck"].get(key):
                check[key] = container["Healthcheck"][key]
        out["Healthcheck"] = check
    return out


@route("POST", "/commit", "docker commit: a new image from a container's filesystem changes (201)")
def commit(engine: Engine, request: Request) -> Response:
    """As dockerd: the request's config (the container's when the body is empty or null) with the changes applied,
    merged with the container's config; a running container is paused while its layer is written unless
    ``pause=false``, with pause, commit and unpause events."""
    ref = request.arg("container")
    if not ref:
        raise InvalidParameter("container is required")
    container = engine.inspect_container(ref)
    body = request.json(required=False)
    if body is not None and not isinstance(body, dict):
        raise InvalidParameter(f"invalid JSON: expected an object, got {type(body).__name__}")
    current = {key: value for key, value in (container.get("Config") or {}).items()
               if key in _COMMITTED and value is not None}
    if body is not None:
        validate.check(body, validate.CONTAINER_CONFIG, "ContainerConfig", strict=True)
    user = current if body is None else {key: value for key, value in body.items() if key in _COMMITTED}
    config = _merge(apply_changes(user, request.args("changes")), current)
    config = {key: config.get(key) or None for key in _COMMITTED}  # every key: unset ones are unset in the image
    state = container.get("State") or {}
    pause = request.flag("pause", True) and state.get("Running") and not state.get("Paused")
    if pause:
        engine.pause(ref)  # a consistent filesystem while the layer is written, as moby does by default
    try:
        image = engine.images.commit(engine.container_upper_dir(ref), engine.images.resolve(container["Image"]),
                                     config, _repo_tag(request.arg("repo"), request.arg("tag")) or None,
                                     comment=request.arg("comment"), author=request.arg("author"),
                                     created_by=" ".join((container.get("Config") or {}).get("Cmd") or []))
        engine.log_event(ref, "commit", comment=request.arg("comment"), imageID=image.id,
                         imageRef=_repo_tag(request.arg("repo"), request.arg("tag")))
    finally:
        if pause:
            engine.unpause(ref)
    return json_response({"Id": image.id}, 201)

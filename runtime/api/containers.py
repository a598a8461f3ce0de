"""Container routes: lifecycle, attach, logs, wait, stats, archive. The engine speaks Docker's JSON shapes."""

from __future__ import annotations

import base64
import json
import os
import posixpath
import stat
import time
from collections.abc import Iterator
from typing import Any

from machines.runtime.api import streams, validate
from machines.runtime.api.routing import filters_arg, route, timestamp_arg
from machines.runtime.api.server import HIJACKED, Request, Response, Stream, json_lines, json_response
from machines.runtime.engine import Engine
from machines.runtime.errors import EngineError, HostError, InvalidParameter
from machines.runtime.images.builder import ImageView
from machines.runtime.linux import safepath

WAIT_CONDITIONS = ("not-running", "next-exit", "removed")


@route("GET", "/containers/json", "List containers (all, limit, size, filters)")
def list_containers(engine: Engine, request: Request) -> Response:
    return json_response(engine.list_containers(all=request.flag("all"), filters=filters_arg(request),
                                                 limit=request.integer("limit", -1), size=request.flag("size")))


@route("POST", "/containers/create", "Create a container (201); 404 for a missing image starts the CLI's pull")
def create(engine: Engine, request: Request) -> Response:
    body = request.json_object()
    validate.container_config(body)
    result = engine.create_container(body, name=request.arg("name") or None,
                                     platform=request.arg("platform") or None)
    return json_response(result, 201)


@route("POST", "/containers/prune", "Remove stopped containers")
def prune(engine: Engine, request: Request) -> Response:
    return json_response(engine.prune_containers(filters=filters_arg(request)))


@route("GET", "/containers/{ref}/json", "Inspect a container")
def inspect(engine: Engine, request: Request, ref: str) -> Response:
    return json_response(engine.inspect_container(ref, size=request.flag("size")))


@route("POST", "/containers/{ref}/start", "Start (204, or 304 when running)")
def start(engine: Engine, request: Request, ref: str) -> None:
    engine.start(ref)


@route("POST", "/containers/{ref}/stop", "Stop: StopSignal, then SIGKILL after t seconds")
def stop(engine: Engine, request: Request, ref: str) -> None:
    engine.stop(ref, timeout=request.integer("t"), signal=request.arg("signal") or None)


@route("POST", "/containers/{ref}/restart", "Restart")
def restart(engine: Engine, request: Request, ref: str) -> None:
    engine.restart(ref, timeout=request.integer("t"))


@route("POST", "/containers/{ref}/kill", "Send a signal (default SIGKILL); 409 when not running")
def kill(engine: Engine, request: Request, ref: str) -> None:
    engine.kill(ref, signal=request.arg("signal") or "SIGKILL")


@route("POST", "/containers/{ref}/pause", "Freeze all processes")
def pause(engine: Engine, request: Request, ref: str) -> None:
    engine.pause(ref)


@route("POST", "/containers/{ref}/unpause", "Thaw all processes")
def unpause(engine: Engine, request: Request, ref: str) -> None:
    engine.unpause(ref)


@route("POST", "/containers/{ref}/rename", "Rename")
def rename(engine: Engine, request: Request, ref: str) -> None:
    name = request.arg("name")
    if not name:
        raise InvalidParameter("Neither old nor new names may be empty")
    engine.rename(ref, name)


@route("POST", "/containers/{ref}/update", "Change resource limits and the restart policy, live")
def update(engine: Engine, request: Request, ref: str) -> Response:
    return json_response(engine.update_container(ref, request.json_object()))


def _size(request: Request) -> tuple:
    try:
        return int(request.arg("h")), int(request.arg("w"))
    except ValueError:
        raise InvalidParameter("invalid terminal size: h and w must be integers") from None


@route("POST", "/containers/{ref}/resize", "Resize the TTY")
def resize(engine: Engine, request: Request, ref: str) -> Response:
    height, width = _size(request)
    engine.resize(ref, height, width)
    return Response(200, b"", "text/plain")


@route("DELETE", "/containers/{ref:.*}", "Remove (force, v), or with link the link /parent/alias")
def remove(engine: Engine, request: Request, ref: str) -> None:
    if request.flag("link"):
        engine.remove_link(ref)
    else:
        engine.remove(ref, force=request.flag("force"), volumes=request.flag("v"))


@route("POST", "/containers/{ref}/wait", "Wait for a condition; headers go out at once, the body at the end")
def wait(engine: Engine, request: Request, ref: str) -> Stream:
    condition = request.arg("condition") or "not-running"
    if condition not in WAIT_CONDITIONS:
        raise InvalidParameter(f"invalid condition: {condition!r}")
    block = engine.waiter(ref, condition=condition)  # 404, and the exit waited for, fixed before the headers

    def body() -> Iterator[bytes]:
        try:
            result = block()
        except EngineError as exc:
            result = {"StatusCode": -1, "Error": {"Message": str(exc)}}
        yield (json.dumps(result) + "\n").encode()

    return Stream(body(), "application/json", long_poll=True)


@route("POST", "/containers/{ref}/attach", "Attach: 101 hijack, multiplexed unless TTY")
def attach(engine: Engine, request: Request, ref: str) -> Any:
    tty = bool((engine.inspect_container(ref).get("Config") or {}).get("Tty"))
    with_stdin = request.flag("stdin")
    try:
        keys = streams.detach_keys(request.arg("detachKeys"))
    except ValueError:
        raise InvalidParameter(f"Invalid detach keys ({request.arg('detachKeys')}) provided") from None
    session = engine.attach(ref, stdin=with_stdin, stdout=request.flag("stdout"), stderr=request.flag("stderr"),
                            logs=request.flag("logs"), stream=request.flag("stream"))
    channel = request.conn.hijack(request, streams.stream_content_type(tty, request.version_at_least("1.42")))
    if with_stdin:
        streams.feed_stdin(channel, session, keys)
    streams.pump_output(channel, session)
    return HIJACKED


@route("GET", "/containers/{ref}/logs", "Logs: multiplexed frames, or raw with a TTY; follow streams live")
def logs(engine: Engine, request: Request, ref: str) -> Stream:
    stdout, stderr = request.flag("stdout"), request.flag("stderr")
    if not (stdout or stderr):
        raise InvalidParameter("Bad parameters: you must choose at least one stream")
    tty = bool((engine.inspect_container(ref).get("Config") or {}).get("Tty"))
    tail = request.arg("tail") or "all"
    if tail != "all" and not tail.lstrip("-").isdigit():
        raise InvalidParameter(f"invalid value for tail: {tail!r}")
    items = engine.logs(ref, follow=request.flag("follow"), stdout=stdout, stderr=stderr,
                        since=timestamp_arg(request, "since"), until=timestamp_arg(request, "until"),
                        timestamps=request.flag("timestamps"), tail=tail)

    def body() -> Iterator[bytes]:
        for stream, data in items:
            yield data if tty else streams.frame(stream, data)

    return Stream(body(), streams.stream_content_type(tty, request.version_at_least("1.42")),
                  long_poll=request.flag("follow"))


@route("GET", "/containers/{ref}/top", "Processes in the container")
def top(engine: Engine, request: Request, ref: str) -> Response:
    return json_response(engine.top(ref, request.arg("ps_args") or None))


def _with_precpu(sample: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """CPU% is computed by clients from the delta to ``precpu_stats``: fill it from the previous sample."""
    if previous:
        sample = dict(sample)
        sample["precpu_stats"] = previous.get("cpu_stats", {})
        sample["preread"] = previous.get("read", sample.get("preread"))
    return sample


@route("GET", "/containers/{ref}/stats", "Resource usage: a sample per second, or one (stream=0)")
def stats(engine: Engine, request: Request, ref: str) -> Any:
    first = engine.stats(ref)
    if not request.flag("stream", True):
        if request.flag("one-shot"):
            return json_response(first)
        time.sleep(1.0)  # like moby: two samples a second apart so CPU% is meaningful
        return json_response(_with_precpu(engine.stats(ref), first))

    def samples() -> Iterator[dict[str, Any]]:
        previous: dict[str, Any] = {}
        sample = first
        while True:
            yield _with_precpu(sample, previous)
            time.sleep(1.0)
            previous = sample
            try:
                sample = engine.stats(ref)
            except EngineError:
                return  # container gone: end of stream

    return Stream(json_lines(samples()), "application/json")


def _stat_header(stat: dict[str, Any]) -> dict[str, str]:
    return {"X-Docker-Container-Path-Stat": base64.b64encode(json.dumps(stat).encode()).decode()}


def _path(request: Request) -> str:
    path = request.arg("path")
    if not path:
        raise InvalidParameter("bad parameter: path cannot be empty")
    return path


@route("HEAD", "/containers/{ref}/archive", "Stat a path in the container (X-Docker-Container-Path-Stat)")
def archive_head(engine: Engine, request: Request, ref: str) -> Response:
    return Response(200, b"", "application/json", _stat_header(engine.archive_head(ref, _path(request))))


@route("GET", "/containers/{ref}/archive", "A tar of a path in the container (docker cp out)")
def archive_get(engine: Engine, request: Request, ref: str) -> Stream:
    chunks, stat = engine.archive_get(ref, _path(request))
    return Stream(chunks, "application/x-tar", headers=_stat_header(stat))


@route("PUT", "/containers/{ref}/archive", "Extract a tar into the container (docker cp in)")
def archive_put(engine: Engine, request: Request, ref: str) -> Response:
    engine.archive_put(ref, _path(request), request.body,
                       no_overwrite_dir_non_dir=request.flag("noOverwriteDirNonDir"))
    return Response(200)


@route("GET", "/containers/{ref}/export", "The container's filesystem as a tar")
def export(engine: Engine, request: Request, ref: str) -> Stream:
    engine.inspect_container(ref)
    return Stream(engine.export(ref), "application/x-tar")


# What the runtime itself puts in a container (moby keeps these in its "init layer"): not the user's changes.
_RUNTIME_PATHS = ("/dev", "/proc", "/sys", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/.dockerenv",
                  "/etc/mtab")


def _changes(upper: str, lowers: list[str], mounts: list[str]) -> list[dict[str, Any]]:
    """moby's kinds: 0 modified (exists below), 1 added, 2 deleted (an overlay whiteout, a 0/0 char device).

    Mount points and runtime files are left out, and so is a modified folder with nothing left under it (it only
    changed because of them)."""
    skipped = set(_RUNTIME_PATHS) | set(mounts)
    below = ImageView(lowers)  # what the image holds, with overlay's rules and no link followed on the host
    found: list[dict[str, Any]] = []
    top = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder, _, name, info in safepath.walk(top):  # fds, not paths: a running container may swap links in
            relative = posixpath.join(folder, name)
            target = "/" + relative
            if any(target == item or target.startswith(item + "/") for item in skipped):
                continue
            if stat.S_ISCHR(info.st_mode) and info.st_rdev == 0:
                kind = 2
            elif below.lstat(relative) is not None:
                kind = 0
            else:
                kind = 1
            found.append({"Path": target, "Kind": kind, "Folder": stat.S_ISDIR(info.st_mode)})
    finally:
        os.close(top)
    paths = [item["Path"] for item in found]
    kept = [item for item in found if not (item["Kind"] == 0 and item["Folder"]
                                           and not any(other.startswith(item["Path"] + "/") for other in paths))]
    return sorted(({"Path": item["Path"], "Kind": item["Kind"]} for item in kept), key=lambda item: item["Path"])


@route("GET", "/containers/{ref}/changes", "Filesystem changes against the image (docker diff)")
def changes(engine: Engine, request: Request, ref: str) -> Response:
    container = engine.inspect_container(ref)
    lowers = engine.images.resolve(container["Image"]).layer_dirs()
    mounts = [mount.get("Destination", "") for mount in container.get("Mounts") or []]
    return json_response(_changes(engine.container_upper_dir(ref), lowers, mounts))


@route("POST", "/containers/{ref}/exec", "Create an exec instance (201)")
def exec_create(engine: Engine, request: Request, ref: str) -> Response:
    body = request.json_object()
    validate.check(body, validate.EXEC_CONFIG, "ExecConfig", strict=False)
    if not body.get("Cmd"):
        raise InvalidParameter("No exec command specified")
    validate.console_size(body.get("ConsoleSize"))
    for key in [key for key in body if key.lower() == "detachkeys" and key != "DetachKeys"]:
        body["DetachKeys"] = body.pop(key)  # docker-py sends "detachKeys"; Go's JSON matches either case
    if body.get("DetachKeys"):
        try:
            streams.detach_keys(str(body["DetachKeys"]))
        except ValueError:  # dockerd's exec words it so, and answers 500
            raise HostError(f"Invalid escape keys ({body['DetachKeys']}) provided") from None
    return json_response({"Id": engine.exec_create(ref, body)}, 201)


@route("POST", "/exec/{exec_id}/start", "Start an exec: 101 hijack unless Detach")
def exec_start(engine: Engine, request: Request, exec_id: str) -> Any:
    body = request.json_object(required=False)
    validate.check(body, validate.EXEC_START, "ExecStartConfig", strict=False)
    info = engine.exec_inspect(exec_id)  # 404 before any hijack
    if body.get("Detach"):
        engine.exec_start(exec_id, detach=True, tty=bool(body.get("Tty")))
        return Response(200, b"", "application/json")
    tty = bool(body.get("Tty", (info.get("ProcessConfig") or {}).get("tty")))
    size = validate.console_size(body.get("ConsoleSize"))
    channel = request.conn.hijack(request, streams.stream_content_type(tty, request.version_at_least("1.42")))
    try:
        session = engine.exec_start(exec_id, detach=False, tty=tty)  # after the 101 is flushed: no lost output
        if size:
            engine.exec_resize(exec_id, *size)
    except EngineError as exc:
        streams.write_error(channel, tty, str(exc))
        return HIJACKED
    if info.get("OpenStdin"):
        streams.feed_stdin(channel, session, streams.detach_keys(info.get("DetachKeys") or ""))
    streams.pump_output(channel, session)
    return HIJACKED


@route("POST", "/exec/{exec_id}/resize", "Resize an exec's TTY")
def exec_resize(engine: Engine, request: Request, exec_id: str) -> Response:
    height, width = _size(request)
    engine.exec_resize(exec_id, height, width)
    return Response(200, b"", "text/plain")


@route("GET", "/exec/{exec_id}/json", "Inspect an exec (ExitCode)")
def exec_inspect(engine: Engine, request: Request, exec_id: str) -> Response:
    return json_response(engine.exec_inspect(exec_id))



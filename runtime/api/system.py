"""System routes: ping, version, info, events, disk usage, login."""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
from typing import Any

from machines.runtime import API_VERSION, MIN_API_VERSION, VERSION, timefmt
from machines.runtime.api.routing import filters_arg, route, timestamp_arg
from machines.runtime.api.server import Request, Response, Stream, json_lines, json_response
from machines.runtime.engine import Engine
from machines.runtime.engine.logs import LOG_DRIVERS

_PING_HEADERS = {
    "Builder-Version": "1",
    "Swarm": "inactive",
    "Cache-Control": "no-cache, no-store, must-revalidate",
    "Pragma": "no-cache",
}


@route("GET", "/_ping", "Ping; the Api-Version header starts the CLI's version negotiation")
def ping(engine: Engine, request: Request) -> Response:
    return Response(200, b"OK", "text/plain; charset=utf-8", _PING_HEADERS)


@route("HEAD", "/_ping", "Ping without a body")
def ping_head(engine: Engine, request: Request) -> Response:
    return Response(200, b"", "text/plain; charset=utf-8", _PING_HEADERS)


def _arch() -> str:
    machine = os.uname().machine  # platform's answers come from os.uname(); importing it slowed the daemon's start
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)


@route("GET", "/version", "Server version; docker-py negotiates from ApiVersion")
def version(engine: Engine, request: Request) -> Response:
    details = {
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "Arch": _arch(),
        "Os": "linux",
        "KernelVersion": os.uname().release,
        "GitCommit": "machines",
        "GoVersion": "python" + sys.version.split()[0],
        "BuildTime": "",
        "Experimental": "false",
    }
    return json_response({
        "Platform": {"Name": "machines runtime"},
        "Components": [{"Name": "Engine", "Version": VERSION, "Details": details}],
        "Version": VERSION,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "machines",
        "GoVersion": details["GoVersion"],
        "Os": "linux",
        "Arch": _arch(),
        "KernelVersion": os.uname().release,
        "BuildTime": "",
    })


def _mem_total() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _os_name() -> str:
    try:
        with open("/etc/os-release") as handle:
            for line in handle:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "Linux"


def _cgroup_version() -> str:
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def _masked(url: str) -> str:
    """A proxy URL without its password, as dockerd shows it (``http://user:xxxxx@host``)."""
    parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url) if url else None
    if parts is None or parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":xxxxx@", 1)


def _registry_config(engine: Engine) -> dict[str, Any]:
    """dockerd's RegistryConfig: loopback and CIDRs as insecure ranges, named hosts as insecure index configs."""
    options = engine.options
    cidrs = ["127.0.0.0/8"] + [item for item in options.insecure_registries if "/" in item]
    indexes: dict[str, Any] = {"docker.io": {"Name": "docker.io", "Mirrors": list(options.registry_mirrors),
                                             "Secure": True, "Official": True}}
    for name in options.insecure_registries:
        if "/" not in name:
            indexes[name] = {"Name": name, "Mirrors": [], "Secure": False, "Official": False}
    return {"AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [],
            "IndexConfigs": indexes, "InsecureRegistryCIDRs": cidrs, "Mirrors": list(options.registry_mirrors)}


@route("GET", "/info", "System information; Swarm.LocalNodeState is inactive")
def info(engine: Engine, request: Request) -> Response:
    containers = engine.list_containers(all=True)
    states = [item.get("State") for item in containers]
    images = engine.images.list(all=False)
    data_root = getattr(engine, "data_root", "")
    proxies = engine.options.proxies
    return json_response({
        "ID": getattr(engine, "daemon_id", "") or socket.gethostname(),
        "Name": socket.gethostname(),
        "Containers": len(containers),
        "ContainersRunning": states.count("running"),
        "ContainersPaused": states.count("paused"),
        "ContainersStopped": len(containers) - states.count("running") - states.count("paused"),
        "Images": len(images),
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Log": sorted(LOG_DRIVERS)},
        "MemoryLimit": True,
        "SwapLimit": False,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": engine.options.debug,
        "NFd": len(os.listdir("/proc/self/fd")),
        "NGoroutines": 0,
        "SystemTime": timefmt.rfc3339_nano(),
        "LoggingDriver": engine.options.log_driver,
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": _cgroup_version(),
        "NEventsListener": 0,
        "KernelVersion": os.uname().release,
        "OperatingSystem": _os_name(),
        "OSVersion": "",
        "OSType": "linux",
        "Architecture": os.uname().machine,
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": _registry_config(engine),
        "NCPU": os.cpu_count() or 1,
        "MemTotal": _mem_total(),
        "DockerRootDir": data_root,
        "HttpProxy": _masked(proxies.variables["HTTP_PROXY"]),
        "HttpsProxy": _masked(proxies.variables["HTTPS_PROXY"]),
        "NoProxy": proxies.variables["NO_PROXY"],
        "Labels": list(engine.labels),
        "ExperimentalBuild": False,
        "ServerVersion": VERSION,
        "Runtimes": {"runc": {"path": "machines-runtime"}},
        "DefaultRuntime": "runc",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False,
                  "Error": "", "RemoteManagers": None},
        "LiveRestoreEnabled": True,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": [],
    })


@route("GET", "/events", "Live event stream (chunked JSON)")
def events(engine: Engine, request: Request) -> Stream:
    items = engine.events(since=timestamp_arg(request, "since") or None, until=timestamp_arg(request, "until") or None,
                          filters=filters_arg(request))
    return Stream(json_lines(items), "application/json", long_poll=True)


@route("GET", "/system/df", "Disk usage of images, containers and volumes")
def disk_usage(engine: Engine, request: Request) -> Response:
    images: list[dict[str, Any]] = engine.images.list(all=False)
    containers = engine.list_containers(all=True, size=True)
    volumes = engine.volumes.list().get("Volumes") or []
    return json_response({
        "LayersSize": sum(int(image.get("Size") or 0) for image in images),
        "Images": images,
        "Containers": containers,
        "Volumes": volumes,
        "BuildCache": [],
    })


@route("POST", "/auth", "Log in to a registry: checks the credentials against it")
def auth(engine: Engine, request: Request) -> Response:
    return json_response(engine.image_service.login(request.json_object()))

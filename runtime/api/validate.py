"""Type checks for JSON bodies, so a wrong type is a 400 with a clear message instead of a crash in the engine.

Like Go's decoder behind moby: ``null`` is accepted for any field, booleans are not numbers, and integers must be
whole. Unknown top-level fields of a container config are refused (a typo would otherwise be silently ignored).
"""

from __future__ import annotations

from typing import Any

from machines.runtime.clientjson import json_type
from machines.runtime.errors import InvalidParameter

STR = "string"
BOOL = "boolean"
INT = "integer"
LIST = "array"
DICT = "object"
STR_LIST = "array of strings"
CMD = "string or array of strings"
OBJ_LIST = "array of objects"
STR_MAP = "object of strings"
OBJ_MAP = "object of objects"

_CHECKS = {
    STR: lambda value: isinstance(value, str),
    BOOL: lambda value: isinstance(value, bool),
    INT: lambda value: isinstance(value, int) and not isinstance(value, bool),
    LIST: lambda value: isinstance(value, list),
    DICT: lambda value: isinstance(value, dict),
    STR_LIST: lambda value: isinstance(value, list) and all(isinstance(item, str) for item in value),
    CMD: lambda value: isinstance(value, str) or (isinstance(value, list)
                                                  and all(isinstance(item, str) for item in value)),
    OBJ_LIST: lambda value: isinstance(value, list) and all(isinstance(item, dict) for item in value),
    STR_MAP: lambda value: isinstance(value, dict) and all(isinstance(item, str) for item in value.values()),
    OBJ_MAP: lambda value: isinstance(value, dict) and all(isinstance(item, dict) or item is None
                                                           for item in value.values()),
}

CONTAINER_CONFIG = {
    "Hostname": STR, "Domainname": STR, "User": STR, "AttachStdin": BOOL, "AttachStdout": BOOL,
    "AttachStderr": BOOL, "ExposedPorts": DICT, "Tty": BOOL, "OpenStdin": BOOL, "StdinOnce": BOOL,
    "Env": STR_LIST, "Cmd": CMD, "Healthcheck": DICT, "ArgsEscaped": BOOL, "Image": STR, "Volumes": DICT,
    "WorkingDir": STR, "Entrypoint": CMD, "NetworkDisabled": BOOL, "MacAddress": STR, "OnBuild": STR_LIST,
    "Labels": STR_MAP, "StopSignal": STR, "StopTimeout": INT, "Shell": STR_LIST, "Runtime": STR,
    "HostConfig": DICT, "NetworkingConfig": DICT,
}

HOST_CONFIG = {
    "Binds": STR_LIST, "Mounts": OBJ_LIST, "PortBindings": DICT, "PublishAllPorts": BOOL, "AutoRemove": BOOL,
    "NetworkMode": STR, "RestartPolicy": DICT, "LogConfig": DICT, "Memory": INT, "MemorySwap": INT,
    "MemoryReservation": INT, "NanoCpus": INT, "CpuShares": INT, "CpuQuota": INT, "CpuPeriod": INT,
    "CpusetCpus": STR, "PidsLimit": INT, "Privileged": BOOL, "CapAdd": STR_LIST, "CapDrop": STR_LIST,
    "ConsoleSize": LIST, "Init": BOOL, "ExtraHosts": STR_LIST, "Dns": STR_LIST, "DnsSearch": STR_LIST,
    "DnsOptions": STR_LIST, "ReadonlyRootfs": BOOL, "Tmpfs": STR_MAP, "ShmSize": INT, "VolumesFrom": STR_LIST,
    "Links": STR_LIST, "SecurityOpt": STR_LIST, "Ulimits": OBJ_LIST, "Sysctls": STR_MAP, "OomKillDisable": BOOL,
}

NETWORKING_CONFIG = {"EndpointsConfig": OBJ_MAP}

RESTART_POLICY = {"Name": STR, "MaximumRetryCount": INT}

ENDPOINT_CONFIG = {
    "IPAMConfig": DICT, "Links": STR_LIST, "Aliases": STR_LIST, "MacAddress": STR, "DriverOpts": STR_MAP,
    "NetworkID": STR, "EndpointID": STR, "Gateway": STR, "IPAddress": STR, "IPPrefixLen": INT, "DNSNames": STR_LIST,
}

IPAM_CONFIG = {"IPv4Address": STR, "IPv6Address": STR, "LinkLocalIPs": STR_LIST}

VOLUME_CONFIG = {"Name": STR, "Driver": STR, "DriverOpts": STR_MAP, "Labels": STR_MAP}

EXEC_CONFIG = {
    "AttachStdin": BOOL, "AttachStdout": BOOL, "AttachStderr": BOOL, "ConsoleSize": LIST, "DetachKeys": STR,
    "Tty": BOOL, "Env": STR_LIST, "Cmd": STR_LIST, "Privileged": BOOL, "User": STR, "WorkingDir": STR,
    "Detach": BOOL,
}

EXEC_START = {"Detach": BOOL, "Tty": BOOL, "ConsoleSize": LIST}


def check(body: dict[str, Any], schema: dict[str, str], where: str, strict: bool) -> None:
    """Raise ``InvalidParameter`` for a field of the wrong type (or, when ``strict``, an unknown field)."""
    for key, value in body.items():
        kind: str | None = schema.get(key)
        if kind is None:
            if strict:
                raise InvalidParameter(f"invalid JSON: unknown field {key!r} in {where}")
            continue
        if value is not None and not _CHECKS[kind](value):
            raise InvalidParameter("invalid JSON: {}.{} must be {} {}, got {}".format(where, key, "an" if kind[0] in "aeiou" else "a", kind, json_type(value)))


def container_config(body: dict[str, Any]) -> None:
    check(body, CONTAINER_CONFIG, "ContainerConfig", strict=True)
    host = body.get("HostConfig") or {}
    check(host, HOST_CONFIG, "HostConfig", strict=False)
    check(host.get("RestartPolicy") or {}, RESTART_POLICY, "HostConfig.RestartPolicy", strict=False)
    networking = body.get("NetworkingConfig") or {}
    check(networking, NETWORKING_CONFIG, "NetworkingConfig", strict=False)
    for name, endpoint in (networking.get("EndpointsConfig") or {}).items():
        endpoint_config(endpoint or {}, f"NetworkingConfig.EndpointsConfig[{name}]")


def endpoint_config(config: dict[str, Any], where: str) -> None:
    check(config, ENDPOINT_CONFIG, where, strict=False)
    check(config.get("IPAMConfig") or {}, IPAM_CONFIG, where + ".IPAMConfig", strict=False)


def console_size(value: Any) -> tuple[int, int] | None:
    """``ConsoleSize: [h, w]`` as a pair, or None when absent or zero."""
    if not value:
        return None
    if len(value) != 2 or not all(_CHECKS[INT](item) and item >= 0 for item in value):
        raise InvalidParameter("invalid JSON: ConsoleSize must be [height, width]")
    return (value[0], value[1]) if any(value) else None

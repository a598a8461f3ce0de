"""Turning a create request plus the image config into the container's stored config, as moby does."""
from __future__ import annotations

import os
import random
import re
import resource
import signal
import stat
from typing import Dict, List, Optional, Tuple

from runtime.errors import InvalidParameter

NAME_RE = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # always fullmatch: "$" would let "name\n" by
ZERO_TIME = "0001-01-01T00:00:00Z"
RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")

_LEFT = ("admiring", "brave", "clever", "eager", "festive", "gallant", "happy", "jolly", "keen", "lucid", "modest",
         "nifty", "optimistic", "quirky", "relaxed", "serene", "trusting", "upbeat", "vibrant", "wizardly", "zealous")
_RIGHT = ("babbage", "curie", "darwin", "einstein", "fermi", "galileo", "hopper", "hypatia", "kepler", "lovelace",
          "meitner", "newton", "noether", "pasteur", "ritchie", "shannon", "tesla", "thompson", "turing", "wozniak")


def random_name() -> str:
    return "%s_%s" % (random.choice(_LEFT), random.choice(_RIGHT))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidParameter("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed" % name)
    return name.lstrip("/")


def _env_key(item: str) -> str:
    return item.partition("=")[0]


def merge_env(image_env: List[str], user_env: List[str]) -> List[str]:
    """Image env then request env; a request variable replaces the image's variable of the same name."""
    out: Dict[str, str] = {}
    for item in list(image_env or []) + list(user_env or []):
        out[_env_key(item)] = item
    return list(out.values())


def _as_list(value: object) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return list(value)  # type: ignore[call-overload]


def merge_config(body: dict, image_config: dict) -> dict:
    """The container's Config: the request with the gaps filled from the image (image-spec conversion rules)."""
    img = image_config or {}
    cfg = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
    entry = _as_list(cfg.get("Entrypoint"))
    cmd = _as_list(cfg.get("Cmd"))
    if not entry:
        entry = _as_list(img.get("Entrypoint"))
        if not cmd:
            cmd = _as_list(img.get("Cmd"))
    cfg["Entrypoint"] = entry or None
    cfg["Cmd"] = cmd or None
    cfg["Env"] = merge_env(img.get("Env") or [], cfg.get("Env") or [])
    for key in ("WorkingDir", "User", "StopSignal"):
        if not cfg.get(key) and img.get(key):
            cfg[key] = img[key]
    cfg["Labels"] = dict(img.get("Labels") or {}, **(cfg.get("Labels") or {}))
    exposed = dict(img.get("ExposedPorts") or {})
    exposed.update(cfg.get("ExposedPorts") or {})
    cfg["ExposedPorts"] = {_port_key(k): {} for k in exposed} or None
    volumes = dict(img.get("Volumes") or {})
    volumes.update(cfg.get("Volumes") or {})
    cfg["Volumes"] = volumes or None
    for key, default in (("Hostname", ""), ("Domainname", ""), ("User", ""), ("AttachStdin", False),
                         ("AttachStdout", False), ("AttachStderr", False), ("Tty", False), ("OpenStdin", False),
                         ("StdinOnce", False), ("WorkingDir", ""), ("OnBuild", None)):
        cfg.setdefault(key, default)
    return cfg


def _port_key(key: str) -> str:
    return key if "/" in key else key + "/tcp"


def command_of(cfg: dict) -> List[str]:
    args = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    if not args:
        raise InvalidParameter("no command specified")
    return args


def parse_signal(value: object, default: int = signal.SIGTERM) -> int:
    """``SIGTERM``, ``TERM``, ``term`` or ``15``."""
    if value in (None, ""):
        return default
    text = str(value).upper()
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
    else:
        name = text if text.startswith("SIG") else "SIG" + text
        sig = signal.Signals.__members__.get(name)
        if sig is not None:
            return int(sig)
    raise InvalidParameter("Invalid signal: %s" % value)


def restart_policy(policy: dict) -> dict:
    """A validated restart policy, refused with moby's words (``ValidateRestartPolicy``)."""
    name = policy.get("Name") or "no"
    retries = policy.get("MaximumRetryCount") or 0
    if name not in RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
                               "'on-failure', or 'unless-stopped'")
    if name == "on-failure" and retries < 0:
        raise InvalidParameter("invalid restart policy: maximum retry count cannot be negative")
    if name != "on-failure" and retries:
        raise InvalidParameter("invalid restart policy: maximum retry count can only be used with 'on-failure'"
                               + (" and cannot be negative" if retries < 0 else ""))
    return {"Name": name, "MaximumRetryCount": retries}


def validate_network_mode(config: dict, host: dict) -> None:
    """Options that contradict the network mode, refused with moby's words (``runconfig.validateNetMode``)."""
    mode = host.get("NetworkMode") or "default"
    shared = mode.startswith("container:")
    endpoints = ((config.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}).values()
    mac = config.get("MacAddress") or any((endpoint or {}).get("MacAddress") for endpoint in endpoints)
    if mode == "container" or mode == "container:":
        raise InvalidParameter("Invalid network mode: invalid container format container:<name|id>")
    conflicts = [
        (shared and config.get("Hostname"), "conflicting options: hostname and the network mode"),
        (shared and host.get("Links"), "conflicting options: container type network can't be used with links. "
                                       "This would result in undefined behavior"),
        (shared and host.get("Dns"), "conflicting options: dns and the network mode"),
        (shared and host.get("ExtraHosts"), "conflicting options: custom host-to-IP mapping and the network mode"),
        ((shared or mode == "host") and mac, "conflicting options: mac-address and the network mode"),
        (shared and (host.get("PortBindings") or host.get("PublishAllPorts")), "conflicting options: port publishing "
                                                                                "and the container type network mode"),
        (shared and config.get("ExposedPorts"), "conflicting options: port exposing and the container type network "
                                                "mode"),
        (host.get("UTSMode") == "host" and config.get("Hostname"), "conflicting options: hostname and the UTS mode"),
        (mode == "host" and host.get("Links"), "conflicting options: host type networking can't be used with links. "
                                               "This would result in undefined behavior"),
    ]
    for conflict, message in conflicts:
        if conflict:
            raise InvalidParameter(message)


def create_warnings(host: dict) -> List[str]:
    """What moby accepts but warns about at create (``verifyPlatformContainerSettings``)."""
    warnings = []
    if host.get("NetworkMode") == "host" and host.get("PortBindings"):
        warnings.append("Published ports are discarded when using host network mode")
    return warnings


def host_config_defaults(host: dict) -> dict:
    host = dict(host or {})
    host.setdefault("NetworkMode", "default")
    if not host.get("NetworkMode"):
        host["NetworkMode"] = "default"
    log = dict(host.get("LogConfig") or {})
    if log.get("Type") not in (None, "", "json-file"):
        raise InvalidParameter("logging driver %r is not supported, only json-file" % log.get("Type"))
    host["LogConfig"] = {"Type": "json-file", "Config": log.get("Config") or {}}
    host["RestartPolicy"] = restart_policy(host.get("RestartPolicy") or {})
    name = host["RestartPolicy"]["Name"]
    if host.get("AutoRemove") and name != "no":
        raise InvalidParameter("can't create 'AutoRemove' container with restart policy")
    for key, default in (("Binds", None), ("Privileged", False), ("PublishAllPorts", False), ("AutoRemove", False),
                         ("PortBindings", {}), ("Memory", 0), ("MemorySwap", 0), ("NanoCpus", 0), ("CpuShares", 0),
                         ("CpuQuota", 0), ("CpuPeriod", 0), ("PidsLimit", None), ("CapAdd", None), ("CapDrop", None),
                         ("Dns", []), ("DnsOptions", []), ("DnsSearch", []), ("ExtraHosts", None),
                         ("ReadonlyRootfs", False), ("Init", None), ("Mounts", None), ("Tmpfs", None),
                         ("ConsoleSize", [0, 0]), ("IpcMode", "private"), ("PidMode", ""), ("UTSMode", ""),
                         ("ShmSize", 67108864), ("Runtime", "runc")):
        if host.get(key) is None and default is not None:
            host[key] = default
        else:
            host.setdefault(key, default)
    for key, allowed in (("IpcMode", ("", "private", "shareable", "host")), ("PidMode", ("", "host")),
                         ("UTSMode", ("", "host"))):
        if (host.get(key) or "") not in allowed:
            raise InvalidParameter("%s %r is not supported (only %s)" % (key, host[key], ", ".join(
                repr(a) for a in allowed if a)))
    if host["Memory"] and host["Memory"] < 6 * 1024 * 1024:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    return host


def parse_binds(binds: List[str]) -> List[dict]:
    """``-v`` specs: ``/host:/ctr[:ro]`` (bind) or ``name:/ctr[:ro]`` (named volume) or ``/ctr`` (anonymous)."""
    out = []
    for spec in binds or []:
        parts = spec.split(":")
        if len(parts) == 1:
            out.append({"Type": "volume", "Source": "", "Target": parts[0], "ReadOnly": False})
            continue
        if len(parts) > 3:
            raise InvalidParameter("invalid volume specification: '%s'" % spec)
        source, target = parts[0], parts[1]
        mode = parts[2].split(",") if len(parts) == 3 else []
        if not target.startswith("/"):
            raise InvalidParameter("invalid volume specification: '%s': invalid mount config for type \"%s\": "
                                   "invalid mount path: '%s' mount path must be absolute"
                                   % (spec, "bind" if source.startswith("/") else "volume", target))
        bad = [m for m in mode if m not in ("ro", "rw", "z", "Z", "nocopy", "private", "rprivate", "shared",
                                            "rshared", "slave", "rslave")]
        if bad:
            raise InvalidParameter("invalid mode: %s" % ",".join(bad))
        out.append({"Type": "bind" if source.startswith("/") else "volume", "Source": source, "Target": target,
                    "ReadOnly": "ro" in mode, "FromBinds": True, "NoCopy": "nocopy" in mode})
    return out


def parse_mounts(mounts: List[dict], tmpfs: Optional[Dict[str, str]]) -> List[dict]:
    out = []
    for m in mounts or []:
        kind = m.get("Type") or "volume"
        target = m.get("Target") or m.get("Destination") or ""
        if kind not in ("bind", "volume", "tmpfs"):
            raise InvalidParameter("mount type %r is not supported" % kind)
        if not target.startswith("/"):
            raise InvalidParameter("invalid mount config for type \"%s\": invalid mount path: '%s' mount path must "
                                   "be absolute" % (kind, target))
        source = m.get("Source") or ""
        if kind == "bind" and not os.path.exists(source):
            raise InvalidParameter("invalid mount config for type \"bind\": bind source path does not exist: %s"
                                   % source)
        opts = ""
        if kind == "tmpfs":
            tmp = m.get("TmpfsOptions") or {}
            opts = ",".join(filter(None, ["size=%d" % tmp["SizeBytes"] if tmp.get("SizeBytes") else "",
                                          "mode=%o" % tmp["Mode"] if tmp.get("Mode") else "mode=1777"]))
        nocopy = bool((m.get("VolumeOptions") or {}).get("NoCopy"))
        out.append({"Type": kind, "Source": source, "Target": target, "ReadOnly": bool(m.get("ReadOnly")),
                    "Options": opts, "NoCopy": nocopy})
    for target, opts in (tmpfs or {}).items():
        out.append({"Type": "tmpfs", "Source": "", "Target": target, "ReadOnly": False,
                    "Options": opts or "mode=1777"})
    return out


def split_mode(network_mode: str) -> Tuple[str, str]:
    """("bridge", "bridge"), ("host", ""), ("none", ""), ("container", ref) or ("network", user network)."""
    mode = network_mode or "default"
    if mode in ("default", "bridge"):
        return "bridge", "bridge"
    if mode in ("host", "none"):
        return mode, mode
    if mode.startswith("container:"):
        return "container", mode.split(":", 1)[1]
    return "network", mode


def devices_of(host: dict) -> List[dict]:
    """HostConfig.Devices (``--device /dev/fuse[:/dev/x[:rwm]]``) as nodes to make and cgroup rules."""
    out = []
    for item in host.get("Devices") or []:
        source = item.get("PathOnHost") or ""
        try:
            st = os.stat(source)
        except OSError as e:
            raise InvalidParameter("error gathering device information while adding custom device %r: %s"
                                   % (source, e.strerror))
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidParameter("error gathering device information while adding custom device %r: not a "
                                   "device node" % source)
        out.append({"path": item.get("PathInContainer") or source, "type": "c" if stat.S_ISCHR(st.st_mode)
                    else "b", "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                    "perms": item.get("CgroupPermissions") or "rwm"})
    return out


def log_size(text: Optional[str]) -> int:
    """go-units RAMInBytes: ``10m`` is 10 MiB; empty means no limit."""
    if not text:
        return 0
    value = str(text).strip().lower().rstrip("b")
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(value[-1:], 1)
    try:
        return int(float(value.rstrip("kmg")) * scale)
    except ValueError:
        raise InvalidParameter("invalid log size: %r" % text)


def ulimits_of(items: List[dict]) -> List[Tuple[int, int, int]]:
    """HostConfig.Ulimits (``[{"Name": "nofile", "Soft": 1024, "Hard": 2048}]``) as setrlimit arguments."""
    out = []
    for item in items:
        number = getattr(resource, "RLIMIT_" + str(item.get("Name", "")).upper(), None)
        if number is None:
            raise InvalidParameter("invalid ulimit type: %s" % item.get("Name"))
        out.append((number, int(item.get("Soft", -1)), int(item.get("Hard", -1))))
    return out

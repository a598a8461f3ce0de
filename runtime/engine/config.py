"""Turning a create request plus the image config into the container's stored config, as moby does."""
from __future__ import annotations

import os
import random
import re
import resource
import signal
import stat

from machines.runtime.engine.logs import log_config
from machines.runtime.errors import InvalidParameter

NAME_RE = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]+")  # always fullmatch: "$" would let "name\n" by
ZERO_TIME = "0001-01-01T00:00:00Z"
RESTART_POLICIES = ("", "no", "always", "unless-stopped", "on-failure")

_LEFT = ("admiring", "brave", "clever", "eager", "festive", "gallant", "happy", "jolly", "keen", "lucid", "modest",
         "nifty", "optimistic", "quirky", "relaxed", "serene", "trusting", "upbeat", "vibrant", "wizardly", "zealous")
_RIGHT = ("babbage", "curie", "darwin", "einstein", "fermi", "galileo", "hopper", "hypatia", "kepler", "lovelace",
          "meitner", "newton", "noether", "pasteur", "ritchie", "shannon", "tesla", "thompson", "turing", "wozniak")


def random_name() -> str:
    return f"{random.choice(_LEFT)}_{random.choice(_RIGHT)}"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidParameter(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name.lstrip("/")


def _env_key(item: str) -> str:
    return item.partition("=")[0]


def merge_env(image_env: list[str], user_env: list[str]) -> list[str]:
    """Image env then request env; a request variable replaces the image's variable of the same name."""
    out: dict[str, str] = {}
    for item in list(image_env or []) + list(user_env or []):
        out[_env_key(item)] = item
    return list(out.values())


def _as_list(value: object) -> list[str] | None:
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


def command_of(cfg: dict) -> list[str]:
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
    raise InvalidParameter(f"Invalid signal: {value}")


def host_config_defaults(host: dict) -> dict:
    host = dict(host or {})
    host.setdefault("NetworkMode", "default")
    if not host.get("NetworkMode"):
        host["NetworkMode"] = "default"
    host["LogConfig"] = log_config(host.get("LogConfig") or {})
    host["RestartPolicy"] = check_restart_policy(host.get("RestartPolicy") or {})
    if host.get("AutoRemove") and host["RestartPolicy"]["Name"] != "no":
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
            raise InvalidParameter("{} {!r} is not supported (only {})".format(key, host[key], ", ".join(
                repr(a) for a in allowed if a)))
    if host["Memory"] and host["Memory"] < 6 * 1024 * 1024:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if host["Memory"] > 0 and not host["MemorySwap"]:
        host["MemorySwap"] = 2 * host["Memory"]  # moby's adaptContainerSettings: swap as large as the memory
    return host


def check_restart_policy(policy: dict) -> dict:
    """A RestartPolicy as stored (name defaulted to ``no``), refused with dockerd's words when invalid."""
    name = policy.get("Name") or "no"
    if name not in RESTART_POLICIES:
        raise InvalidParameter(f"invalid restart policy '{name}'")
    retries = int(policy.get("MaximumRetryCount") or 0)
    if retries and name != "on-failure":
        raise InvalidParameter(f"maximum retry count cannot be used with restart policy '{name}'")
    if retries < 0:
        raise InvalidParameter("maximum retry count cannot be negative")
    return {"Name": name, "MaximumRetryCount": retries}


PROPAGATION_MODES = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def parse_binds(binds: list[str]) -> list[dict]:
    """``-v`` specs: ``/host:/ctr[:ro]`` (bind) or ``name:/ctr[:ro]`` (named volume) or ``/ctr`` (anonymous)."""
    out = []
    for spec in binds or []:
        parts = spec.split(":")
        if len(parts) == 1:
            out.append({"Type": "volume", "Source": "", "Target": parts[0], "ReadOnly": False})
            continue
        if len(parts) > 3:
            raise InvalidParameter(f"invalid volume specification: '{spec}'")
        source, target = parts[0], parts[1]
        mode = parts[2].split(",") if len(parts) == 3 else []
        if not target.startswith("/"):
            raise InvalidParameter("invalid volume specification: '{}': invalid mount config for type \"{}\": "
                                   "invalid mount path: '{}' mount path must be absolute".format(spec, "bind" if source.startswith("/") else "volume", target))
        bad = [m for m in mode if m not in ("ro", "rw", "z", "Z", "nocopy", "private", "rprivate", "shared",
                                            "rshared", "slave", "rslave")]
        if bad:
            raise InvalidParameter(f"invalid mode: {','.join(bad)}")
        propagation = [m for m in mode if m in PROPAGATION_MODES]
        if len(propagation) > 1 or (propagation and not source.startswith("/")):
            raise InvalidParameter(f"invalid mode: {parts[2]}")
        out.append({"Type": "bind" if source.startswith("/") else "volume", "Source": source, "Target": target,
                    "ReadOnly": "ro" in mode, "FromBinds": True, "NoCopy": "nocopy" in mode,
                    "Propagation": propagation[0] if propagation else ""})
    return out


def tmpfs_options(tmp: dict) -> str:
    """TmpfsOptions as mount data, as moby's ConvertTmpfsOptions writes it: ``mode=1770,size=64m``, then any
    extra ``Options`` (API 1.46) such as ``exec``."""
    opts = ["mode=%o" % (int(tmp["Mode"]) & 0o7777) if tmp.get("Mode") else "mode=1777"]
    size = int(tmp.get("SizeBytes") or 0)
    if size < 0:
        raise InvalidParameter(f'invalid mount config for type "tmpfs": invalid tmpfs size {size}')
    if size:
        for factor, suffix in ((1 << 20, "m"), (1 << 10, "k"), (1, "")):
            if size % factor == 0:
                opts.append(f"size={size // factor}{suffix}")
                break
    for option in tmp.get("Options") or []:
        opts.append("=".join(str(part) for part in option))
    return ",".join(opts)


def parse_mounts(mounts: list[dict], tmpfs: dict[str, str] | None) -> list[dict]:
    out = []
    for m in mounts or []:
        kind = m.get("Type") or "volume"
        target = m.get("Target") or m.get("Destination") or ""
        if kind not in ("bind", "volume", "tmpfs"):
            raise InvalidParameter(f"mount type {kind!r} is not supported")
        if not target.startswith("/"):
            raise InvalidParameter(f"invalid mount config for type \"{kind}\": invalid mount path: '{target}' mount path must "
                                   "be absolute")
        source = m.get("Source") or ""
        if kind == "bind" and not os.path.exists(source):
            raise InvalidParameter(f"invalid mount config for type \"bind\": bind source path does not exist: {source}")
        opts = ""
        propagation = str((m.get("BindOptions") or {}).get("Propagation") or "")
        if propagation and propagation not in PROPAGATION_MODES:
            raise InvalidParameter(f'invalid mount config for type "{kind}": invalid propagation mode: {propagation}')
        if kind == "tmpfs":
            if source:
                raise InvalidParameter('invalid mount config for type "tmpfs": field Source must not be specified')
            opts = tmpfs_options(m.get("TmpfsOptions") or {})
        nocopy = bool((m.get("VolumeOptions") or {}).get("NoCopy"))
        out.append({"Type": kind, "Source": source, "Target": target, "ReadOnly": bool(m.get("ReadOnly")),
                    "Options": opts, "NoCopy": nocopy, "Propagation": propagation})
    for target, opts in (tmpfs or {}).items():
        out.append({"Type": "tmpfs", "Source": "", "Target": target, "ReadOnly": False,
                    "Options": opts or "mode=1777"})
    return out


def split_mode(network_mode: str) -> tuple[str, str]:
    """("bridge", "bridge"), ("host", ""), ("none", ""), ("container", ref) or ("network", user network)."""
    mode = network_mode or "default"
    if mode in ("default", "bridge"):
        return "bridge", "bridge"
    if mode in ("host", "none"):
        return mode, mode
    if mode.startswith("container:"):
        return "container", mode.split(":", 1)[1]
    return "network", mode


def devices_of(host: dict) -> list[dict]:
    """HostConfig.Devices (``--device /dev/fuse[:/dev/x[:rwm]]``) as nodes to make and cgroup rules."""
    out = []
    for item in host.get("Devices") or []:
        source = item.get("PathOnHost") or ""
        try:
            st = os.stat(source)
        except OSError as e:
            raise InvalidParameter(f"error gathering device information while adding custom device {source!r}: {e.strerror}") from None
        if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise InvalidParameter(f"error gathering device information while adding custom device {source!r}: not a "
                                   "device node")
        out.append({"path": item.get("PathInContainer") or source, "type": "c" if stat.S_ISCHR(st.st_mode)
                    else "b", "major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev),
                    "perms": item.get("CgroupPermissions") or "rwm"})
    return out


def ulimits_of(items: list[dict]) -> list[tuple[int, int, int]]:
    """HostConfig.Ulimits (``[{"Name": "nofile", "Soft": 1024, "Hard": 2048}]``) as setrlimit arguments."""
    out = []
    for item in items:
        number = getattr(resource, "RLIMIT_" + str(item.get("Name", "")).upper(), None)
        if number is None:
            raise InvalidParameter(f"invalid ulimit type: {item.get('Name')}")
        out.append((number, int(item.get("Soft", -1)), int(item.get("Hard", -1))))
    return out


def go_json_type(value: object) -> str:
    """How Go's encoding/json names a JSON value in "json: cannot unmarshal X into ..." errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number " + str(value)
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"

"""The container engine: Docker-shaped operations over namespaces, cgroups, overlayfs and per-container shims.

State lives on disk (``<data-root>/containers/<id>/config.v2.json``, the shim's ``exit.json``) so a daemon killed
with SIGKILL reloads everything, reconnects to live shims, and marks the dead with the code their shim recorded.

``Engine`` is the facade the API calls. The verb families live beside it, one module each over the shared
``container.ContainerTable`` (as moby's daemon/exec.go, monitor.go, health.go and update.go share one container
type): ``exec`` (exec instances), ``monitor`` (exit watching, restart policies), ``health`` (probes),
``update`` (docker update checks and merge), ``launch`` (forking a process into a container and reading its report
pipe), ``logs`` (log drivers and reading), ``archive`` (files in and out).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal as signals
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from machines.runtime.daemonconfig import DaemonOptions
from machines.runtime.engine import archive, health, links, update
from machines.runtime.engine.config import (
    ZERO_TIME,
    check_name,
    check_restart_policy,
    command_of,
    devices_of,
    host_config_defaults,
    merge_config,
    merge_env,
    parse_binds,
    parse_mounts,
    parse_signal,
    random_name,
    split_mode,
    ulimits_of,
)
from machines.runtime.engine.container import Container, ContainerTable, now, parse_time
from machines.runtime.engine.events import EventBus
from machines.runtime.engine.exec import ExecManager
from machines.runtime.engine.launch import Launch, Launcher, start_error, start_exit_code
from machines.runtime.engine.logs import read_logs, rotation
from machines.runtime.engine.monitor import Monitor
from machines.runtime.engine.sessions import AttachSession, Session
from machines.runtime.engine.shim import connect
from machines.runtime.engine.status import host_memory, human_status, net_stats, summary_ports, system_cpu_ns
from machines.runtime.engine.volumes import VolumeStore
from machines.runtime.errors import (
    Conflict,
    EngineError,
    HostError,
    InvalidParameter,
    NotFound,
    NotModified,
    NotSupported,
)
from machines.runtime.filters import PRUNE_LABELS, Args
from machines.runtime.linux import cgroups, syscalls
from machines.runtime.linux.paths import private_dir
from machines.runtime.linux.process import propagation_problem

LIST_FILTERS = ("ancestor", "before", "exited", "expose", "health", "id", "is-task", "label", "name", "network",
                "publish", "since", "status", "volume")  # moby's
EXIT_RECHECK = 5.0  # seconds between a waiter's own looks at the shim's exit record
STATES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")  # moby's IsValidStateString


class Engine:
    """Docker's container operations, thread-safe. Methods take Docker's JSON shapes and raise ``runtime.errors``
    classes whose status and message the API answers with."""

    def __init__(self, data_root: str, exec_root: str, *, bridge_subnet: str | None = None,
                 bridge_name: str | None = None, options: DaemonOptions | None = None) -> None:
        """``options``: the daemon's configuration (labels, registries, proxies, bridge); ``bridge_subnet`` may
        name the gateway as dockerd's ``bip`` does."""
        from machines.runtime.images.service import ImageService
        from machines.runtime.images.store import ImageStore
        from machines.runtime.network.manager import NetworkManager

        self.data_root = os.path.abspath(data_root)
        self.exec_root = os.path.abspath(exec_root)
        self.containers_root = os.path.join(self.data_root, "containers")
        for path in (self.data_root, self.containers_root, self.exec_root):  # dockerd's modes: not world-readable
            private_dir(path, 0o710)
        cgroups.layout()  # read before any fork: the container child must not parse mountinfo after pivot_root
        self.images = ImageStore(os.path.join(self.data_root, "image"))
        self.options = options or DaemonOptions()
        self.labels = list(self.options.labels)  # docker info's Labels
        self.image_service = ImageService(  # pull, push, login, build, save, load
            self.images, insecure_registries=self.options.insecure_registries,
            mirrors=self.options.registry_mirrors, proxies=self.options.proxies)
        network_options: dict[str, Any] = {"bridge_name": bridge_name} if bridge_name else {}
        if self.options.address_pool:
            network_options.update(pool=self.options.address_pool[0], pool_prefix=self.options.address_pool[1])
        self.networks = NetworkManager(os.path.join(self.data_root, "network"), self.exec_root,
                                       default_subnet=bridge_subnet or self.options.bip, mtu=self.options.mtu,
                                       **network_options)
        self.volumes = VolumeStore(os.path.join(self.data_root, "volumes"), self._volume_users)
        self.bus = EventBus()
        self.table = ContainerTable(self.bus)
        self._lock = self.table.lock
        self._cond = self.table.cond
        self._containers = self.table.by_id
        self.launcher = Launcher()  # forks the container monitors and exec helpers; started by ``serving``
        self.execs = ExecManager(self.table, self.launcher, self._spec)
        self.health = health.HealthChecker(self.table, self.execs)
        self.monitor = Monitor(self.table, self.execs, self.health, start=self._start,
                               release_network=self._release_network,
                               remove=lambda cid: self.remove(cid, force=True, volumes=True))
        self._trash = os.path.join(self.data_root, "trash")
        private_dir(self._trash, 0o700)
        self._discards: list[threading.Thread] = []
        for cid in os.listdir(self._trash):  # removals a killed daemon did not finish
            self._discard(cid, os.path.join(self._trash, cid))
        self._restore()

    def serving(self) -> None:
        """The daemon serves: do what the first container needs but readiness does not. The launcher's own
        interpreter then imports while the first requests are answered, not while the daemon starts (a container
        started before this, by a restart policy, has started it already), and the rules a killed daemon left for
        bridges that are gone are swept (a bridge used before then is swept first)."""
        self.launcher.start()
        try:
            self.networks.sweep()
        except EngineError:  # as in restore: the daemon serves without it
            pass

    # --- lookup and persistence --------------------------------------------------------------------------------

    def _get(self, ref: str) -> Container:
        return self.table.get(ref)

    def _save(self, c: Container) -> None:
        self.table.save(c)

    def _emit(self, c: Container, action: str, **extra: str) -> None:
        self.table.emit(c, action, **extra)

    def log_event(self, ref: str, action: str, **extra: str) -> None:
        """A container event for something done around the engine (``commit``), with the usual attributes."""
        self._emit(self._get(ref), action, **extra)

    def _volume_users(self, name: str) -> list[str]:
        with self._lock:
            return [c.id for c in self._containers.values()
                    if any(m.get("Name") == name for m in c.data.get("Mounts") or [])]

    def container_upper_dir(self, ref: str) -> str:
        return self._get(ref).file("upper")

    # --- create ------------------------------------------------------------------------------------------------

    def _daemon_defaults(self, host: dict) -> dict:
        """The daemon's log driver and DNS settings for what the container leaves unset (dockerd's rules: the
        daemon's log-opts only go with its own log driver)."""
        host = dict(host)
        log = dict(host.get("LogConfig") or {})
        if not log.get("Type"):
            log["Type"] = self.options.log_driver
        if not log.get("Config") and log["Type"] == self.options.log_driver:
            log["Config"] = dict(self.options.log_opts)
        host["LogConfig"] = log
        for key, default in (("Dns", self.options.dns), ("DnsSearch", self.options.dns_search),
                             ("DnsOptions", self.options.dns_opts)):
            if not host.get(key) and default:
                host[key] = list(default)
        return host

    def create_container(self, body: dict, name: str | None = None, platform: str | None = None) -> dict:
        body = dict(body or {})
        image_ref = body.get("Image") or ""
        if not image_ref:
            raise InvalidParameter("config.Image must be set")
        host = host_config_defaults(self._daemon_defaults(body.get("HostConfig") or {}))  # before the image lookup
        image = self.images.resolve(image_ref)
        self.image_service.admit(image_ref, image)
        ulimits_of(host.get("Ulimits") or [])  # refuse bad values at create, not at start
        devices_of(host)
        health.validate(body.get("Healthcheck"))
        image_config = (image.config or {}).get("config") or {}
        config = merge_config(body, image_config)
        config["Healthcheck"] = health.merge(body.get("Healthcheck"), image_config.get("Healthcheck"))
        if config["Healthcheck"] is None:
            del config["Healthcheck"]
        config["Image"] = image_ref
        args = command_of(config)
        cid = secrets.token_hex(32)
        kind, target = split_mode(host["NetworkMode"])
        asked = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        macs = [config.get("MacAddress")] + [ep.get("MacAddress") for ep in asked.values() if isinstance(ep, dict)]
        links.check_network_mode(config, host, kind, next((str(mac) for mac in macs if mac), ""))
        if not config.get("Hostname"):
            config["Hostname"] = cid[:12]
        if kind == "container":
            self._get(target)
        networks = self._planned_networks(kind, target, body)
        linked = self._link_children(host.get("Links") or [], kind)
        mounts = self._plan_mounts(cid, host, config)
        with self._lock:
            name = check_name(name) if name else self._unique_name()
            for other in self._containers.values():
                if other.name == name:
                    raise Conflict(f'Conflict. The container name "/{name}" is already in use by container "{other.id}". You '
                                   'have to remove (or rename) that container to be able to reuse that name.')
            host["Links"] = [links.stored(child, name, alias) for child, alias in linked] or None
            path = os.path.join(self.containers_root, cid)
            for sub in ("rootfs", "upper", "work"):
                os.makedirs(os.path.join(path, sub), exist_ok=True)
            driver = host["LogConfig"]["Type"]
            log_file = {"json-file": os.path.join(path, cid + "-json.log"),  # moby keeps local's file private
                        "local": os.path.join(path, "local-logs", "container.log")}.get(driver, "")
            if driver == "local":
                os.makedirs(os.path.dirname(log_file), exist_ok=True)
            data = {
                "Id": cid, "Created": now(), "Path": args[0], "Args": args[1:], "Name": "/" + name,
                "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False,
                          "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                          "StartedAt": ZERO_TIME, "FinishedAt": ZERO_TIME},
                "Image": image.id, "Config": config, "HostConfig": host, "RestartCount": 0,
                "Driver": "overlay2", "Platform": "linux", "MountLabel": "", "ProcessLabel": "",
                "AppArmorProfile": "", "ExecIDs": None, "Mounts": mounts,
                "NetworkSettings": {"Bridge": "", "SandboxID": "", "Ports": {}, "IPAddress": "", "Gateway": "",
                                    "IPPrefixLen": 0, "MacAddress": "", "EndpointID": "", "Networks": networks},
                "LogPath": log_file if driver == "json-file" else "", "_log_file": log_file,
                "ResolvConfPath": os.path.join(path, "resolv.conf"),
                "HostnamePath": os.path.join(path, "hostname"), "HostsPath": os.path.join(path, "hosts"),
                "HasBeenManuallyStopped": False,
                "_lower": list(reversed(image.layer_dirs())),
            }
            c = Container(data, path)
            self._containers[cid] = c
            self._save(c)
        self._emit(c, "create")
        warnings = []
        if kind == "host" and (host.get("PortBindings") or host.get("PublishAllPorts")):
            warnings.append("Published ports are discarded when using host network mode")
        return {"Id": cid, "Warnings": warnings}

    def _planned_networks(self, kind: str, target: str, body: dict) -> dict[str, dict]:
        """NetworkSettings.Networks before start: the endpoints asked for (docker-compose reads them to decide
        what to connect), validated now so a missing network fails the create, as with Docker."""
        if kind == "container":
            return {}
        asked = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        primary = self.networks.inspect(target)
        out = {primary["Name"]: _planned_endpoint(primary["Id"], asked.get(target) or asked.get(primary["Name"])
                                                  or asked.get("default") or {})}
        mac = (body.get("MacAddress") or "") if kind != "host" else ""  # Config.MacAddress, API < 1.44
        if mac and not out[primary["Name"]]["MacAddress"]:
            out[primary["Name"]]["MacAddress"] = mac
        for key, cfg in asked.items():
            if key in (target, primary["Name"], "default"):
                continue
            net = self.networks.inspect(key)
            out[net["Name"]] = _planned_endpoint(net["Id"], cfg or {})
        return out

    def _link_children(self, specs: list[str], kind: str) -> list[tuple[str, str]]:
        """(container name, alias) of each ``--link``; like dockerd, the target must exist at create."""
        out = []
        for spec in specs:
            child, alias = links.parse_link(spec)
            try:
                other = self._get(child)
            except NotFound as exc:
                raise InvalidParameter(f"could not get container for {child}: {exc}") from None
            out.append((other.name, alias))
        return out if kind in ("bridge", "network") else []

    def _link_targets(self, c: Container, specs: list[str], net: str) -> list[tuple[str, list[str]]]:
        """(container id, names) for the network manager, for links to running containers only, and on the
        default bridge to containers on it (dockerd's words otherwise)."""
        out = []
        for spec in specs:
            child, alias = links.parse_link(spec)
            other = self._get(child)
            if not other.running:
                raise HostError(f"Cannot link to a non running container: {other.data['Name']} AS /{c.name}/{alias}")
            if net == "bridge" and "bridge" not in (other.data["NetworkSettings"].get("Networks") or {}):
                raise HostError(f"Cannot link to {other.data['Name']}, as it does not belong to the default network")
            out.append((other.id, links.names(alias, other.name, other.data["Config"].get("Hostname") or "")))
        return out

    def _link_env(self, c: Container) -> list[str]:
        """The legacy link variables of a container on the default bridge (moby's setupLinkedContainers). A target
        that is gone or stopped is skipped here: connecting the bridge endpoint refuses it, inside the start's
        cleanup path."""
        if "bridge" not in (c.data["NetworkSettings"].get("Networks") or {}):
            return []
        env: list[str] = []
        for spec in c.data["HostConfig"].get("Links") or []:
            child, alias = links.parse_link(spec)
            try:
                other = self._get(child)
            except NotFound:
                continue
            bridge = (other.data["NetworkSettings"].get("Networks") or {}).get("bridge")
            if not other.running or not bridge:
                continue
            env += links.environment(f"/{c.name}/{alias}", bridge.get("IPAddress") or "",
                                     other.data["Config"].get("Env") or [], other.data["Config"].get("ExposedPorts"))
        return env

    def remove_link(self, ref: str) -> None:
        """``DELETE /containers/{parent}/{alias}?link=true``: the link goes from the parent's HostConfig and hosts
        file (its environment stays as it started, as with Docker)."""
        name = "/" + ref.lstrip("/")
        parent_name, _, alias = name.rpartition("/")
        if not parent_name:
            self._get(ref)
            raise HostError("Conflict, cannot remove the default link name of the container")
        try:
            parent = self._get(parent_name)
        except NotFound:
            raise NotFound(f"No such container: {name}") from None
        kept = [spec for spec in parent.data["HostConfig"].get("Links") or [] if links.parse_link(spec)[1] != alias]
        if len(kept) == len(parent.data["HostConfig"].get("Links") or []):
            raise NotFound(f"No such container: {name}")
        with self._lock:
            parent.data["HostConfig"]["Links"] = kept or None
            self._save(parent)
        if parent.running:
            self.networks.unlink(parent.id, alias)

    def _unique_name(self) -> str:
        taken = {c.name for c in self._containers.values()}
        while True:
            name = random_name()
            if name not in taken:
                return name

    def _plan_mounts(self, cid: str, host: dict, config: dict) -> list[dict]:
        """Docker's Mounts list; named and anonymous volumes are created now, like moby does at create."""
        wanted = parse_binds(host.get("Binds") or []) + parse_mounts(host.get("Mounts") or [], host.get("Tmpfs"))
        targets = {m["Target"] for m in wanted}
        for target in (config.get("Volumes") or {}):
            if target not in targets:
                wanted.append({"Type": "volume", "Source": "", "Target": target, "ReadOnly": False})
        out = []
        for m in wanted:
            entry = {"Type": m["Type"], "Source": m["Source"], "Destination": m["Target"],
                     "Mode": "ro" if m["ReadOnly"] else "", "RW": not m["ReadOnly"], "Propagation": ""}
            if m["Type"] == "volume":
                anonymous = not m["Source"]
                vol = self.volumes.create({"Name": m["Source"]} if not anonymous else None, anonymous=anonymous)
                entry.update({"Name": vol["Name"], "Source": vol["Mountpoint"], "Driver": "local",
                              "_anonymous": anonymous, "_copy": not m.get("NoCopy")})
                entry["Propagation"] = ""
            elif m["Type"] == "bind":
                entry["Propagation"] = m.get("Propagation") or "rprivate"
                if m.get("FromBinds") and not os.path.exists(m["Source"]):
                    os.makedirs(m["Source"], exist_ok=True)  # -v creates a missing host directory, as Docker does
            else:
                entry["_options"] = m.get("Options") or ""
            out.append(entry)
        return out

    # --- start -------------------------------------------------------------------------------------------------

    def start(self, ref: str) -> None:
        c = self._get(ref)
        with c.lock:
            if c.running:
                raise NotModified("container already started")
            if c.removed:
                raise NotFound(f"No such container: {ref}")
            self._start(c)

    def _write_etc(self, c: Container, kind: str) -> None:
        cfg, host = c.data["Config"], c.data["HostConfig"]
        hostname = cfg.get("Hostname") or c.id[:12]
        if kind == "host":
            hostname = socket.gethostname()
        with open(c.file("hostname"), "w") as f:
            f.write(hostname + "\n")
        if kind == "host":
            shutil.copyfile("/etc/hosts", c.file("hosts"))
        elif not os.path.exists(c.file("hosts")) or kind != "container":
            with open(c.file("hosts"), "w") as f:
                f.write("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                        "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                        "ff02::2\tip6-allrouters\n")
        extra = host.get("ExtraHosts") or []
        if extra:
            with open(c.file("hosts"), "a") as f:
                for item in extra:
                    name, _, addr = item.partition(":")
                    f.write(f"{addr}\t{name}\n")
        lines = []
        if kind == "container":  # dockerd shares the other container's file: same namespace, same resolver
            shutil.copyfile(self._get(split_mode(host["NetworkMode"])[1]).file("resolv.conf"), c.file("resolv.conf"))
            return
        user_networks = [n for n in c.data["NetworkSettings"].get("Networks") or {} if n not in ("bridge", "none")]
        if kind == "network" or (kind == "bridge" and user_networks):
            self._write_internal_resolv_conf(c)
            return
        if host.get("Dns"):
            lines += [f"nameserver {d}" for d in host["Dns"]]
        else:
            try:
                with open("/etc/resolv.conf") as f:
                    base = [line.rstrip("\n") for line in f]
            except OSError:
                base = []
            lines += [line for line in base if line.startswith("nameserver")
                      and (kind == "host" or not line.split()[1].startswith("127."))]
            if not host.get("DnsSearch"):
                lines += [line for line in base if line.startswith(("search", "options"))]
        if host.get("DnsSearch"):
            lines.append("search " + " ".join(host["DnsSearch"]))
        if host.get("DnsOptions"):
            lines.append("options " + " ".join(host["DnsOptions"]))
        with open(c.file("resolv.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def _write_internal_resolv_conf(self, c: Container) -> None:
        """On user-defined networks, dockerd's embedded server answers at 127.0.0.11 (``--dns`` servers become its
        upstreams); the host's search domains and options stay, with ``ndots:0`` unless one was given."""
        host = c.data["HostConfig"]
        try:
            with open(self.networks.resolv_conf) as f:
                base = [line.split() for line in f]
        except OSError:
            base = []
        search = host.get("DnsSearch") or [word for words in base if words[:1] == ["search"] for word in words[1:]]
        options = host.get("DnsOptions") or [word for words in base if words[:1] == ["options"] for word in words[1:]]
        if not any(option.startswith("ndots:") for option in options):
            options = ["ndots:0"] + options
        lines = ["nameserver 127.0.0.11"] + (["search " + " ".join(search)] if search else [])
        with open(c.file("resolv.conf"), "w") as f:
            f.write("\n".join(lines + ["options " + " ".join(options)]) + "\n")

    def _spec(self, c: Container, network: str) -> dict:
        cfg, host = c.data["Config"], c.data["HostConfig"]
        caps: list[int] | None = None
        if not host.get("Privileged"):
            wanted = set(syscalls.DOCKER_DEFAULT_CAPS)
            if not cgroups.controls_devices():  # without a device allowlist, mknod would reach the host's disks
                wanted.discard("MKNOD")
            for cap in host.get("CapAdd") or []:
                wanted |= set(syscalls.CAPABILITIES) if cap.upper() in ("ALL", "CAP_ALL") else {
                    cap.upper().replace("CAP_", "", 1)}
            for cap in host.get("CapDrop") or []:
                wanted = set() if cap.upper() in ("ALL", "CAP_ALL") else wanted - {cap.upper().replace("CAP_", "", 1)}
            try:
                caps = sorted(syscalls.cap_number(cap) for cap in wanted)
            except ValueError as e:
                raise InvalidParameter(f"unknown capability: {e}") from None
        mounts = []
        for m in c.data.get("Mounts") or []:
            mounts.append({"type": m["Type"], "source": m["Source"], "target": m["Destination"],
                           "readonly": not m["RW"], "options": m.get("_options", ""),
                           "propagation": m.get("Propagation") or "",
                           "copy_up": m.get("_copy", False)})
        size = host.get("ConsoleSize") or [0, 0]
        log_max_size, log_max_file = rotation(host["LogConfig"])
        sock = os.path.join(self.exec_root, c.id[:16] + ".sock")
        return {
            "id": c.id, "rootfs": c.file("rootfs"), "upper": c.file("upper"), "work": c.file("work"),
            "lower": c.data["_lower"] or [self._empty_layer()], "hostname": open(c.file("hostname")).read().strip(),
            "network": network, "args": [c.data["Path"]] + c.data["Args"], "env": cfg.get("Env") or [],
            "cwd": cfg.get("WorkingDir") or "/", "user": cfg.get("User") or "", "tty": bool(cfg.get("Tty")),
            "open_stdin": bool(cfg.get("OpenStdin")), "stdin_once": bool(cfg.get("StdinOnce")),
            "etc": {"hosts": c.file("hosts"), "hostname": c.file("hostname"), "resolv.conf": c.file("resolv.conf")},
            "mounts": mounts, "caps": caps, "privileged": bool(host.get("Privileged")), "devices": devices_of(host),
            "seccomp": not host.get("Privileged") and not any(
                opt.replace(":", "=") == "seccomp=unconfined" for opt in host.get("SecurityOpt") or []),
            "init": bool(host.get("Init")), "cgroup": "machines/" + c.id, "log_path": _log_file(c) or os.devnull,
            "socket": sock, "exit_path": c.file("exit.json"), "console": list(size) if any(size) else None,
            "readonly_rootfs": bool(host.get("ReadonlyRootfs")), "start_id": secrets.token_hex(8),
            "log_max_size": log_max_size, "log_max_file": log_max_file,
            "shm_size": int(host.get("ShmSize") or 67108864), "sysctls": host.get("Sysctls") or {},
            "ulimits": ulimits_of(host.get("Ulimits") or []), "group_add": host.get("GroupAdd") or [],
            "pid_host": host.get("PidMode") == "host", "ipc_host": host.get("IpcMode") == "host",
            "uts_host": host.get("UTSMode") == "host",
        }

    def _empty_layer(self) -> str:
        path = os.path.join(self.data_root, "empty-layer")
        os.makedirs(path, exist_ok=True)
        return path

    def _start(self, c: Container) -> None:
        host = c.data["HostConfig"]
        kind, target = split_mode(host["NetworkMode"])
        netns_fd = None
        if kind == "container":
            other = self._get(target)
            if not other.running:
                raise Conflict(f"cannot join network of a non running container: {other.id}")
            netns_fd = os.open(f'/proc/{other.state["Pid"]}/ns/net', os.O_RDONLY)
        network = {"host": "host", "container": "join"}.get(kind, "new")
        try:
            cg = cgroups.open_cgroup("machines/" + c.id)
            cg.remove()
            cg.create(dict(host, DeviceRules=[f"{d['type']} {d['major']}:{d['minor']} {d['perms']}"
                                              for d in devices_of(host)]))
        except OSError as e:
            raise HostError(f"failed to set up the container's cgroup: {e}") from None
        self._write_etc(c, kind)
        for m in c.data.get("Mounts") or []:
            if m["Type"] == "bind" and not os.path.exists(m["Source"]):
                raise InvalidParameter("invalid mount config for type \"bind\": bind source path does not exist: "
                                       "{}".format(m["Source"]))
            problem = m["Type"] == "bind" and propagation_problem(m["Source"], m.get("Propagation") or "")
            if problem:
                raise HostError(problem)
        spec = self._spec(c, network)
        if kind == "bridge":
            c.data["_link_env"] = self._link_env(c)
            spec["env"] = merge_env(c.data["_link_env"], spec["env"])
        try:
            os.unlink(spec["exit_path"])
        except FileNotFoundError:
            pass
        launch = Launch(spec, netns_fd, self.launcher)
        if netns_fd is not None:
            os.close(netns_fd)
        monitor = None
        try:
            if launch.error:
                raise start_error(launch.error)
            self._connect_networks(c, kind, launch.child)
            monitor = connect(spec["socket"], {"monitor": True}, timeout=5)
            with self._lock:
                pending, c.pending = c.pending, []
            for session in pending:
                session.connect(spec["socket"])
            error = launch.go()
            if error:
                raise start_error(error)
        except BaseException as e:
            launch.abort()
            if monitor is not None:
                monitor.close()
            self._release_network(c)
            message = str(e)
            with self._lock:
                st = c.state
                st.update({"Status": "created" if st["StartedAt"] == ZERO_TIME else "exited", "Error": message,
                           "ExitCode": start_exit_code(message) if isinstance(e, InvalidParameter) else 128,
                           "Running": False, "Pid": 0})
                self._save(c)
                pending, c.pending = c.pending, []
                c.exit_seq += 1  # a waiter for the next exit must not hang on a start that never happened
                self._cond.notify_all()
            for session in pending:
                session.abandon()
            if c.data["HostConfig"].get("AutoRemove"):
                self.remove(c.id, force=True, volumes=True)
            if isinstance(e, EngineError):
                raise
            raise HostError(f"failed to start container: {message}") from None
        with self._lock:
            c.state.update({"Status": "running", "Running": True, "Paused": False, "Restarting": False,
                            "OOMKilled": False, "Dead": False, "Pid": launch.child, "ExitCode": 0, "Error": "",
                            "StartedAt": now()})
            c.data["_start_id"] = spec["start_id"]
            c.data["_socket"] = spec["socket"]
            c.data["_shim_pid"] = launch.shim_pid
            c.data["HasBeenManuallyStopped"] = False
            c.exit_on_next = False
            self._save(c)
        self._emit(c, "start")
        self.health.init(c)
        self.monitor.follow(c, monitor, spec["start_id"])

    def _connect_networks(self, c: Container, kind: str, pid: int) -> None:
        """Plugs the started container into every network in NetworkSettings.Networks, then publishes ports on
        the first one's address. ``none`` and ``host`` need nothing (the child raised lo itself)."""
        settings = c.data["NetworkSettings"]
        settings["Ports"] = {}
        if kind in ("container", "none", "host"):
            return
        cfg, host = c.data["Config"], c.data["HostConfig"]
        connected: dict[str, dict] = {}
        for name, planned in (settings.get("Networks") or {}).items():
            connected[name] = self._connect_one(c, name, planned, pid)
        settings["Networks"] = connected
        address = next((e["IPAddress"] for e in connected.values() if e.get("IPAddress")), "")
        if address:
            settings["Ports"] = self.networks.publish(c.id, address, host.get("PortBindings") or {},
                                                      list((cfg.get("ExposedPorts") or {}).keys()),
                                                      bool(host.get("PublishAllPorts")))
        bridge = connected.get("bridge")
        if bridge:
            for key in ("IPAddress", "Gateway", "IPPrefixLen", "MacAddress", "EndpointID"):
                settings[key] = bridge.get(key, settings.get(key))

    def _connect_one(self, c: Container, net: str, planned: dict, pid: int) -> dict:
        """One network's endpoint, with what NetworkingConfig asked: aliases, addresses, MAC, links (the legacy
        HostConfig.Links count on the default bridge and on a primary network that has none of its own)."""
        host = c.data["HostConfig"]
        addresses = planned.get("IPAMConfig") or {}
        specs = planned.get("Links") or []
        if not specs and net in ("bridge", split_mode(host["NetworkMode"])[1]):
            specs = host.get("Links") or []
        endpoint = self.networks.connect(net, c.id, pid, name=c.name, aliases=planned.get("Aliases") or [],
                                         ipv4=addresses.get("IPv4Address") or None,
                                         ipv6=addresses.get("IPv6Address") or None,
                                         mac=planned.get("MacAddress") or None, links=self._link_targets(c, specs, net),
                                         dns=host.get("Dns") or None, hosts_path=c.file("hosts"),
                                         hostname=c.data["Config"].get("Hostname"))
        endpoint["IPAMConfig"] = planned.get("IPAMConfig")
        endpoint["Links"] = planned.get("Links")
        return endpoint

    def _release_network(self, c: Container) -> None:
        kind, _ = split_mode(c.data["HostConfig"]["NetworkMode"])
        if kind in ("bridge", "network"):  # none, host and container: modes never register with the manager
            try:
                self.networks.release(c.id)
            except Exception:  # noqa: BLE001 - the container is gone either way; a stale veth must not block stop/remove
                pass
        settings = c.data["NetworkSettings"]
        settings["Ports"] = {}
        settings.update({"IPAddress": "", "Gateway": "", "MacAddress": "", "IPPrefixLen": 0, "EndpointID": ""})
        for endpoint in (settings.get("Networks") or {}).values():
            endpoint.update({"IPAddress": "", "Gateway": "", "IPPrefixLen": 0, "MacAddress": "", "EndpointID": ""})

    # --- restore ------------------------------------------------------------------------------------------------

    def _restore(self) -> None:
        """Reloads every container; reconnects to live shims, closes the books on dead ones, applies policies."""
        running: dict[str, int] = {}
        to_start: list[Container] = []
        for cid in sorted(os.listdir(self.containers_root)):
            path = os.path.join(self.containers_root, cid)
            try:
                with open(os.path.join(path, "config.v2.json")) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            c = Container(data, path)
            self._containers[cid] = c
            st = c.state
            if st["Running"] or st.get("Restarting"):
                # The exit record first: a shim that wrote it still listens until it has told its clients, and
                # a connection made then would leave the container "running" until the watcher caught up.
                record = self.monitor.read_exit(c, data.get("_start_id", ""))
                sock = None
                if st["Running"] and record is None:
                    try:
                        sock = connect(data["_socket"], {"monitor": True}, timeout=2)
                    except OSError:
                        sock = None
                if sock is not None:
                    running[cid] = st["Pid"]
                    self.monitor.follow(c, sock, data["_start_id"])
                    self.health.init(c)
                    continue
                record = record or self.monitor.read_exit(c, data.get("_start_id", "")) or {
                    "ExitCode": st.get("ExitCode") or 255, "OOMKilled": False, "FinishedAt": now()}
                st.update({"Status": "exited", "Running": False, "Paused": False, "Restarting": False, "Pid": 0,
                           "ExitCode": int(record["ExitCode"]), "OOMKilled": bool(record.get("OOMKilled")),
                           "FinishedAt": record["FinishedAt"]})
                self._save(c)
            policy = c.data["HostConfig"]["RestartPolicy"].get("Name")
            manual = c.data.get("HasBeenManuallyStopped")
            if st["Status"] == "exited" and (policy == "always" or (not manual and self.monitor.should_restart(
                    c, st["ExitCode"]))):
                to_start.append(c)
            elif st["Status"] == "exited" and c.data["HostConfig"].get("AutoRemove"):
                to_start.append(c)
        try:
            self.networks.restore(running)
        except EngineError:
            pass
        for c in to_start:
            if c.data["HostConfig"].get("AutoRemove"):
                self.remove(c.id, force=True, volumes=True)
                continue
            try:
                with c.lock:
                    self._start(c)
            except EngineError as e:
                c.state["Error"] = str(e)
                self._save(c)

    def close(self) -> None:
        """Stops background work; containers and their shims keep running."""
        self.table.closed = True
        self.health.close()
        self.bus.close()
        for thread in list(self._discards):
            thread.join(10)
        try:
            self.networks.close()
        except Exception:  # noqa: BLE001 - closing is best effort
            pass
        self.launcher.close()

    # --- stop, kill, restart, pause ----------------------------------------------------------------------------

    def _signal(self, c: Container, sig: int) -> None:
        try:
            os.kill(c.state["Pid"], sig)
        except ProcessLookupError:
            pass
        if sig == signals.SIGKILL and c.state.get("Paused"):
            self._thaw(c)

    def _thaw(self, c: Container) -> None:
        try:
            cgroups.open_cgroup("machines/" + c.id).set_frozen(False)
        except OSError:
            pass
        c.state["Paused"] = False

    def _wait_exit(self, c: Container, seq: int, timeout: float | None) -> bool:
        """Waits for the exit after ``seq``. The watcher reports it; every few seconds the shim's exit record is
        read too, so an exit that happened is never waited for forever, even if its report got lost."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if c.exit_seq != seq or not c.running:
                    return True
                remaining = EXIT_RECHECK if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, EXIT_RECHECK))
                if c.exit_seq != seq or not c.running:
                    return True
                start_id = c.data.get("_start_id", "")
            record = self.monitor.read_exit(c, start_id)
            if record is not None:
                self.monitor.exited(c, start_id, record)

    def stop(self, ref: str, timeout: int | None = None, signal: str | None = None) -> None:
        c = self._get(ref)
        with c.lock:
            c.exit_on_next = True
            if c.state.get("Restarting"):
                with self._lock:
                    c.data["HasBeenManuallyStopped"] = True
                    c.state.update({"Restarting": False, "Status": "exited"})
                    self._save(c)
                    self._cond.notify_all()
                return
            if not c.running:
                raise NotModified("container already stopped")
            cfg = c.data["Config"]
            sig = parse_signal(signal or cfg.get("StopSignal"))
            if timeout is None:
                timeout = cfg.get("StopTimeout") if cfg.get("StopTimeout") is not None else 10
            with self._lock:
                c.data["HasBeenManuallyStopped"] = True
                self._save(c)
                seq = c.exit_seq
            if c.state.get("Paused") and sig != signals.SIGKILL:
                self._signal(c, sig)
                self._thaw(c)
            else:
                self._signal(c, sig)
            if timeout < 0 or not self._wait_exit(c, seq, timeout):
                self._signal(c, signals.SIGKILL)
                self._wait_exit(c, seq, None)
        self._emit(c, "stop")

    def kill(self, ref: str, signal: str = "SIGKILL") -> None:
        c = self._get(ref)
        sig = parse_signal(signal or "SIGKILL", signals.SIGKILL)
        with c.lock:
            if not c.running:
                raise Conflict(f"Container {c.id} is not running")
            with self._lock:
                seq = c.exit_seq
                c.data["HasBeenManuallyStopped"] = True
                self._save(c)
                if sig in (signals.SIGKILL, parse_signal(c.data["Config"].get("StopSignal"))):
                    c.exit_on_next = True
            self._signal(c, sig)
            self._emit(c, "kill", signal=str(sig))
            if sig == signals.SIGKILL:
                self._wait_exit(c, seq, 10)

    def restart(self, ref: str, timeout: int | None = None) -> None:
        c = self._get(ref)
        with c.lock:
            if c.running:
                self.stop(c.id, timeout=timeout)
            self._start(c)
        self._emit(c, "restart")

    def pause(self, ref: str) -> None:
        c = self._get(ref)
        with c.lock:
            if not c.running:
                raise Conflict(f"Container {c.id} is not running")
            if c.state["Paused"]:
                raise Conflict(f"Container {c.id} is already paused")
            try:
                cgroups.open_cgroup("machines/" + c.id).set_frozen(True)
            except OSError as e:
                raise HostError(f"cannot pause container {c.id}: {e}") from None
            with self._lock:
                c.state.update({"Paused": True, "Status": "paused"})
                self._save(c)
            self.health.update(c)
        self._emit(c, "pause")

    def unpause(self, ref: str) -> None:
        c = self._get(ref)
        with c.lock:
            if not c.state["Paused"]:
                raise Conflict(f"Container {c.id} is not paused")
            self._thaw(c)
            with self._lock:
                c.state.update({"Paused": False, "Status": "running" if c.running else c.state["Status"]})
                self._save(c)
            self.health.update(c)
        self._emit(c, "unpause")

    def update_container(self, ref: str, body: dict) -> dict:
        """``docker update``: checked (400), merged (409 on conflicts), saved, then applied to the running
        container's cgroup; a limit the kernel refuses puts the old configuration back (moby's update.go)."""
        body = dict(body or {})
        warnings = update.verify_resources(body, update=True)
        if (body.get("RestartPolicy") or {}).get("Name"):
            check_restart_policy(body["RestartPolicy"])
        c = self._get(ref)
        with c.lock:
            with self._lock:
                before = c.data["HostConfig"]
                merged = json.loads(json.dumps(before))
                try:
                    update.merge(merged, body)
                except EngineError as e:
                    raise type(e)(f"Cannot update container {c.id}: {e}") from None
                c.data["HostConfig"] = merged
                self._save(c)
                live = c.running and not c.state.get("Restarting")
            if live:
                try:
                    cgroups.open_cgroup("machines/" + c.id).apply(merged)
                except OSError as e:
                    with self._lock:
                        c.data["HostConfig"] = before
                        self._save(c)
                    try:
                        cgroups.open_cgroup("machines/" + c.id).apply(before)
                    except OSError:
                        pass  # what could be put back was; the saved configuration is the old one
                    raise HostError(f"Cannot update container {c.id}: {e}") from None
        self._emit(c, "update")
        return {"Warnings": warnings}

    def rename(self, ref: str, new_name: str) -> None:
        c = self._get(ref)
        new_name = check_name(new_name)
        with self._lock:
            if new_name == c.name:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            for other in self._containers.values():
                if other.name == new_name:
                    raise Conflict(f'Conflict. The container name "/{new_name}" is already in use by container "{other.id}". You '
                                   'have to remove (or rename) that container to be able to reuse that name.')
            old = c.name
            c.data["Name"] = "/" + new_name
            self._save(c)
        self._emit(c, "rename", oldName="/" + old)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        c = self._get(ref)
        with c.lock:
            if c.removed:
                return
            if c.running and not force:
                raise Conflict(f"You cannot remove a running container {c.id}. Stop the container before attempting "
                               "removal or force remove")
            c.exit_on_next = True
            self.health.stop(c)
            if c.running:
                with self._lock:
                    c.data["HasBeenManuallyStopped"] = True
                    seq = c.exit_seq
                self._signal(c, signals.SIGKILL)
                self._wait_exit(c, seq, 10)
            with self._lock:
                c.data["HasBeenManuallyStopped"] = True
                c.state["Restarting"] = False
            self._release_network(c)
            for session in c.pending:
                session.abandon()
            with self._lock:
                c.removed = True
                self._containers.pop(c.id, None)
            self.execs.forget_container(c.id)
            archive.unmount_quietly(c.file("rootfs"))
            trash = os.path.join(self._trash, c.id)
            os.rename(c.dir, trash)
            if volumes:
                for m in c.data.get("Mounts") or []:
                    if m.get("_anonymous"):
                        try:
                            self.volumes.remove(m["Name"])
                        except EngineError:
                            pass
            with self._lock:
                self._cond.notify_all()
            self._discard(c.id, trash)  # after the waiters' wake-up: `docker run --rm` need not wait for it
        self._emit(c, "destroy")

    def _discard(self, cid: str, trash: str) -> None:
        """Deleting a cgroup (busy until the last task is reaped) and the layer dirs is slow: do it behind.
        The folder goes last, so a daemon killed meanwhile finds it in trash/ and finishes the job."""
        group = cgroups.open_cgroup("machines/" + cid)
        emptied = group.try_remove()  # usually works at once, so a daemon killed next leaves no cgroup behind

        def work() -> None:
            if not emptied:
                try:
                    group.remove()
                except OSError:
                    pass
            shutil.rmtree(trash, ignore_errors=True)
        thread = threading.Thread(target=work, name="discard-" + cid[:12], daemon=True)
        self._discards = [t for t in self._discards if t.is_alive()] + [thread]
        thread.start()

    def prune_containers(self, filters: Args | None = None) -> dict:
        """Stopped containers, narrowed by ``label``/``label!`` and ``until`` as moby's."""
        args = Args.of(filters).validate(PRUNE_LABELS)
        until = args.until()
        deleted, reclaimed = [], 0
        with self._lock:
            candidates = [c for c in self._containers.values() if not c.running and not c.state.get("Restarting")]
        for c in candidates:
            if not args.match_labels(c.data["Config"].get("Labels") or {}):
                continue
            if until is not None and parse_time(c.data["Created"]) > until:
                continue
            reclaimed += archive.tree_size(c.file("upper"))
            try:
                self.remove(c.id)
            except EngineError:
                continue
            deleted.append(c.id)
        return {"ContainersDeleted": deleted, "SpaceReclaimed": reclaimed}

    # --- wait, inspect, list -----------------------------------------------------------------------------------

    def wait(self, ref: str, condition: str = "not-running") -> dict:
        return self.waiter(ref, condition)()

    def waiter(self, ref: str, condition: str = "not-running") -> Callable[[], dict]:
        """What ``wait`` waits for, fixed now: the exit after this call for ``next-exit`` (moby registers the
        waiter before it answers the headers, so a start the client sends after them cannot be missed); the
        returned function blocks until then and gives Docker's wait response."""
        c = self._get(ref)
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter(f"invalid condition: {condition!r}")
        with self._lock:
            seq = c.exit_seq
            done = condition == "not-running" and not c.running and not c.state.get("Restarting")

        def block() -> dict:
            with self._lock:
                if condition == "removed":
                    while not c.removed:
                        self._cond.wait()
                elif not done:
                    while c.exit_seq == seq and not c.removed:
                        self._cond.wait()
                error = c.state.get("Error") or None
                return {"StatusCode": c.state["ExitCode"], "Error": {"Message": error} if error else None}

        return block

    def inspect_container(self, ref: str, size: bool = False) -> dict:
        c = self._get(ref)
        with self._lock:
            out = json.loads(json.dumps({k: v for k, v in c.data.items() if not k.startswith("_")}))
        out["Mounts"] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in out.get("Mounts") or []]
        out["ExecIDs"] = self.execs.ids_of(c.id) or None
        out["GraphDriver"] = {"Name": "overlay2", "Data": {
            "LowerDir": ":".join(c.data["_lower"]), "UpperDir": c.file("upper"), "WorkDir": c.file("work"),
            "MergedDir": c.file("rootfs")}}
        out.pop("HasBeenManuallyStopped", None)
        if size:
            out["SizeRw"] = archive.tree_size(c.file("upper"))
            out["SizeRootFs"] = out["SizeRw"]
        return out

    def list_containers(self, all: bool = False, filters: Args | None = None, limit: int | None = -1,
                        size: bool = False) -> list[dict]:
        args = Args.of(filters).validate(LIST_FILTERS)
        for value in args.get("health"):
            if value not in health.HEALTH_VALUES:
                raise InvalidParameter(f"Unrecognised filter value for health: {value}")
        for value in args.get("status"):
            if value not in STATES:
                raise InvalidParameter(f"Unrecognised filter value for status: {value}")
        published, exposed = args.ports("publish"), args.ports("expose")
        with self._lock:
            items = sorted(self._containers.values(), key=lambda c: c.data["Created"], reverse=True)
            before = [self._get(ref).data["Created"] for ref in args.get("before")]
            since = [self._get(ref).data["Created"] for ref in args.get("since")]
            out = []
            for c in items:
                if not all and not c.running and not args.contains("status"):
                    continue
                if not self._matches(c, args):
                    continue
                if published and not published & set(c.data["HostConfig"].get("PortBindings") or {}):
                    continue
                if exposed and not exposed & set(c.data["Config"].get("ExposedPorts") or {}):
                    continue
                if any(c.data["Created"] >= b for b in before) or any(c.data["Created"] <= s for s in since):
                    continue
                out.append(self._summary(c, size))
        return out[:limit] if limit is not None and limit > 0 else out

    def _matches(self, c: Container, args: Args) -> bool:
        if not args:
            return True
        st = c.state
        checks = {
            "status": lambda v: v == st["Status"],
            "exited": lambda v: not c.running and st["Status"] == "exited" and str(st["ExitCode"]) == v,
            "ancestor": lambda v: v in (c.data["Config"].get("Image"), c.data["Image"])
            or c.data["Image"].startswith("sha256:" + v),
            "volume": lambda v: any(v in (m.get("Name"), m.get("Destination")) for m in c.data.get("Mounts") or []),
            "network": lambda v: v in (c.data["NetworkSettings"].get("Networks") or {}),
            "health": lambda v: v == health.filter_value(st),
        }
        if not args.match("id", c.id):  # regular expressions, as moby's
            return False
        if not (args.match("name", "/" + c.name) or args.match("name", c.name)):
            return False
        for key, test in checks.items():
            wanted = args.get(key)
            if wanted and not any(test(v) for v in wanted):
                return False
        if args.contains("is-task") and args.get_bool("is-task", False):
            return False  # no swarm here: no container is a task
        return args.match_kv_list("label", c.data["Config"].get("Labels") or {})

    def _summary(self, c: Container, size: bool) -> dict:
        cfg, host = c.data["Config"], c.data["HostConfig"]
        args = [c.data["Path"]] + c.data["Args"]
        out = {
            "Id": c.id, "Names": ["/" + c.name], "Image": cfg.get("Image"), "ImageID": c.data["Image"],
            "Command": " ".join(args), "Created": int(parse_time(c.data["Created"])),
            "Ports": summary_ports(c.data["NetworkSettings"].get("Ports") or {}),
            "Labels": cfg.get("Labels") or {}, "State": c.state["Status"], "Status": human_status(c.state),
            "HostConfig": {"NetworkMode": host.get("NetworkMode")},
            "NetworkSettings": {"Networks": c.data["NetworkSettings"].get("Networks") or {}},
            "Mounts": [{k: v for k, v in m.items() if not k.startswith("_")} for m in c.data.get("Mounts") or []],
        }
        if size:
            out["SizeRw"] = archive.tree_size(c.file("upper"))
            out["SizeRootFs"] = out["SizeRw"]
        return out

    # --- logs, attach, resize ----------------------------------------------------------------------------------

    def logs(self, ref: str, *, follow: bool = False, stdout: bool = True, stderr: bool = True, since: float = 0,
             until: float = 0, timestamps: bool = False, tail: str = "all") -> Iterator[tuple[int, bytes]]:
        c = self._get(ref)
        if not (stdout or stderr):
            raise InvalidParameter("You must choose at least one stream")
        if not _log_file(c):
            raise NotSupported("configured logging driver does not support reading")
        start_id = c.data.get("_start_id")

        def running() -> bool:
            return c.running and not c.removed and c.data.get("_start_id") == start_id

        def on_stop(wake: Callable[[], None]) -> Callable[[], None]:
            def heard(event: dict) -> None:
                if event["Actor"]["ID"] == c.id and event["Action"] in ("die", "destroy"):
                    wake()

            return self.bus.listen(heard)

        return read_logs(_log_file(c), follow=follow, stdout=stdout, stderr=stderr, since=float(since or 0),
                         until=float(until or 0), timestamps=timestamps, tail=str(tail), running=running,
                         on_stop=on_stop)

    def attach(self, ref: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True, logs: bool = False,
               stream: bool = True) -> Session:
        c = self._get(ref)
        backlog: list[tuple[int, bytes]] = []
        if logs:
            backlog = list(self.logs(c.id, follow=False, stdout=stdout, stderr=stderr))
        opts = {"stdin": stdin, "stdout": stdout, "stderr": stderr}

        def forget(session: AttachSession) -> None:
            with self._lock:
                if session in c.pending:
                    c.pending.remove(session)

        session = AttachSession(bool(c.data["Config"].get("Tty")), opts, backlog, stream, forget)
        if not stream:
            return session
        with self._lock:
            if not c.running:
                c.pending.append(session)
                return session
            path = c.data["_socket"]
        session.connect(path)
        return session

    def resize(self, ref: str, h: int, w: int) -> None:
        c = self._get(ref)
        if not c.running:
            raise Conflict(f"Container {c.id} is not running")
        if not c.data["Config"].get("Tty"):
            return
        try:
            connect(c.data["_socket"], {"resize": [int(h), int(w)]}, timeout=2).close()
        except OSError as e:
            raise HostError(f"cannot resize the container's terminal: {e}") from None

    # --- exec ----------------------------------------------------------------------------------------------------

    def exec_create(self, ref: str, body: dict) -> str:
        return self.execs.create(ref, body)

    def exec_inspect(self, exec_id: str) -> dict:
        return self.execs.inspect(exec_id)

    def exec_start(self, exec_id: str, *, detach: bool = False, tty: bool = False) -> Session | None:
        return self.execs.start(exec_id, detach=detach, tty=tty)

    def exec_resize(self, exec_id: str, h: int, w: int) -> None:
        self.execs.resize(exec_id, h, w)

    # --- top, stats --------------------------------------------------------------------------------------------

    def _cgroup_pids(self, c: Container) -> list[int]:
        return cgroups.open_cgroup("machines/" + c.id).procs()

    def top(self, ref: str, ps_args: str | None = None) -> dict:
        c = self._get(ref)
        if not c.running:
            raise Conflict(f"Container {c.id} is not running")
        pids = set(self._cgroup_pids(c))
        args = (ps_args or "-ef").split()
        try:
            out = subprocess.run(["ps"] + args, capture_output=True, text=True, check=True, timeout=10).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise HostError(f"Error running ps: {e}") from None
        lines = out.splitlines()
        titles = lines[0].split()
        try:
            col = titles.index("PID")
        except ValueError:
            raise InvalidParameter("Couldn't find PID field in ps output") from None
        processes = []
        for line in lines[1:]:
            fields = line.split(None, len(titles) - 1)
            if len(fields) > col and fields[col].isdigit() and int(fields[col]) in pids:
                processes.append(fields)
        return {"Titles": titles, "Processes": processes}

    def stats(self, ref: str) -> dict:
        c = self._get(ref)
        read = now()
        if not c.running:
            empty = {"read": ZERO_TIME, "preread": ZERO_TIME, "id": c.id, "name": "/" + c.name,
                     "pids_stats": {}, "cpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                     "precpu_stats": {"cpu_usage": {"total_usage": 0}, "throttling_data": {}},
                     "memory_stats": {}, "blkio_stats": {}, "num_procs": 0, "storage_stats": {}}
            return empty
        raw = cgroups.open_cgroup("machines/" + c.id).stats()
        limit = raw["mem_limit"]
        host_mem = host_memory()
        if limit is None or limit > host_mem:
            limit = host_mem
        cpu = {"cpu_usage": {"total_usage": raw["cpu_total"], "usage_in_kernelmode": raw["cpu_system"],
                             "usage_in_usermode": raw["cpu_user"]},
               "system_cpu_usage": system_cpu_ns(), "online_cpus": os.cpu_count() or 1,
               "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
        prev = c.prev_stats or {"read": ZERO_TIME, "cpu_stats": {"cpu_usage": {"total_usage": 0},
                                                                  "throttling_data": {}}}
        sample = {
            "read": read, "preread": prev["read"], "id": c.id, "name": "/" + c.name, "num_procs": 0,
            "pids_stats": {"current": raw["pids_current"], **({"limit": raw["pids_limit"]}
                                                               if raw["pids_limit"] else {})},
            "cpu_stats": cpu, "precpu_stats": prev["cpu_stats"],
            "memory_stats": {"usage": raw["mem_usage"], "limit": limit, "stats": raw["mem_stats"]},
            "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None},
            "storage_stats": {}, "networks": net_stats(c.state["Pid"]),
        }
        c.prev_stats = {"read": read, "cpu_stats": cpu}
        return sample

    # --- files -------------------------------------------------------------------------------------------------

    def archive_head(self, ref: str, path: str) -> dict:
        return archive.head(self._get(ref), path)

    def archive_get(self, ref: str, path: str) -> tuple[Iterator[bytes], dict]:
        return archive.get(self._get(ref), path)

    def archive_put(self, ref: str, path: str, fileobj: Any, no_overwrite_dir_non_dir: bool = False) -> None:
        archive.put(self._get(ref), path, fileobj, no_overwrite_dir_non_dir)

    def export(self, ref: str) -> Iterator[bytes]:
        return archive.export(self._get(ref))

    # --- networks and events -----------------------------------------------------------------------------------

    def network_connect(self, net_ref: str, ref: str, config: dict | None = None) -> None:
        """Connects now when running; otherwise records the endpoint for the next start, as Docker does."""
        c = self._get(ref)
        net = self.networks.inspect(net_ref)
        planned = _planned_endpoint(net["Id"], config or {})
        with c.lock:
            networks = c.data["NetworkSettings"].setdefault("Networks", {})
            if not c.running:
                if net["Name"] in networks:
                    raise Conflict(f"endpoint with name {c.name} already exists in network {net['Name']}")
                endpoint = planned
            else:
                endpoint = self._connect_one(c, net_ref, planned, c.state["Pid"])
                if net["Name"] not in ("bridge", "host", "none"):
                    self._write_internal_resolv_conf(c)  # as dockerd: the embedded server takes over at once
            with self._lock:
                networks[net["Name"]] = endpoint
                self._save(c)

    def network_disconnect(self, net_ref: str, ref: str, force: bool = False) -> None:
        c = self._get(ref)
        with c.lock:
            net = self.networks.inspect(net_ref)
            if c.running:
                self.networks.disconnect(net_ref, c.id)
            elif net["Name"] not in (c.data["NetworkSettings"].get("Networks") or {}) and not force:
                raise NotFound(f"container {c.id} is not connected to network {net['Name']}")
            with self._lock:
                (c.data["NetworkSettings"].get("Networks") or {}).pop(net["Name"], None)
                self._save(c)

    def events(self, since: float | None = None, until: float | None = None,
               filters: Args | None = None) -> Iterator[dict]:
        return self.bus.stream(since=since, until=until, filters=filters)


def _log_file(c: Container) -> str:
    """Where the container's log driver keeps its lines; empty for ``none`` (containers made before drivers
    other than json-file existed have only LogPath)."""
    return c.data.get("_log_file", c.data["LogPath"])


def _planned_endpoint(network_id: str, cfg: dict) -> dict:
    """EndpointSettings before the container runs: what was asked (aliases, address), no address yet."""
    return {"IPAMConfig": cfg.get("IPAMConfig"), "Links": cfg.get("Links"), "Aliases": cfg.get("Aliases"),
            "MacAddress": cfg.get("MacAddress") or "", "NetworkID": network_id, "EndpointID": "", "Gateway": "", "IPAddress": "",
            "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": None}


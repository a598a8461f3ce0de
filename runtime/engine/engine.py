"""The container engine: Docker-shaped operations over namespaces, cgroups, overlayfs and per-container shims.

State lives on disk (``<data-root>/containers/<id>/config.v2.json``, the shim's ``exit.json``) so a daemon killed
with SIGKILL reloads everything, reconnects to live shims, and marks the dead with the code their shim recorded.
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
from typing import Any, Dict, Iterator, List, Optional, Tuple

from runtime import timefmt
from runtime.engine import archive
from runtime.engine.config import (ZERO_TIME, check_name, command_of, create_warnings, devices_of, host_config_defaults,
                                   log_size, merge_config, merge_env, parse_binds, parse_mounts, parse_signal,
                                   random_name, split_mode, ulimits_of, validate_network_mode)
from runtime.engine.events import EventBus
from runtime.engine.logs import read_logs
from runtime.engine.sessions import AttachSession, ExecSession, Session
from runtime.engine.shim import EXIT, close_fds, connect, recv_frame, shim_main, write_json
from runtime.engine.status import host_memory, human_status, net_stats, summary_ports, system_cpu_ns
from runtime.engine.volumes import VolumeStore
from runtime.errors import Conflict, EngineError, HostError, InvalidParameter, NotFound, NotModified
from runtime.filters import PRUNE_LABELS, Args
from runtime.linux import cgroups, syscalls
from runtime.linux.paths import private_dir
from runtime.linux.process import enter_child, receive_console

RESTART_BACKOFF_MAX = 1.0
LIST_FILTERS = ("ancestor", "before", "exited", "id", "is-task", "label", "name", "network", "since", "status",
                "volume")  # moby's, less health, publish and expose (refused rather than ignored)


def _now() -> str:
    return timefmt.rfc3339_nano()


class Container:
    """In-memory handle: ``data`` is what is persisted (inspect shape plus private ``_`` keys)."""

    def __init__(self, data: dict, path: str) -> None:
        self.data = data
        self.dir = path
        self.lock = threading.RLock()
        self.exit_seq = 0
        self.removed = False
        self.pending: List[AttachSession] = []
        self.backoff = 0.0
        self.exit_on_next = False  # stop, kill with SIGKILL or the stop signal, rm -f: no restart policy
        self.prev_stats: Optional[dict] = None

    @property
    def id(self) -> str:
        return self.data["Id"]

    @property
    def name(self) -> str:
        return self.data["Name"].lstrip("/")

    @property
    def state(self) -> dict:
        return self.data["State"]

    @property
    def running(self) -> bool:
        return bool(self.state["Running"])

    def file(self, name: str) -> str:
        return os.path.join(self.dir, name)


class Launch:
    """Daemon side of one start: forks the shim and follows the child's report pipe (``pid:``, ``ns:``, ``err:``)."""

    def __init__(self, spec: dict, netns_fd: Optional[int], fork_lock: threading.Lock) -> None:
        report_r, report_w = os.pipe()
        go_r, self.go_fd = os.pipe()
        with fork_lock:
            pid = os.fork()
            if pid == 0:
                try:
                    shim_main(spec, report_w, go_r, netns_fd)
                finally:
                    os._exit(0)
            os.close(report_w)
            os.close(go_r)
        self.shim_pid = pid
        self.report = os.fdopen(report_r, "rb")
        self.child = 0
        self.error: Optional[str] = None
        namespaces = False
        while not (self.child and namespaces) and self.error is None:
            line = self.report.readline()
            if not line:
                self.error = self.error or "container init exited before its namespaces were ready"
                break
            kind, _, text = line.decode(errors="replace").rstrip("\n").partition(":")
            if kind == "pid":
                self.child = int(text)
            elif kind == "ns":
                namespaces = True
            elif kind == "err":
                self.error = text

    def go(self) -> Optional[str]:
        """Lets the container exec; returns its start error, or None once exec succeeded (the pipe hit EOF)."""
        try:
            os.write(self.go_fd, b"g")
        except BrokenPipeError:
            pass
        os.close(self.go_fd)
        self.go_fd = -1
        for line in self.report.read().decode(errors="replace").splitlines():
            if line.startswith("err:") and self.error is None:
                self.error = line[4:]
        self.report.close()
        return self.error

    def abort(self) -> None:
        if self.go_fd >= 0:
            os.close(self.go_fd)
            self.go_fd = -1
        if self.child:
            try:
                os.kill(self.child, signals.SIGKILL)
            except ProcessLookupError:
                pass
        self.report.close()


def _start_error(message: str) -> EngineError:
    """Moby wording: the docker CLI maps 'not found' texts to 127 and 'permission denied' to 126."""
    return InvalidParameter(message) if ("not found" in message or "no such file" in message
                                         or "permission denied" in message) else HostError(message)


def _start_exit_code(message: str) -> int:
    return 126 if "permission denied" in message and "not found" not in message else 127


class Engine:
    """Docker's container operations. Thread-safe; see the team brief for the contract the API layer relies on."""

    def __init__(self, data_root: str, exec_root: str, *, bridge_subnet: Optional[str] = None,
                 bridge_name: Optional[str] = None) -> None:
        from runtime.images.store import ImageStore
        from runtime.network.manager import NetworkManager

        self.data_root = os.path.abspath(data_root)
        self.exec_root = os.path.abspath(exec_root)
        self.containers_root = os.path.join(self.data_root, "containers")
        for path in (self.data_root, self.containers_root, self.exec_root):  # dockerd's modes: not world-readable
            private_dir(path, 0o710)
        cgroups.layout()  # read before any fork: the container child must not parse mountinfo after pivot_root
        self.images = ImageStore(os.path.join(self.data_root, "image"))
        network_options = {"bridge_name": bridge_name} if bridge_name else {}
        self.networks = NetworkManager(os.path.join(self.data_root, "network"), self.exec_root,
                                       default_subnet=bridge_subnet, **network_options)
        self.volumes = VolumeStore(os.path.join(self.data_root, "volumes"), self._volume_users)
        self.bus = EventBus()
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._fork_lock = threading.Lock()
        self._containers: Dict[str, Container] = {}
        self._execs: Dict[str, dict] = {}
        self._closed = False
        self._trash = os.path.join(self.data_root, "trash")
        private_dir(self._trash, 0o700)
        self._discards: List[threading.Thread] = []
        for cid in os.listdir(self._trash):  # removals a killed daemon did not finish
            self._discard(cid, os.path.join(self._trash, cid))
        self._restore()

    # --- lookup and persistence --------------------------------------------------------------------------------

    def _get(self, ref: str) -> Container:
        ref = (ref or "").lstrip("/")
        with self._lock:
            if ref in self._containers:
                return self._containers[ref]
            for c in self._containers.values():
                if c.name == ref:
                    return c
            if ref:
                found = [c for c in self._containers.values() if c.id.startswith(ref)]
                if len(found) == 1:
                    return found[0]
                if len(found) > 1:
                    raise InvalidParameter("multiple IDs found with provided prefix: %s" % ref)
        raise NotFound("No such container: %s" % ref)

    def _save(self, c: Container) -> None:
        if not c.removed:
            write_json(c.file("config.v2.json"), c.data)

    def _emit(self, c: Container, action: str, **extra: str) -> None:
        attrs = {"image": c.data["Config"].get("Image", ""), "name": c.name}
        attrs.update(c.data["Config"].get("Labels") or {})
        attrs.update(extra)
        self.bus.emit("container", action, c.id, attrs)

    def _volume_users(self, name: str) -> List[str]:
        with self._lock:
            return [c.id for c in self._containers.values()
                    if any(m.get("Name") == name for m in c.data.get("Mounts") or [])]

    def container_upper_dir(self, ref: str) -> str:
        return self._get(ref).file("upper")

    # --- create ------------------------------------------------------------------------------------------------

    def create_container(self, body: dict, name: Optional[str] = None, platform: Optional[str] = None) -> dict:
        body = dict(body or {})
        image_ref = body.get("Image") or ""
        if not image_ref:
            raise InvalidParameter("config.Image must be set")
        host = host_config_defaults(body.get("HostConfig") or {})
        validate_network_mode(body, host)  # as moby: before the image is looked up
        image = self.images.resolve(image_ref)
        ulimits_of(host.get("Ulimits") or [])  # refuse bad values at create, not at start
        devices_of(host)
        log_size(host["LogConfig"]["Config"].get("max-size"))
        config = merge_config(body, (image.config or {}).get("config") or {})
        config["Image"] = image_ref
        args = command_of(config)
        cid = secrets.token_hex(32)
        if not config.get("Hostname"):
            config["Hostname"] = cid[:12]
        kind, target = split_mode(host["NetworkMode"])
        if kind == "container":
            self._get(target)
        networks = self._planned_networks(kind, target, body)
        mounts = self._plan_mounts(cid, host, config)
        with self._lock:
            name = check_name(name) if name else self._unique_name()
            for other in self._containers.values():
                if other.name == name:
                    raise Conflict('Conflict. The container name "/%s" is already in use by container "%s". You '
                                   'have to remove (or rename) that container to be able to reuse that name.'
                                   % (name, other.id))
            path = os.path.join(self.containers_root, cid)
            for sub in ("rootfs", "upper", "work"):
                os.makedirs(os.path.join(path, sub), exist_ok=True)
            data = {
                "Id": cid, "Created": _now(), "Path": args[0], "Args": args[1:], "Name": "/" + name,
                "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False,
                          "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                          "StartedAt": ZERO_TIME, "FinishedAt": ZERO_TIME},
                "Image": image.id, "Config": config, "HostConfig": host, "RestartCount": 0,
                "Driver": "overlay2", "Platform": "linux", "MountLabel": "", "ProcessLabel": "",
                "AppArmorProfile": "", "ExecIDs": None, "Mounts": mounts,
                "NetworkSettings": {"Bridge": "", "SandboxID": "", "Ports": {}, "IPAddress": "", "Gateway": "",
                                    "IPPrefixLen": 0, "MacAddress": "", "EndpointID": "", "Networks": networks},
                "LogPath": os.path.join(path, cid + "-json.log"),
                "ResolvConfPath": os.path.join(path, "resolv.conf"),
                "HostnamePath": os.path.join(path, "hostname"), "HostsPath": os.path.join(path, "hosts"),
                "HasBeenManuallyStopped": False,
                "_lower": list(reversed(image.layer_dirs())),
            }
            c = Container(data, path)
            self._containers[cid] = c
            self._save(c)
        self._emit(c, "create")
        return {"Id": cid, "Warnings": create_warnings(host)}

    def _planned_networks(self, kind: str, target: str, body: dict) -> Dict[str, dict]:
        """NetworkSettings.Networks before start: the endpoints asked for (docker-compose reads them to decide
        what to connect), validated now so a missing network fails the create, as with Docker."""
        if kind == "container":
            return {}
        asked = (body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
        primary = self.networks.inspect(target)
        out = {primary["Name"]: _planned_endpoint(primary["Id"], asked.get(target) or asked.get(primary["Name"])
                                                  or asked.get("default") or {})}
        for key, cfg in asked.items():
            if key in (target, primary["Name"], "default"):
                continue
            net = self.networks.inspect(key)
            out[net["Name"]] = _planned_endpoint(net["Id"], cfg or {})
        return out

    def _unique_name(self) -> str:
        taken = {c.name for c in self._containers.values()}
        while True:
            name = random_name()
            if name not in taken:
                return name

    def _plan_mounts(self, cid: str, host: dict, config: dict) -> List[dict]:
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
                created = not anonymous and self.volumes.exists(m["Source"])
                vol = self.volumes.create({"Name": m["Source"]} if not anonymous else None, anonymous=anonymous)
                entry.update({"Name": vol["Name"], "Source": vol["Mountpoint"], "Driver": "local",
                              "_anonymous": anonymous, "_copy": not created and not m.get("NoCopy")})
                entry["Propagation"] = ""
            elif m["Type"] == "bind":
                entry["Propagation"] = "rprivate"
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
                raise NotFound("No such container: %s" % ref)
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
                    f.write("%s\t%s\n" % (addr, name))
        lines = []
        if host.get("Dns"):
            lines += ["nameserver %s" % d for d in host["Dns"]]
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

    def _spec(self, c: Container, network: str) -> dict:
        cfg, host = c.data["Config"], c.data["HostConfig"]
        caps: Optional[List[int]] = None
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
                raise InvalidParameter("unknown capability: %s" % e)
        mounts = []
        for m in c.data.get("Mounts") or []:
            mounts.append({"type": m["Type"], "source": m["Source"], "target": m["Destination"],
                           "readonly": not m["RW"], "options": m.get("_options", ""),
                           "copy_up": m.get("_copy", False)})
        size = host.get("ConsoleSize") or [0, 0]
        log_opts = (host.get("LogConfig") or {}).get("Config") or {}
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
            "init": bool(host.get("Init")), "cgroup": "machines/" + c.id, "log_path": c.data["LogPath"],
            "socket": sock, "exit_path": c.file("exit.json"), "console": list(size) if any(size) else None,
            "readonly_rootfs": bool(host.get("ReadonlyRootfs")), "start_id": secrets.token_hex(8),
            "log_max_size": log_size(log_opts.get("max-size")), "log_max_file": int(log_opts.get("max-file") or 1),
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
                raise Conflict("cannot join network of a non running container: %s" % other.id)
            netns_fd = os.open("/proc/%d/ns/net" % other.state["Pid"], os.O_RDONLY)
        network = {"host": "host", "container": "join"}.get(kind, "new")
        try:
            cg = cgroups.open_cgroup("machines/" + c.id)
            cg.remove()
            cg.create(dict(host, DeviceRules=["%(type)s %(major)d:%(minor)d %(perms)s" % d
                                              for d in devices_of(host)]))
        except OSError as e:
            raise HostError("failed to set up the container's cgroup: %s" % e)
        self._write_etc(c, kind)
        for m in c.data.get("Mounts") or []:
            if m["Type"] == "bind" and not os.path.exists(m["Source"]):
                raise InvalidParameter("invalid mount config for type \"bind\": bind source path does not exist: "
                                       "%s" % m["Source"])
        spec = self._spec(c, network)
        try:
            os.unlink(spec["exit_path"])
        except FileNotFoundError:
            pass
        launch = Launch(spec, netns_fd, self._fork_lock)
        if netns_fd is not None:
            os.close(netns_fd)
        monitor = None
        try:
            if launch.error:
                raise _start_error(launch.error)
            self._connect_networks(c, kind, launch.child)
            monitor = connect(spec["socket"], {"monitor": True}, timeout=5)
            with self._lock:
                pending, c.pending = c.pending, []
            for session in pending:
                session.connect(spec["socket"])
            error = launch.go()
            if error:
                raise _start_error(error)
        except BaseException as e:
            launch.abort()
            if monitor is not None:
                monitor.close()
            self._reap_later(launch.shim_pid)
            self._release_network(c)
            message = str(e)
            with self._lock:
                st = c.state
                st.update({"Status": "created" if st["StartedAt"] == ZERO_TIME else "exited", "Error": message,
                           "ExitCode": _start_exit_code(message) if isinstance(e, InvalidParameter) else 128,
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
            raise HostError("failed to start container: %s" % message)
        with self._lock:
            c.state.update({"Status": "running", "Running": True, "Paused": False, "Restarting": False,
                            "OOMKilled": False, "Dead": False, "Pid": launch.child, "ExitCode": 0, "Error": "",
                            "StartedAt": _now()})
            c.data["_start_id"] = spec["start_id"]
            c.data["_socket"] = spec["socket"]
            c.data["_shim_pid"] = launch.shim_pid
            c.data["HasBeenManuallyStopped"] = False
            c.exit_on_next = False
            self._save(c)
        self._emit(c, "start")
        threading.Thread(target=self._watch, args=(c, monitor, launch.shim_pid, spec["start_id"]),
                         name="watch-" + c.id[:12], daemon=True).start()

    def _connect_networks(self, c: Container, kind: str, pid: int) -> None:
        """Plugs the started container into every network in NetworkSettings.Networks, then publishes ports on
        the first one's address. ``none`` and ``host`` need nothing (the child raised lo itself)."""
        settings = c.data["NetworkSettings"]
        settings["Ports"] = {}
        if kind in ("container", "none", "host"):
            return
        cfg, host = c.data["Config"], c.data["HostConfig"]
        connected: Dict[str, dict] = {}
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
        ipv4 = (planned.get("IPAMConfig") or {}).get("IPv4Address") or None
        endpoint = self.networks.connect(net, c.id, pid, name=c.name, aliases=planned.get("Aliases") or [],
                                         ipv4=ipv4, hosts_path=c.file("hosts"),
                                         hostname=c.data["Config"].get("Hostname"))
        endpoint["IPAMConfig"] = planned.get("IPAMConfig")
        return endpoint

    def _release_network(self, c: Container) -> None:
        kind, _ = split_mode(c.data["HostConfig"]["NetworkMode"])
        if kind in ("bridge", "network"):  # none, host and container: modes never register with the manager
            try:
                self.networks.release(c.id)
            except Exception:  # noqa: the container is gone either way; a stale veth must not block stop/remove
                pass
        settings = c.data["NetworkSettings"]
        settings["Ports"] = {}
        settings.update({"IPAddress": "", "Gateway": "", "MacAddress": "", "IPPrefixLen": 0, "EndpointID": ""})
        for endpoint in (settings.get("Networks") or {}).values():
            endpoint.update({"IPAddress": "", "Gateway": "", "IPPrefixLen": 0, "MacAddress": "", "EndpointID": ""})

    @staticmethod
    def _reap_later(pid: int) -> None:
        def reap() -> None:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        threading.Thread(target=reap, daemon=True).start()

    # --- exit, restart policies, restore -----------------------------------------------------------------------

    def _watch(self, c: Container, sock: socket.socket, shim_pid: Optional[int], start_id: str) -> None:
        record = None
        try:
            while True:
                frame = recv_frame(sock)
                if frame is None:
                    break
                if frame[0] == EXIT:
                    record = json.loads(frame[1])
                    break
        except (OSError, ValueError):
            pass
        sock.close()
        if not self._closed:
            self._exited(c, start_id, record)
        if shim_pid:  # reaped after the books are closed: waiters need not wait for the shim to go
            try:
                os.waitpid(shim_pid, 0)
            except ChildProcessError:
                pass

    def _read_exit(self, c: Container, start_id: str) -> Optional[dict]:
        try:
            with open(c.file("exit.json")) as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        return record if record.get("StartId") == start_id else None

    def _exited(self, c: Container, start_id: str, record: Optional[dict]) -> None:
        record = record or self._read_exit(c, start_id) or {"ExitCode": 255, "OOMKilled": False,
                                                             "FinishedAt": _now()}
        with self._lock:
            if c.data.get("_start_id") != start_id or not c.running:
                return
        self._release_network(c)  # outside the engine lock: it runs `ip` and touches iptables
        with self._lock:
            code = int(record["ExitCode"])
            c.state.update({"Status": "exited", "Running": False, "Paused": False, "Pid": 0, "ExitCode": code,
                            "OOMKilled": bool(record.get("OOMKilled")), "FinishedAt": record["FinishedAt"]})
            restart = self._should_restart(c, code)
            if restart:
                c.state.update({"Status": "restarting", "Restarting": True})
            self._save(c)
            c.exit_seq += 1
            self._cond.notify_all()
        for e in list(self._execs.values()):
            if e["ContainerID"] == c.id and e["Running"]:
                e["Running"] = False
        if record.get("OOMKilled"):
            self._emit(c, "oom")
        self._emit(c, "die", exitCode=str(code))
        if restart:
            self._schedule_restart(c, start_id)
        elif c.data["HostConfig"].get("AutoRemove"):
            try:
                self.remove(c.id, force=True, volumes=True)
            except EngineError:
                pass

    def _should_restart(self, c: Container, code: int) -> bool:
        """moby's restart manager: a cancelled exit never restarts; unless-stopped also respects a manual stop."""
        if c.exit_on_next or c.removed or self._closed:
            return False
        policy = c.data["HostConfig"]["RestartPolicy"]
        name = policy.get("Name") or "no"
        if name == "always":
            return True
        if name == "unless-stopped":
            return not c.data.get("HasBeenManuallyStopped")
        if name == "on-failure" and code != 0:
            limit = policy.get("MaximumRetryCount") or 0
            return limit == 0 or c.data["RestartCount"] < limit
        return False

    def _schedule_restart(self, c: Container, start_id: str) -> None:
        started = c.state.get("StartedAt") or ZERO_TIME
        ran_long = started != ZERO_TIME and time.time() - timefmt.parse_rfc3339_or(started) > 10
        c.backoff = 0.1 if ran_long or not c.backoff else min(c.backoff * 2, RESTART_BACKOFF_MAX)
        delay = c.backoff

        def restart() -> None:
            time.sleep(delay)
            with c.lock:
                if c.removed or c.running or self._closed or not c.state.get("Restarting"):
                    return
                if c.data.get("_start_id") != start_id or c.exit_on_next:
                    return
                c.data["RestartCount"] += 1
                try:
                    self._start(c)
                except EngineError as e:
                    with self._lock:
                        c.state.update({"Restarting": False, "Status": "exited", "Error": str(e)})
                        self._save(c)
                    return
            self._emit(c, "restart")

        threading.Thread(target=restart, name="restart-" + c.id[:12], daemon=True).start()

    def _restore(self) -> None:
        """Reloads every container; reconnects to live shims, closes the books on dead ones, applies policies."""
        running: Dict[str, int] = {}
        to_start: List[Container] = []
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
                sock = None
                if st["Running"]:
                    try:
                        sock = connect(data["_socket"], {"monitor": True}, timeout=2)
                    except OSError:
                        sock = None
                if sock is not None:
                    running[cid] = st["Pid"]
                    threading.Thread(target=self._watch, args=(c, sock, None, data["_start_id"]),
                                     daemon=True).start()
                    continue
                record = self._read_exit(c, data.get("_start_id", "")) or {"ExitCode": st.get("ExitCode") or 255,
                                                                          "OOMKilled": False, "FinishedAt": _now()}
                st.update({"Status": "exited", "Running": False, "Paused": False, "Restarting": False, "Pid": 0,
                           "ExitCode": int(record["ExitCode"]), "OOMKilled": bool(record.get("OOMKilled")),
                           "FinishedAt": record["FinishedAt"]})
                self._save(c)
            policy = c.data["HostConfig"]["RestartPolicy"].get("Name")
            manual = c.data.get("HasBeenManuallyStopped")
            if st["Status"] == "exited" and (policy == "always" or (not manual and self._should_restart(
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
        self._closed = True
        self.bus.close()
        for thread in list(self._discards):
            thread.join(10)
        try:
            self.networks.close()
        except Exception:  # noqa: closing is best effort
            pass

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

    def _wait_exit(self, c: Container, seq: int, timeout: Optional[float]) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while c.exit_seq == seq and c.running:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, ref: str, timeout: Optional[int] = None, signal: Optional[str] = None) -> None:
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
                raise Conflict("Container %s is not running" % c.id)
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

    def restart(self, ref: str, timeout: Optional[int] = None) -> None:
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
                raise Conflict("Container %s is not running" % c.id)
            if c.state["Paused"]:
                raise Conflict("Container %s is already paused" % c.id)
            try:
                cgroups.open_cgroup("machines/" + c.id).set_frozen(True)
            except OSError as e:
                raise HostError("cannot pause container %s: %s" % (c.id, e))
            with self._lock:
                c.state.update({"Paused": True, "Status": "paused"})
                self._save(c)
        self._emit(c, "pause")

    def unpause(self, ref: str) -> None:
        c = self._get(ref)
        with c.lock:
            if not c.state["Paused"]:
                raise Conflict("Container %s is not paused" % c.id)
            self._thaw(c)
            with self._lock:
                c.state.update({"Paused": False, "Status": "running" if c.running else c.state["Status"]})
                self._save(c)
        self._emit(c, "unpause")

    def rename(self, ref: str, new_name: str) -> None:
        c = self._get(ref)
        new_name = check_name(new_name)
        with self._lock:
            if new_name == c.name:
                raise InvalidParameter("Renaming a container with the same name as its current name")
            for other in self._containers.values():
                if other.name == new_name:
                    raise Conflict('Conflict. The container name "/%s" is already in use by container "%s". You '
                                   'have to remove (or rename) that container to be able to reuse that name.'
                                   % (new_name, other.id))
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
                raise Conflict("You cannot remove a running container %s. Stop the container before attempting "
                               "removal or force remove" % c.id)
            c.exit_on_next = True
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
                for eid in [e for e, rec in self._execs.items() if rec["ContainerID"] == c.id]:
                    self._execs.pop(eid, None)
            archive.unmount_quietly(c.file("rootfs"))
            trash = os.path.join(self._trash, c.id)
            os.rename(c.dir, trash)
            self._discard(c.id, trash)
            if volumes:
                for m in c.data.get("Mounts") or []:
                    if m.get("_anonymous"):
                        try:
                            self.volumes.remove(m["Name"])
                        except EngineError:
                            pass
            with self._lock:
                self._cond.notify_all()
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

    def prune_containers(self, filters: Optional[Args] = None) -> dict:
        """Stopped containers, narrowed by ``label``/``label!`` and ``until`` as moby's."""
        args = Args.of(filters).validate(PRUNE_LABELS)
        until = args.until()
        deleted, reclaimed = [], 0
        with self._lock:
            candidates = [c for c in self._containers.values() if not c.running and not c.state.get("Restarting")]
        for c in candidates:
            if not args.match_labels(c.data["Config"].get("Labels") or {}):
                continue
            if until is not None and timefmt.parse_rfc3339_or(c.data["Created"]) > until:
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
        c = self._get(ref)
        condition = condition or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise InvalidParameter("invalid condition: %r" % condition)
        with self._lock:
            if condition == "removed":
                while not c.removed:
                    self._cond.wait()
            elif condition == "not-running" and not c.running and not c.state.get("Restarting"):
                pass
            else:
                seq = c.exit_seq
                while c.exit_seq == seq and not c.removed:
                    self._cond.wait()
            error = c.state.get("Error") or None
            return {"StatusCode": c.state["ExitCode"], "Error": {"Message": error} if error else None}

    def inspect_container(self, ref: str, size: bool = False) -> dict:
        c = self._get(ref)
        with self._lock:
            out = json.loads(json.dumps({k: v for k, v in c.data.items() if not k.startswith("_")}))
        out["Mounts"] = [{k: v for k, v in m.items() if not k.startswith("_")} for m in out.get("Mounts") or []]
        out["ExecIDs"] = [e for e, rec in self._execs.items() if rec["ContainerID"] == c.id] or None
        out["GraphDriver"] = {"Name": "overlay2", "Data": {
            "LowerDir": ":".join(c.data["_lower"]), "UpperDir": c.file("upper"), "WorkDir": c.file("work"),
            "MergedDir": c.file("rootfs")}}
        out.pop("HasBeenManuallyStopped", None)
        if size:
            out["SizeRw"] = archive.tree_size(c.file("upper"))
            out["SizeRootFs"] = out["SizeRw"]
        return out

    def list_containers(self, all: bool = False, filters: Optional[Args] = None, limit: int = -1,
                        size: bool = False) -> List[dict]:
        args = Args.of(filters).validate(LIST_FILTERS)
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
                if any(c.data["Created"] >= b for b in before) or any(c.data["Created"] <= s for s in since):
                    continue
                out.append(self._summary(c, size))
        return out[:limit] if limit is not None and limit > 0 else out

    def _matches(self, c: Container, args: Args) -> bool:
        if not args:
            return True
        st = c.state
        checks = {
            "id": lambda v: c.id.startswith(v),
            "name": lambda v: v.lstrip("/") in c.name,
            "status": lambda v: v == st["Status"],
            "exited": lambda v: not c.running and st["Status"] == "exited" and str(st["ExitCode"]) == v,
            "ancestor": lambda v: v in (c.data["Config"].get("Image"), c.data["Image"])
            or c.data["Image"].startswith("sha256:" + v),
            "volume": lambda v: any(v in (m.get("Name"), m.get("Destination")) for m in c.data.get("Mounts") or []),
            "network": lambda v: v in (c.data["NetworkSettings"].get("Networks") or {}),
        }
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
            "Command": " ".join(args), "Created": int(timefmt.parse_rfc3339_or(c.data["Created"])),
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
             until: float = 0, timestamps: bool = False, tail: str = "all") -> Iterator[Tuple[int, bytes]]:
        c = self._get(ref)
        if not (stdout or stderr):
            raise InvalidParameter("You must choose at least one stream")
        start_id = c.data.get("_start_id")

        def running() -> bool:
            return c.running and not c.removed and c.data.get("_start_id") == start_id

        return read_logs(c.data["LogPath"], follow=follow, stdout=stdout, stderr=stderr, since=float(since or 0),
                         until=float(until or 0), timestamps=timestamps, tail=str(tail), running=running)

    def attach(self, ref: str, *, stdin: bool = False, stdout: bool = True, stderr: bool = True, logs: bool = False,
               stream: bool = True) -> Session:
        c = self._get(ref)
        backlog: List[Tuple[int, bytes]] = []
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
            raise Conflict("Container %s is not running" % c.id)
        if not c.data["Config"].get("Tty"):
            return
        try:
            connect(c.data["_socket"], {"resize": [int(h), int(w)]}, timeout=2).close()
        except OSError as e:
            raise HostError("cannot resize the container's terminal: %s" % e)

    # --- exec ----------------------------------------------------------------------------------------------------

    def exec_create(self, ref: str, body: dict) -> str:
        c = self._get(ref)
        if not c.running:
            raise Conflict("Container %s is not running" % c.id)
        if c.state.get("Paused"):
            raise Conflict("Container %s is paused, unpause the container before exec" % c.id)
        cmd = body.get("Cmd") or []
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd:
            raise InvalidParameter("No exec command specified")
        eid = secrets.token_hex(32)
        with self._lock:
            self._execs[eid] = {
                "ID": eid, "Running": False, "ExitCode": None, "Pid": 0, "ContainerID": c.id,
                "ProcessConfig": {"entrypoint": cmd[0], "arguments": list(cmd[1:]), "tty": bool(body.get("Tty")),
                                  "user": body.get("User") or "", "privileged": bool(body.get("Privileged"))},
                "OpenStdin": bool(body.get("AttachStdin")), "OpenStdout": bool(body.get("AttachStdout", True)),
                "OpenStderr": bool(body.get("AttachStderr", True)), "CanRemove": False,
                "DetachKeys": body.get("DetachKeys") or "", "_body": dict(body), "_master": None,
                "_started": False,
            }
        self._emit(c, "exec_create: " + " ".join(cmd), execID=eid)
        return eid

    def _exec(self, exec_id: str) -> dict:
        with self._lock:
            rec = self._execs.get(exec_id)
        if rec is None:
            raise NotFound("No such exec instance: %s" % exec_id)
        return rec

    def exec_inspect(self, exec_id: str) -> dict:
        rec = self._exec(exec_id)
        return {k: v for k, v in rec.items() if not k.startswith("_")}

    def exec_start(self, exec_id: str, *, detach: bool = False, tty: bool = False) -> Optional[Session]:
        rec = self._exec(exec_id)
        with self._lock:
            if rec["_started"]:
                raise Conflict("Error: Exec command %s has already run" % exec_id)
            rec["_started"] = True
        c = self._get(rec["ContainerID"])
        if not c.running:
            raise Conflict("Container %s is not running" % c.id)
        body = rec["_body"]
        tty = bool(body.get("Tty")) or tty
        cfg, host = c.data["Config"], c.data["HostConfig"]
        spec = self._spec(c, "join")
        if body.get("Privileged"):
            spec.update({"caps": None, "seccomp": False})
        spec.update({"tty": tty, "args": list(body["Cmd"]) if not isinstance(body["Cmd"], str) else [body["Cmd"]],
                     "env": merge_env(cfg.get("Env") or [], body.get("Env") or []),
                     "user": body.get("User") or cfg.get("User") or "",
                     "cwd": body.get("WorkingDir") or cfg.get("WorkingDir") or "/", "init": False})
        keep_open: Dict[int, int] = {}
        child_side: List[int] = []
        stdin_fd = master = None
        stdio: Optional[Tuple[int, int, int]] = None
        console = child_console = None
        if tty:
            console, child_console = socket.socketpair()
        else:
            null = os.open(os.devnull, os.O_RDWR)
            child_side.append(null)
            in_r = null
            if rec["OpenStdin"] and not detach:
                in_r, stdin_fd = os.pipe()
                child_side.append(in_r)
            outs = []
            for kind in (1, 2):
                if detach:
                    outs.append(null)
                    continue
                r, w = os.pipe()
                keep_open[r] = kind
                child_side.append(w)
                outs.append(w)
            stdio = (in_r, outs[0], outs[1])
        report_r, report_w = os.pipe()
        pid = c.state["Pid"]
        with self._fork_lock:
            child = os.fork()
            if child == 0:
                try:
                    keep = list(stdio or []) + [report_w] + ([child_console.fileno()] if child_console else [])
                    close_fds(keep)
                    enter_child(pid, spec, stdio, report_w, child_console)
                finally:
                    os._exit(126)
            os.close(report_w)
            for fd in child_side:
                os.close(fd)
        if console is not None and child_console is not None:
            child_console.close()
            master = receive_console(console)
            size = body.get("ConsoleSize") or [0, 0]
            if master is not None and size and all(size):
                syscalls.set_winsize(master, int(size[0]), int(size[1]))
            if master is not None and detach:
                os.close(master)
                master = None
            if master is not None:
                keep_open = {master: 1}
                stdin_fd = master if rec["OpenStdin"] else None
        done = threading.Event()
        with os.fdopen(report_r, "rb") as report:
            lines = report.read().decode(errors="replace").splitlines()
        error = next((line[4:] for line in lines if line.startswith("err:")), None)
        exec_pid = next((int(line[4:]) for line in lines if line.startswith("pid:")), 0)
        with self._lock:
            rec.update({"Running": error is None, "Pid": exec_pid, "_master": master})

        def reap() -> None:
            try:
                _, status = os.waitpid(child, 0)
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
            except ChildProcessError:
                code = 255
            with self._lock:
                rec.update({"Running": False, "ExitCode": code, "_master": None})
            self._emit(c, "exec_die", execID=exec_id, exitCode=str(code))
            done.set()

        self._emit(c, "exec_start: " + " ".join(spec["args"]), execID=exec_id)
        threading.Thread(target=reap, name="exec-" + exec_id[:12], daemon=True).start()
        if error is not None:
            done.wait()
            for fd in list(keep_open) + ([stdin_fd] if stdin_fd is not None and stdin_fd != master else []):
                os.close(fd)
            if master is not None and master not in keep_open:
                os.close(master)
            raise _start_error("OCI runtime exec failed: exec failed: unable to start container process: %s"
                               % error)
        if detach:
            return None
        return ExecSession(keep_open, stdin_fd, tty, done)

    def exec_resize(self, exec_id: str, h: int, w: int) -> None:
        rec = self._exec(exec_id)
        master = rec.get("_master")
        if master is None:
            if not rec["Running"]:
                raise Conflict("Exec %s is not running" % exec_id)
            return
        syscalls.set_winsize(master, int(h), int(w))

    # --- top, stats --------------------------------------------------------------------------------------------

    def _cgroup_pids(self, c: Container) -> List[int]:
        return cgroups.open_cgroup("machines/" + c.id).procs()

    def top(self, ref: str, ps_args: Optional[str] = None) -> dict:
        c = self._get(ref)
        if not c.running:
            raise Conflict("Container %s is not running" % c.id)
        pids = set(self._cgroup_pids(c))
        args = (ps_args or "-ef").split()
        try:
            out = subprocess.run(["ps"] + args, capture_output=True, text=True, check=True, timeout=10).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            raise HostError("Error running ps: %s" % e)
        lines = out.splitlines()
        titles = lines[0].split()
        try:
            col = titles.index("PID")
        except ValueError:
            raise InvalidParameter("Couldn't find PID field in ps output")
        processes = []
        for line in lines[1:]:
            fields = line.split(None, len(titles) - 1)
            if len(fields) > col and fields[col].isdigit() and int(fields[col]) in pids:
                processes.append(fields)
        return {"Titles": titles, "Processes": processes}

    def stats(self, ref: str) -> dict:
        c = self._get(ref)
        now = _now()
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
            "read": now, "preread": prev["read"], "id": c.id, "name": "/" + c.name, "num_procs": 0,
            "pids_stats": {"current": raw["pids_current"], **({"limit": raw["pids_limit"]}
                                                               if raw["pids_limit"] else {})},
            "cpu_stats": cpu, "precpu_stats": prev["cpu_stats"],
            "memory_stats": {"usage": raw["mem_usage"], "limit": limit, "stats": raw["mem_stats"]},
            "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None},
            "storage_stats": {}, "networks": net_stats(c.state["Pid"]),
        }
        c.prev_stats = {"read": now, "cpu_stats": cpu}
        return sample

    # --- files -------------------------------------------------------------------------------------------------

    def _root_for(self, c: Container) -> Optional[str]:
        return "/proc/%d/root" % c.state["Pid"] if c.running else None

    def archive_head(self, ref: str, path: str) -> dict:
        c = self._get(ref)
        with archive.container_root(c, self._root_for(c), writable=False) as root:
            return archive.stat_path(root, path, c.name)

    def archive_get(self, ref: str, path: str) -> Tuple[Iterator[bytes], dict]:
        c = self._get(ref)
        return archive.get(c, self._root_for(c), path)

    def archive_put(self, ref: str, path: str, fileobj: Any, no_overwrite_dir_non_dir: bool = False) -> None:
        c = self._get(ref)
        with c.lock:
            with archive.container_root(c, self._root_for(c), writable=True) as root:
                archive.put(root, path, fileobj, c.name, no_overwrite_dir_non_dir)

    def export(self, ref: str) -> Iterator[bytes]:
        c = self._get(ref)
        return archive.export(c)

    # --- networks and events -----------------------------------------------------------------------------------

    def network_connect(self, net_ref: str, ref: str, config: Optional[dict] = None) -> None:
        """Connects now when running; otherwise records the endpoint for the next start, as Docker does."""
        c = self._get(ref)
        net = self.networks.inspect(net_ref)
        planned = _planned_endpoint(net["Id"], config or {})
        with c.lock:
            networks = c.data["NetworkSettings"].setdefault("Networks", {})
            if not c.running:
                if net["Name"] in networks:
                    raise Conflict("endpoint with name %s already exists in network %s" % (c.name, net["Name"]))
                endpoint = planned
            else:
                endpoint = self._connect_one(c, net_ref, planned, c.state["Pid"])
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
                raise NotFound("container %s is not connected to network %s" % (c.id, net["Name"]))
            with self._lock:
                (c.data["NetworkSettings"].get("Networks") or {}).pop(net["Name"], None)
                self._save(c)

    def events(self, since: Optional[float] = None, until: Optional[float] = None,
               filters: Optional[dict] = None) -> Iterator[dict]:
        return self.bus.stream(since=since, until=until, filters=filters)


def _planned_endpoint(network_id: str, cfg: dict) -> dict:
    """EndpointSettings before the container runs: what was asked (aliases, address), no address yet."""
    return {"IPAMConfig": cfg.get("IPAMConfig"), "Links": cfg.get("Links"), "Aliases": cfg.get("Aliases"),
            "MacAddress": "", "NetworkID": network_id, "EndpointID": "", "Gateway": "", "IPAddress": "",
            "IPPrefixLen": 0, "IPv6Gateway": "", "GlobalIPv6Address": "", "GlobalIPv6PrefixLen": 0,
            "DNSNames": None}

"""``python3 runtime.pyz daemon | dial-stdio | version``: the runtime's command line (also ``python -m machines.runtime``).

Runs from a zipapp, so nothing here reads package files through ``__file__`` paths.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import signal
import socket
import ssl
import sys
import threading

from machines.runtime import API_VERSION, MIN_API_VERSION, VERSION, daemonconfig
from machines.runtime.errors import EngineError

DEFAULT_SOCKET = "/var/run/docker.sock"
# A descriptor (its number in the environment) on which the daemon writes "READY=1" (sd_notify's word) once it serves,
# then closes it: whoever started it reads that line instead of polling the API (machines' host supervisor does).
READY_FD = "MACHINES_READY_FD"


class UsageError(Exception):
    """Bad flags or environment: printed as one line, exit status 1."""


def parse_host(value: str) -> tuple[str, str, int]:
    """``unix:///path`` -> ("unix", path, 0); ``tcp://host:port`` -> ("tcp", host, port)."""
    if value.startswith("unix://"):
        path = value[len("unix://"):]
        if not path.startswith("/"):
            raise UsageError(f"invalid host {value!r}: unix socket paths must be absolute")
        return "unix", path, 0
    if value.startswith("tcp://"):
        rest = value[len("tcp://"):].rstrip("/")
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"invalid host {value!r}: expected tcp://ADDRESS:PORT")
        return "tcp", host.strip("[]") or "0.0.0.0", int(port)
    raise UsageError(f"invalid host {value!r}: expected unix:///path or tcp://ADDRESS:PORT")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _claim_pidfile(path: str) -> None:
    """Write our pid, refusing when the file names a live process (another daemon on the same data)."""
    try:
        with open(path) as handle:
            old = int(handle.read().strip() or "0")
    except (OSError, ValueError):
        old = 0
    if old and old != os.getpid():
        try:
            os.kill(old, 0)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                raise UsageError(f"pid file {path} names running process {old}; is a daemon running?") from None
        else:
            raise UsageError(f"pid file {path} names running process {old}; is a daemon running?")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as handle:
        handle.write(f"{os.getpid()}\n")


def _take_ready_fd() -> int | None:
    """The readiness descriptor, out of the environment and not inherited by anything the daemon executes."""
    value = os.environ.pop(READY_FD, "")
    if not value.isdigit():
        return None
    try:
        os.set_inheritable(int(value), False)
    except OSError:  # not open: nobody waits
        return None
    return int(value)


def _report_ready(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.write(fd, b"READY=1\n")
    except OSError:  # the reader is gone: nobody waits any more
        pass
    finally:
        os.close(fd)


def _pool_flag(value: str) -> dict:
    """``--default-address-pool base=CIDR,size=N`` as daemon.json's form."""
    fields = dict(part.partition("=")[::2] for part in value.split(","))
    if set(fields) != {"base", "size"} or not fields["size"].isdigit():
        raise UsageError(f"invalid --default-address-pool {value!r}: expected base=CIDR,size=N")
    return {"base": fields["base"], "size": int(fields["size"])}


def run_daemon(args: argparse.Namespace) -> int:
    ready_fd = _take_ready_fd()  # closed at exit if the daemon never serves: the reader then sees end of file
    from machines.runtime.api import build_app
    from machines.runtime.api.server import RevocableTLS, Server, bind_tcp, bind_unix, tls_context
    from machines.runtime.engine import Engine

    hosts = [parse_host(value) for value in (args.host or ["unix://" + DEFAULT_SOCKET])]
    tls: RevocableTLS | ssl.SSLContext | None = None
    if any(kind == "tcp" for kind, _, _ in hosts):
        if args.tlsverify or args.tls:
            if (args.tlsverify and not args.tlscacert) or not args.tlscert or not args.tlskey:
                raise UsageError("--tlsverify needs --tlscacert, --tlscert and --tlskey (--tls: the last two)")
            try:
                if args.tlscrl and args.tlsverify:
                    tls = RevocableTLS(args.tlscacert, args.tlscert, args.tlskey, args.tlscrl)
                else:
                    tls = tls_context(args.tlscacert, args.tlscert, args.tlskey, verify=args.tlsverify)
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot load TLS files: {exc}") from None
        else:
            for kind, host, port in hosts:
                if kind == "tcp" and not _is_loopback(host):
                    raise UsageError(f"refusing to listen on tcp://{host}:{port} without --tlsverify: anyone reaching it would be root on this host")
    try:
        options = daemonconfig.load(args.config_file, {
            "labels": args.label or [], "insecure-registries": args.insecure_registry or [],
            "registry-mirrors": args.registry_mirror or [], "bip": args.bip, "mtu": args.mtu,
            "default-address-pools": [_pool_flag(value) for value in args.default_address_pool or []],
            "debug": args.debug, "data-root": args.data_root,
        })
    except daemonconfig.ConfigError as exc:
        raise UsageError(str(exc)) from None
    if not options.data_root:
        raise UsageError("no data root: give --data-root or data-root in the configuration file")
    if args.bridge_subnet and options.bip:
        raise UsageError("--bridge-subnet and bip are the same setting: give one")
    if args.pidfile:
        _claim_pidfile(args.pidfile)
    engine = None
    server = None
    try:
        try:
            engine = Engine(options.data_root, args.exec_root, bridge_subnet=args.bridge_subnet,
                            bridge_name=args.bridge_name, options=options)
        except EngineError as exc:  # options the engine refuses (a bridge subnet too small...): one line
            raise UsageError(str(exc)) from None
        server = Server(build_app(engine, debug=options.debug))
        listening = []
        for kind, host, port in hosts:
            try:
                if kind == "unix":
                    server.add(bind_unix(host))
                    listening.append("unix://" + host)
                else:
                    sock = bind_tcp(host, port)
                    server.add(sock, tls)
                    listening.append(f"tcp://{host}:{sock.getsockname()[1]}")  # port 0 -> the real one
            except OSError as exc:
                raise UsageError("cannot listen on {}: {}".format(host if kind == "unix" else f"{host}:{port}",
                                                               exc.strerror or exc)) from None
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        server.start()
        sys.stderr.write(f"runtime {VERSION} (API {API_VERSION}) listening on {' '.join(listening)}\n")
        sys.stderr.flush()
        _report_ready(ready_fd)
        while not stop.wait(3600):
            pass
        return 0
    finally:
        if server is not None:
            server.shutdown()
        if engine is not None:
            engine.close()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


def dial_stdio(socket_path: str) -> int:
    """Bridge stdin/stdout to the daemon socket, as ``docker system dial-stdio`` does for ssh:// hosts."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError as exc:
        raise UsageError(f"cannot connect to {socket_path}: {exc.strerror or exc}") from None

    def upstream() -> None:
        stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
        try:
            while True:
                data = stdin.read(65536)
                if not data:
                    break
                sock.sendall(data)
        except OSError:
            pass
        finally:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    threading.Thread(target=upstream, daemon=True).start()
    stdout = sys.stdout.buffer
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            stdout.write(data)
            stdout.flush()
    except (OSError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return 0


def _dial_target(host: str | None) -> str:
    value = host or os.environ.get("DOCKER_HOST") or "unix://" + DEFAULT_SOCKET
    kind, path, _ = parse_host(value)
    if kind != "unix":
        raise UsageError(f"dial-stdio needs a unix:// host, got {value!r}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtime", description="machines container runtime with a Docker API")
    commands = parser.add_subparsers(dest="command", required=True)
    daemon = commands.add_parser("daemon", help="run the daemon")
    daemon.add_argument("--config-file", help="dockerd-style daemon.json (labels, registries, proxies, bip, mtu...)")
    daemon.add_argument("--data-root", help="containers, images, volumes (overlayfs-capable)")
    daemon.add_argument("--exec-root", required=True, help="runtime state (sockets, pids)")
    daemon.add_argument("-H", "--host", action="append", help="unix:///path or tcp://ADDR:PORT (repeatable)")
    daemon.add_argument("--tls", action="store_true", help="serve TLS without requiring client certificates")
    daemon.add_argument("--tlsverify", action="store_true", help="mutual TLS: clients need a CA-signed cert")
    daemon.add_argument("--tlscacert")
    daemon.add_argument("--tlscert")
    daemon.add_argument("--tlskey")
    daemon.add_argument("--tlscrl", help="revocation list (PEM) of --tlscacert, re-read when it changes")
    daemon.add_argument("--pidfile")
    daemon.add_argument("--bridge-subnet", help="subnet of the default bridge network, e.g. 172.30.0.0/16")
    daemon.add_argument("--bridge-name", help="name of the default bridge link")
    daemon.add_argument("--debug", action="store_true", help="log every request to stderr")
    daemon.add_argument("--label", action="append", help="KEY=VALUE label of this daemon (docker info)")
    daemon.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]|CIDR",
                        help="registry reached over plain HTTP (repeatable)")
    daemon.add_argument("--registry-mirror", action="append", metavar="URL",
                        help="mirror tried before Docker Hub for its images (repeatable)")
    daemon.add_argument("--bip", help="the default bridge's gateway address and subnet, e.g. 172.30.0.1/16")
    daemon.add_argument("--mtu", type=int, help="MTU of the default bridge")
    daemon.add_argument("--default-address-pool", action="append", metavar="base=CIDR,size=N",
                        help="where new networks take their subnets")
    dial = commands.add_parser("dial-stdio", help="bridge stdin/stdout to the daemon socket")
    dial.add_argument("-H", "--host", help=f"unix:///path (default $DOCKER_HOST or {DEFAULT_SOCKET})")
    commands.add_parser("version", help="print the runtime and API versions")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "version":
            print(f"runtime {VERSION} (API {API_VERSION}, minimum {MIN_API_VERSION})")
            return 0
        if args.command == "dial-stdio":
            return dial_stdio(_dial_target(args.host))
        return run_daemon(args)
    except UsageError as exc:
        sys.stderr.write(f"runtime: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())

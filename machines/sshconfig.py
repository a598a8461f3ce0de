"""``machines ssh`` the way OpenSSH takes it, and the system ``ssh`` with the pinned host key.

``parse`` reads OpenSSH's option syntax (``-L``, ``-R``, ``-D``, ``-A``, ``-t``/``-T``, ``-N``; clustered flags
and attached values as ``ssh`` accepts them; the command starts at the first word that is not an option, or after
``--``). ``Session`` carries them out over paramiko; ``native_command`` runs the system ``ssh`` instead.

``known_hosts`` is the file machines keeps (``<machine dir>/known_hosts``): the machine's pinned key under its
``host``/``[host]:port`` name, rewritten each time (the address of a machine may change at start), so that the Host blocks of ``host_blocks``
(``machines ssh-config``) let VS Code, rsync or Ansible connect with the host key checked
(``StrictHostKeyChecking yes``; a changed key is refused).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from machines.errors import SSHError, UsageError
from machines.store import atomic_write

if TYPE_CHECKING:
    from machines.machine import Machine, Machines
    from machines.ports import _Listener
    from machines.ssh import Connection

KNOWN_HOSTS = "known_hosts"
# OpenSSH's options that take a value (ssh(1) SYNOPSIS); every other letter is a flag.
VALUED = set("BbcDEeFIiJLlmOoPpQRSWw")
OURS_FLAGS = set("AaTtNq")
OURS_VALUED = set("LRD")
ACCEPTED = "-L, -R, -D, -A, -a, -t, -T, -N, -q and --native (which passes any other ssh option to the system ssh)"
FORWARD = re.compile(r"^(?:(\[[^\]]*\]|[^:]*):)?(\d{1,5}):(\[[^\]]*\]|[^:]+):(\d{1,5})$")
DYNAMIC = re.compile(r"^(?:(\[[^\]]*\]|[^:]*):)?(\d{1,5})$")


@dataclasses.dataclass
class Forward:
    """``[bind:]port:host:hostport`` of ``-L``/``-R`` (``host``/``target`` unused for ``-D``)."""

    bind: str
    port: int
    host: str = ""
    target: int = 0


@dataclasses.dataclass
class Options:
    local: list[Forward] = dataclasses.field(default_factory=list)
    remote: list[Forward] = dataclasses.field(default_factory=list)
    dynamic: list[Forward] = dataclasses.field(default_factory=list)
    agent: bool = False
    tty: bool | None = None  # -t: True, -T: False, None: a PTY for a shell only
    no_command: bool = False
    native: bool = False
    passed: list[str] = dataclasses.field(default_factory=list)  # the options as given, for the system ssh
    command: list[str] = dataclasses.field(default_factory=list)


def _unbracket(text: str | None, default: str) -> str:
    if not text or text == "*":
        return default if not text else "0.0.0.0"
    return text[1:-1] if text.startswith("[") else text


def _port(text: str, option: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise UsageError(f"bad port {text!r} in -{option}")
    return value


def _forward(option: str, value: str) -> Forward:
    if option == "D":
        match = DYNAMIC.fullmatch(value)
        if not match:
            raise UsageError(f"bad dynamic forwarding specification {value!r}: expected [bind_address:]port")
        return Forward(_unbracket(match.group(1), "127.0.0.1"), _port(match.group(2), option))
    match = FORWARD.fullmatch(value)
    if not match:
        raise UsageError(f"bad {'local' if option == 'L' else 'remote'} forwarding specification {value!r}: "
                         "expected [bind_address:]port:host:hostport")
    return Forward(_unbracket(match.group(1), "127.0.0.1"), _port(match.group(2), option),
                   _unbracket(match.group(3), ""), _port(match.group(4), option))


def parse(args: list[str]) -> Options:
    """OpenSSH's command line after the destination: options, then the command."""
    options = Options(native="--native" in (args[: args.index("--")] if "--" in args else args))
    words = iter(args)
    for word in words:
        if word == "--":
            options.command = list(words)
            break
        if word == "--native":
            continue
        if not word.startswith("-") or word == "-":
            options.command = [word, *words]
            break
        options.passed.append(word)
        letters = word[1:]
        for index, letter in enumerate(letters):
            if letter in VALUED:
                value = letters[index + 1:] or next(words, None)
                if value is None:
                    raise UsageError(f"option -{letter} requires an argument")
                if not letters[index + 1:]:
                    options.passed.append(value)
                if letter in OURS_VALUED:
                    getattr(options, {"L": "local", "R": "remote", "D": "dynamic"}[letter]).append(
                        _forward(letter, value))
                elif not options.native:
                    raise UsageError(f"option -{letter} needs --native (machines ssh itself accepts {ACCEPTED})")
                break
            if letter not in OURS_FLAGS and not options.native:
                raise UsageError(f"unknown option -{letter} (machines ssh accepts {ACCEPTED})")
            if letter == "A":
                options.agent = True
            elif letter == "a":
                options.agent = False
            elif letter in "tT":
                options.tty = letter == "t"
            elif letter == "N":
                options.no_command = True
    if options.no_command and options.command:
        raise UsageError("-N means no command: give a command or -N, not both")
    return options


class Session:
    """Carries out ``Options`` over one pinned connection: forwards first, then the shell or command."""

    def __init__(self, connection: Connection, options: Options) -> None:
        self.connection = connection
        self.options = options
        self.listeners: list[_Listener] = []

    def open_forwards(self) -> None:
        from machines.ports import SocksForward, TCPForward

        for forward in self.options.local:
            self.listeners.append(TCPForward(self.connection, forward.port, forward.host, forward.target,
                                             bind=forward.bind))
        for forward in self.options.dynamic:
            self.listeners.append(SocksForward(self.connection, forward.port, bind=forward.bind))
        for forward in self.options.remote:
            self.connection.request_remote_forward(forward.port, forward.host, forward.target,
                                                   remote_host=forward.bind)

    def run(self) -> int:
        """The remote exit status (0 for ``-N`` once interrupted)."""
        try:
            self.open_forwards()
            if self.options.no_command:
                return _wait_for_signal()
            command = " ".join(self.options.command) or None
            interactive = sys.stdin is not None and sys.stdin.isatty()
            tty = self.options.tty if self.options.tty is not None else command is None
            if tty and not interactive:
                if command is None:
                    raise UsageError("an interactive shell needs a terminal; give a command to run")
                if self.options.tty:
                    sys.stderr.write("Pseudo-terminal will not be allocated because stdin is not a terminal.\r\n")
                tty = False
            if tty:
                return self.connection.interactive(command, forward_agent=self.options.agent)
            stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer
            return self.connection.stream(command or "", stdin=stdin, forward_agent=self.options.agent)
        finally:
            for listener in self.listeners:
                listener.close()


def _wait_for_signal() -> int:
    done = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: done.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        done.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


# -- the system ssh, with the pinned key ---------------------------------------------------------------------
def _host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def write_known_hosts(machine: Machine) -> Path:
    """Write ``<machine dir>/known_hosts``: the machine's pinned key under its current ``host``/``[host]:port``."""
    pinned = machine.record.get("ssh_host_key")
    if not pinned:
        raise SSHError(f"machine {machine.name!r} has no recorded host key (its create did not finish)")
    details = machine.ssh_details()
    path = machine.dir / KNOWN_HOSTS
    line = f"{_host_pattern(details.host, details.port)} {' '.join(pinned.split()[:2])}\n"
    atomic_write(path, line.encode(), mode=0o600)
    return path


def _config_value(value: str) -> str:
    """A value as ssh_config(5) reads it: double-quoted when it holds a space."""
    if '"' in value:
        raise SSHError(f"cannot write a path with a double quote into an SSH config: {value}")
    return f'"{value}"' if any(character.isspace() for character in value) else value


def host_block(machine: Machine, known_hosts: Path) -> str:
    """One ``Host NAME`` block of ssh_config(5) that reaches the machine with its own key and checks its host key."""
    details = machine.ssh_details()
    return "\n".join([
        f"Host {machine.name}",
        f"  HostName {details.host}",
        f"  Port {details.port}",
        f"  User {details.user}",
        f"  IdentityFile {_config_value(str(details.key_path))}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_config_value(str(known_hosts))}",
        "  StrictHostKeyChecking yes",
        "  PasswordAuthentication no",
        "",
    ])


def _ssh_options(machine: Machine) -> list[str]:
    """The system ``ssh``'s options that reach the machine with its key, its host key checked (nothing asked)."""
    details = machine.ssh_details()
    return [
        "-i", str(details.key_path), "-p", str(details.port), "-l", details.user, "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={write_known_hosts(machine)}", "-o", "StrictHostKeyChecking=yes",
        "-o", "PasswordAuthentication=no",
    ]


def native_command(machine: Machine, options: Options, ssh: str = "ssh") -> list[str]:
    """The system ``ssh`` command line for ``machines ssh --native``."""
    return [ssh, *_ssh_options(machine), *options.passed, machine.ssh_details().host, *options.command]


def rsync_command(machine: Machine, local: str, remote: str, *, upload: bool, recursive: bool) -> list[str]:
    """``rsync`` between this computer and the machine over the system ssh with the pinned key (``scp --delta``).

    Only what rsync itself checks protects this side from the machine: no owners, devices or special files are
    taken (``-rlpt``, not ``-a``), setuid/setgid/sticky bits are dropped, and symlinks pointing out of the copied
    tree are skipped (``--safe-links``). Arguments reach the remote rsync unsplit (``--protect-args``).
    """
    if shutil.which("rsync") is None:
        raise UsageError("--delta needs rsync on this computer: install the package rsync")
    connection = machine.ssh()
    if not connection.run("command -v rsync", check=False).ok:
        raise UsageError(f"--delta needs rsync on {machine.name}: install the package rsync there, or copy "
                         "without --delta")
    transport = shlex.join(["ssh", *_ssh_options(machine), "-o", "BatchMode=yes"])
    where = f"{machine.ssh_details().host}:{remote}"
    return ["rsync", "-rlpt" if recursive else "-lpt", "--safe-links", "--chmod=ug-s,a-t", "--protect-args",
            "-e", transport, *((local, where) if upload else (where, local))]


def delta_command(machines: Machines, source: str, destination: str, recursive: bool) -> list[str]:
    """The ``rsync`` command of ``scp --delta`` (between this computer and one machine)."""
    from machines.transfer import split_location

    source_machine, source_path = split_location(source)
    target_machine, target_path = split_location(destination)
    if (source_machine is None) == (target_machine is None):
        raise UsageError("--delta copies between this computer and one machine: give one MACHINE:PATH")
    machine = machines.get(source_machine or target_machine or "")
    if target_machine is not None:
        return rsync_command(machine, source_path, target_path, upload=True, recursive=recursive)
    return rsync_command(machine, target_path, source_path, upload=False, recursive=recursive)

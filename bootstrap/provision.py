"""Provisioning: from "a host I can SSH into" to "a host running our runtime, reachable over mutual TLS".

The phases, each timed through ``Progress.phase``: detect (one round trip gathering every fact), hostname, python,
upload, certs, service, start, wait. Every phase compares what the host has with what it should have and changes
only the difference, so a second run changes nothing and restarts nothing; that is also why ``start`` (after a host
restart, possibly with a new IP) and ``upgrade`` are this same flow. Checks that can refuse (unknown OS, no python3
and no package manager, no space, port 2376 taken by another program) run before anything on the host changes.

What ``bootstrap.provisioner.RuntimeProvisioner`` (the core's ``Provisioner``) calls:
- ``provision(machine, progress)``: create, ``machines provision``, and ``machines start``/``restart`` (also as
  ``after_start``): re-issues the server certificate when the IP changed and starts the daemon when it is not
  running (hosts without systemd lose it at every boot).
- ``upgrade(machine, progress)``: upload the current runtime and restart the daemon (containers keep running).
- ``regenerate_certs(machine, progress)``: a new server certificate, installed, the daemon restarted.

Create options read from ``machine.host_options`` (``machines.hostoptions.HostOptions``): ``api`` ("tls", default,
or "ssh": no TCP port), ``tls_san`` (extra names/IPs for the server certificate) and ``data_root`` (where the runtime
keeps containers and images; default the driver's ``runtime_data_root``, else /var/lib/machines-runtime).
Written to ``machine.record["runtime"]``: version, sha256, api, port, data_root, socket, service, python, phases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import json
import secrets
import shlex
import ssl
import tarfile
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from machines.bootstrap import bundle as bundles
from machines.bootstrap import certs as certificates
from machines.bootstrap import service, sharing
from machines.errors import MachinesError, MachineTimeoutError, ProvisionError, SSHError, StateError
from machines.hostoptions import HostOptions
from machines.machine import Machine
from machines.progress import Progress
from machines.ssh import Connection, Result

SUPPORTED_OS = {
    "debian": "Debian",
    "ubuntu": "Ubuntu",
    "fedora": "Fedora",
    "rhel": "RHEL",
    "centos": "CentOS",
    "rocky": "Rocky Linux",
    "almalinux": "AlmaLinux",
    "amzn": "Amazon Linux",
    "alpine": "Alpine",
}
MIN_PYTHON = (3, 9)
PYTHON_CANDIDATES = ("python3", "python3.13", "python3.12", "python3.11", "python3.10", "python3.9")
INSTALL_PYTHON = {
    "apt-get": "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q --no-install-recommends python3 "
    "|| { apt-get update -q && apt-get install -y -q --no-install-recommends python3; }",
    "dnf": "dnf install -y -q python3 || dnf install -y -q python39",
    "yum": "yum install -y -q python3 || yum install -y -q python39",
    "apk": "apk add --no-cache -q python3",
}
API_TIMEOUT = 30.0
SPACE_MARGIN_KIB = 1024


@dataclasses.dataclass
class Facts:
    """What one round trip learns about the host."""

    values: dict[str, str]
    os_release: dict[str, str]
    pythons: list[tuple[str, tuple[int, int]]]
    package_managers: list[str]
    sums: dict[str, str]

    @property
    def python(self) -> str | None:
        """The first python3 that is new enough for the runtime."""
        return next((path for path, version in self.pythons if version >= MIN_PYTHON), None)


# What every engine's facts script starts with: who we are, the OS, the hostname, package managers, systemd.
HOST_FACTS = """
echo "uid=$(id -u)"
[ -r /etc/os-release ] && sed -n 's/^\\([A-Z_]*\\)=/os.\\1=/p' /etc/os-release
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname)"
for m in apt-get dnf yum apk; do path=$(command -v $m 2>/dev/null) && [ -f "$path" ] && [ -x "$path" ] && echo "pkg=$m"; done
[ -d /run/systemd/system ] && echo "systemd=1"
"""


def port_facts() -> str:
    """Whether the API port is taken, and by which program (what every engine's facts script ends with)."""
    port_hex = f"{service.TLS_PORT:04X}"
    return f"""if awk 'NR > 1 && $4 == "0A" {{ split($2, a, ":"); if (a[2] == "{port_hex}") found = 1 }} END {{ exit !found }}' /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
  echo port_busy=1
  ss -Hltnp "sport = :{service.TLS_PORT}" 2>/dev/null | sed -n 's/.*users:(("\\([^"]*\\)",pid=\\([0-9]*\\).*/port_owner=\\1 (pid \\2)/p' | head -n 1
fi
true
"""


def _facts_script() -> str:
    managed = " ".join(
        [service.LAUNCHER_PATH, service.CONTROL_PATH, service.UNIT_PATH, service.CA_PATH, service.CERT_PATH,
         service.CONFIG_PATH, service.ENV_PATH, service.CRL_PATH]
    )
    candidates = " ".join(PYTHON_CANDIDATES)
    return HOST_FACTS + f"""
for p in {candidates}; do
  path=$(command -v $p 2>/dev/null) || continue
  version=$($path -c 'import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < {MIN_PYTHON})' 2>/dev/null)
  status=$?
  echo "python=$path $version"
  [ $status = 0 ] && break
done
if d=$(command -v docker 2>/dev/null) && [ -f "$d" ]; then
  if head -c 300 "$d" | grep -q {service.SHIM_MARKER}; then
    echo docker=shim; sha256sum "$d" | awk '{{ print "sum=" $2 " " $1 }}'
  else
    echo "docker=$d"
  fi
fi
echo "runtime=$(readlink {service.RUNTIME_PATH} 2>/dev/null)"
echo "runtimes=$(cd {service.LIB_DIR} 2>/dev/null && ls -d runtime-*.pyz 2>/dev/null | tr '\n' ' ')"
sha256sum {managed} 2>/dev/null | awk '{{ print "sum=" $2 " " $1 }}'
mkdir -p {service.LIB_DIR} 2>/dev/null; echo "free_kib=$(df -Pk {service.LIB_DIR} 2>/dev/null | awk 'NR==2 {{print $4}}')"
{service.CONTROL_PATH} status >/dev/null 2>&1 && echo running=1
echo "log_size=$(wc -c < {service.LOG_PATH} 2>/dev/null || echo 0)"
""" + port_facts()


def _parse_facts(output: str) -> Facts:
    values: dict[str, str] = {}
    os_release: dict[str, str] = {}
    pythons: list[tuple[str, tuple[int, int]]] = []
    package_managers: list[str] = []
    sums: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key.startswith("os."):
            try:
                os_release[key[3:]] = " ".join(shlex.split(value))
            except ValueError:
                os_release[key[3:]] = value.strip("\"'")
        elif key == "python":
            path, _, version = value.partition(" ")
            major, _, minor = version.partition(".")
            if major.isdigit() and minor.isdigit():
                pythons.append((path, (int(major), int(minor))))
        elif key == "pkg":
            package_managers.append(value)
        elif key == "sum":
            path, _, digest = value.partition(" ")
            if digest:
                sums[path] = digest
        else:
            values[key] = value
    return Facts(values, os_release, pythons, package_managers, sums)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ProvisioningRun:
    """One provisioning run on one machine; ``run`` does all phases, each method is one phase.

    ``bootstrap.dockerengine`` subclasses it for Docker Engine: the same hostname, certificate and wait phases
    around another engine's install and service (``layout``: where its service files and log are).
    """

    layout = service.RUNTIME_SERVICE
    control_path = service.CONTROL_PATH
    engine_title = "the runtime"
    checks_revocations = True  # the daemon takes --tlscrl (machines revoke); dockerd has no such option
    reports_ready = True  # the daemon writes "READY=1" on the descriptor its supervisor hands it; dockerd does not

    def __init__(
        self,
        machine: Machine,
        progress: Progress | None = None,
        bundle: bundles.Bundle | None = None,
        *,
        new_server_cert: bool = False,
    ) -> None:
        self.machine = machine
        self.new_server_cert = new_server_cert
        self.progress = progress or Progress(machine.name)
        self.store_root = Path(machine.dir).parent.parent
        self.bundle = bundle
        options = machine.host_options
        self.api = options.api
        self.tls_sans: list[str] = list(options.tls_san)
        self.data_root: str = (options.engine_data_root or machine.driver.runtime_data_root
                               or service.DEFAULT_DATA_ROOT)
        self.daemon_json = json.dumps(runtime_daemon_json(options), indent=2, sort_keys=True) + "\n"
        self.environment = options.engine.environment
        self.trust_policy = options.trust_policy
        self.signing_policy = options.signing_policy
        self.signing_keys = machine.signing_keys  # given by this create or set only; never recorded
        self.scan = (options.scan_fail_on, options.scan_db) if options.scan_fail_on and options.scan_db else None
        self.conn: Connection | None = None
        self.facts: Facts | None = None
        self.changed = False  # whether anything the daemon reads changed, so it must restart
        self.staged: list[tuple[str, str]] = []  # (phase, command) changing the host, run by ``apply`` in order
        self.staged_files: list[tuple[str, bytes, int, str]] = []  # (staged path, content, mode, phase) of ``_put``
        self.token = secrets.token_hex(4)  # names this run's staging folders on the host
        self.died_starting = False  # the daemon started by ``start`` closed its readiness pipe without "READY=1"
        self.ip = ""

    # -- helpers --------------------------------------------------------------------------------------------
    def _run(self, command: str, phase: str, *, input: bytes | str | None = None, check: bool = True,  # noqa: A002
             timeout: float | None = None) -> Result:
        assert self.conn is not None
        try:
            result = self.conn.run(command, sudo=True, check=False, input=input, timeout=timeout)
        except SSHError as error:
            raise ProvisionError(f"{self.machine.name}: {phase} failed: {error}") from None
        if check and not result.ok:
            raise ProvisionError(f"{self.machine.name}: {phase} failed: {_last_line(result)}")
        return result

    def _stage(self, command: str, phase: str) -> None:
        """Queue a command that changes the host; ``apply`` runs the queue in order, in one round trip."""
        self.staged.append((phase, command))

    def _put(self, data: bytes, remote: str, mode: int, phase: str) -> None:
        """Queue writing ``data`` to ``remote`` atomically: it travels in ``apply``'s archive to a private folder
        beside ``remote`` (the same file system) and is renamed over it at this point of the queue."""
        directory, _, name = remote.rpartition("/")
        staged = f"{directory}/.machines-{self.token}/{name}"
        self.staged_files.append((staged, data, mode, phase))
        self._stage(f"chmod {mode:o} {shlex.quote(staged)} && mv -f {shlex.quote(staged)} {shlex.quote(remote)}", phase)

    def apply(self, timeout: float | None = None) -> Result | None:
        """Run the queued changes: one command whose input is an archive of the queued files.

        Each phase's SFTP sessions and commands cost a round trip each (and a process on the host); together they
        were about a third of a provisioning. A failing step ends the script and names its phase.
        """
        if not self.staged:
            return None
        folders = sorted({path.rpartition("/")[0] for path, *_ in self.staged_files})
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for folder in folders:
                entry = tarfile.TarInfo(folder.lstrip("/"))
                entry.type, entry.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(entry)
            for path, data, mode, _ in self.staged_files:
                entry = tarfile.TarInfo(path.lstrip("/"))
                entry.size, entry.mode, entry.mtime = len(data), mode, int(time.time())
                tar.addfile(entry, io.BytesIO(data))
        lines = ['fail() { echo "machines: $1 failed" >&2; exit 1; }']
        if folders:
            lines.append(f"trap 'rm -rf {shlex.join(folders)}' EXIT")
            parents = shlex.join(sorted({folder.rpartition('/')[0] for folder in folders}))
            lines.append(f"mkdir -p {parents} && tar -x -f - -C / || fail {shlex.quote(self.staged_files[0][3])}")
        lines += [f"{{ {command}\n}} || fail {shlex.quote(phase)}" for phase, command in self.staged]
        self.staged, self.staged_files = [], []
        result = self._run("\n".join(lines) + "\n", "apply", input=archive.getvalue() if folders else None,
                           check=False, timeout=timeout)
        if not result.ok:
            failed = [line for line in result.stderr.splitlines() if line.startswith("machines: ") and
                      line.endswith(" failed")]
            phase = failed[-1][len("machines: "):-len(" failed")] if failed else "apply"
            causes = [line for line in result.stderr.strip().splitlines() if line not in failed]
            cause = causes[-1] if causes else f"exit status {result.exit_status}"
            raise ProvisionError(f"{self.machine.name}: {phase} failed: {cause}")
        return result

    # -- phases ---------------------------------------------------------------------------------------------
    def gather(self, script: str) -> Facts:
        """Run the facts script (one round trip) and refuse an unsupported OS; the facts, also in ``self.facts``."""
        try:
            self.conn = self.machine.ssh()
            result = self.conn.run(script, sudo=True, check=False)
        except SSHError as error:
            raise ProvisionError(f"{self.machine.name}: detect failed: {error}") from None
        if not result.ok or "uid=" not in result.stdout:
            cause = _last_line(result)
            if "sudo" in cause or "password" in cause:
                cause = f"the SSH user needs passwordless sudo ({cause})"
            raise ProvisionError(f"{self.machine.name}: detect failed: {cause}")
        facts = self.facts = _parse_facts(result.stdout)
        if facts.os_release.get("ID", "") not in SUPPORTED_OS:
            raise ProvisionError(
                f"{self.machine.name}: unsupported operating system {self.os_name()!r}; supported: "
                + ", ".join(dict.fromkeys(SUPPORTED_OS.values()))
            )
        return facts

    def os_name(self) -> str:
        assert self.facts is not None
        return self.facts.os_release.get("PRETTY_NAME") or self.facts.os_release.get("ID") or "no /etc/os-release"

    def check_port(self) -> None:
        """Refuse a TLS API port that another program holds (our own daemon may hold it)."""
        assert self.facts is not None
        values = self.facts.values
        if self.api == "tls" and values.get("port_busy") and not values.get("running"):
            owner = values.get("port_owner") or "another program"
            raise ProvisionError(
                f"{self.machine.name}: port {service.TLS_PORT} is already in use on the host by {owner}; "
                f"stop it, or create the machine with --api ssh"
            )

    def detect(self) -> None:
        """Gather the facts, then refuse early what cannot work, before anything on the host changes."""
        facts = self.gather(_facts_script())
        if facts.python is None and not facts.package_managers:
            raise ProvisionError(
                f"{self.machine.name}: no python3 >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} on the host and no package "
                "manager (apt-get, dnf, yum, apk) to install it"
            )
        self.ip = self.machine.ip()
        free = facts.values.get("free_kib", "")
        wanted = self._bundle().path.stat().st_size // 1024 + SPACE_MARGIN_KIB
        if free.isdigit() and int(free) < wanted and not self._runtime_current():
            raise ProvisionError(
                f"{self.machine.name}: No space left on device: {service.LIB_DIR} has {free} KiB free, "
                f"the runtime needs {wanted} KiB"
            )
        self.check_port()
        self.progress.detail(f"{self.os_name()}, python {facts.python or 'missing'}, service "
                             f"{'systemd' if facts.values.get('systemd') else 'supervisor'}")  # fmt: skip

    def hostname(self) -> None:
        name = self.machine.name
        assert self.facts is not None
        if self.facts.values.get("hostname") == name:
            return
        quoted = shlex.quote(name)
        self._stage(
            f"hostname {quoted} && echo {quoted} > /etc/hostname && "
            f"{{ grep -q '^127.0.1.1[[:space:]]' /etc/hosts && sed -i 's/^127.0.1.1[[:space:]].*/127.0.1.1 {name}/' "
            f"/etc/hosts || echo '127.0.1.1 {name}' >> /etc/hosts; }}",
            "hostname",
        )

    def python(self) -> None:
        assert self.facts is not None
        if self.facts.python is not None:
            return
        manager = self.facts.package_managers[0]
        self.progress.detail(f"installing python3 with {manager}")
        self._run(INSTALL_PYTHON[manager], f"installing python3 with {manager}")
        candidates = " ".join(PYTHON_CANDIDATES)
        result = self._run(
            f"for p in {candidates}; do path=$(command -v $p) && "
            f"$path -c 'import sys; sys.exit(sys.version_info < {MIN_PYTHON})' && echo $path && break; done",
            "python",
            check=False,
        )
        path = result.stdout.strip().splitlines()[:1]
        if not path:
            raise ProvisionError(
                f"{self.machine.name}: python: {manager} installed no python3 >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}"
            )
        self.facts.pythons.insert(0, (path[0], MIN_PYTHON))

    def _bundle(self) -> bundles.Bundle:
        if self.bundle is None:
            self.bundle = bundles.build(self.store_root / "cache")
        return self.bundle

    def _runtime_name(self) -> str:
        return f"runtime-{self._bundle().sha256[:16]}.pyz"

    def _runtime_current(self) -> bool:
        assert self.facts is not None
        return self.facts.values.get("runtime") == self._runtime_name()

    def upload(self) -> None:
        if self._runtime_current():
            self.progress.detail("runtime already on the host")
            return
        name = self._runtime_name()
        self._put(self._bundle().path.read_bytes(), f"{service.LIB_DIR}/{name}", 0o644, "upload")
        self._stage(f"ln -sfn {name} {service.RUNTIME_PATH}", "upload")
        self.changed = True

    def certs(self) -> None:
        if self.api != "tls":
            return
        assert self.facts is not None
        store = certificates.ensure_store_certs(self.store_root)
        # Only what the driver reports and the user asked for: a host cannot talk its way into our certificate.
        sans = certificates.server_sans([self.ip], self.machine.name, self.tls_sans)
        server_cert = Path(self.machine.dir) / certificates.SERVER_CERT
        if self.new_server_cert or not certificates.server_cert_valid(self.machine.dir, store, sans):
            certificates.issue_server_cert(store, self.machine.dir, self.machine.name, sans)
            self.progress.detail(f"issued a server certificate for {', '.join(sans)}")
        certificates.copy_client_certs(store, self.machine.dir)
        ca_data, cert_data = store.ca_cert.read_bytes(), server_cert.read_bytes()
        if self.checks_revocations:
            crl_data = sharing.revocation_list(Path(self.store_root))
            if self.facts.sums.get(service.CRL_PATH) != _sha256(crl_data):  # the daemon re-reads it: no restart
                self._stage(f"mkdir -p {service.ETC_DIR} && chmod 700 {service.ETC_DIR}", "certs")
                self._put(crl_data, service.CRL_PATH, 0o600, "certs")
        if (
            self.facts.sums.get(service.CA_PATH) == _sha256(ca_data)
            and self.facts.sums.get(service.CERT_PATH) == _sha256(cert_data)
        ):
            return
        self._stage(f"mkdir -p {service.ETC_DIR} && chmod 700 {service.ETC_DIR}", "certs")
        key_data = (Path(self.machine.dir) / certificates.SERVER_KEY).read_bytes()
        for data, remote in ((ca_data, service.CA_PATH), (key_data, service.KEY_PATH), (cert_data, service.CERT_PATH)):
            self._put(data, remote, 0o600, "certs")
        self.changed = True

    def _python(self) -> str:
        assert self.facts is not None and self.facts.python is not None
        return self.facts.python

    def install_service(self) -> None:
        assert self.facts is not None
        config = service.DaemonConfig(python=self._python(), data_root=self.data_root, api=self.api)
        files = [  # (path, content, mode, whether a change needs a daemon restart)
            (service.LAUNCHER_PATH, service.launcher(config), 0o755, True),
            (service.CONTROL_PATH, service.control_script(), 0o755, False),
            (service.CONFIG_PATH, self.daemon_json, 0o600, True),
            (service.ENV_PATH, service.environment_file(self.environment), 0o600, True),
        ]
        if self.facts.values.get("systemd"):
            files.append((service.UNIT_PATH, service.systemd_unit(), 0o644, True))
        docker = self.facts.values.get("docker")
        if docker in (None, "shim"):
            files.append((service.SHIM_PATH, service.docker_shim(self._python()), 0o755, False))
        elif docker:
            self.progress.detail(f"kept the host's own docker CLI {docker} (its 'system dial-stdio' reaches our socket)")
        self._stage(f"mkdir -p {service.LIB_DIR} {shlex.quote(self.data_root)} && mkdir -p {service.ETC_DIR} && "
                    f"chmod 700 {service.ETC_DIR}", "service")
        self.install_files(files)

    def install_files(self, files: list[tuple[str, str, int, bool]]) -> None:
        """Write each ``(path, content, mode, restart)`` the host does not have as it is; note a needed restart."""
        assert self.facts is not None
        for path, text, mode, restart in files:
            data = text.encode()
            if self.facts.sums.get(path) == _sha256(data):
                continue
            self._put(data, path, mode, "service")
            self.changed = self.changed or restart
        root = self.data_root.rstrip("/")
        # The daemon reads the policies afresh for every pull and push: no restart needed. None removes them.
        removed = [name for name, doc in ((service.TRUST_POLICY, self.trust_policy),
                                          (service.SIGNING_POLICY, self.signing_policy),
                                          (service.SIGNING_KEYS, self.signing_policy)) if doc is None]
        if removed:
            self._stage("rm -rf " + " ".join(shlex.quote(f"{root}/{name}") for name in removed), "service")
        if self.trust_policy is not None:
            self._put(self.trust_policy.encode(), f"{root}/{service.TRUST_POLICY}", 0o600, "service")
        if self.signing_policy is not None:
            self._install_signing(root, self.signing_policy)
        if self.scan is not None:
            self._install_scan(root, *self.scan)

    def _install_signing(self, root: str, policy: str) -> None:
        """signing.json and, when this change gave them, its keys, in a 0700 folder so no other user sees a key
        even while it is written; keys the policy no longer names are deleted."""
        if self.signing_keys:
            keys = shlex.quote(f"{root}/{service.SIGNING_KEYS}")
            self._stage(f"mkdir -p -m 700 {keys} && chmod 700 {keys}", "signing")
            for name, pem in self.signing_keys:
                self._put(pem, f"{root}/{service.SIGNING_KEYS}/{name}", 0o600, "signing")
            kept = " ".join(f"! -name {shlex.quote(name)}" for name, _ in self.signing_keys)
            # Not the staging folder the new keys came through (``_put``'s dot folder, removed at the end).
            self._stage(f"find {keys} -mindepth 1 -maxdepth 1 {kept} ! -name '.machines-*' -exec rm -rf {{}} +",
                        "signing")
        self._put(policy.encode(), f"{root}/{service.SIGNING_POLICY}", 0o600, "signing")

    def _install_scan(self, root: str, fail_on: str, folder: str) -> None:
        """scan.json and the OSV records (``*.json``, ``*.zip`` under ``folder``, flattened) for scan on arrival."""
        records = sorted(p for p in Path(folder).rglob("*") if p.suffix in (".json", ".zip") and p.is_file())
        if not records:
            raise ProvisionError(f"{self.machine.name}: no OSV records (*.json, *.zip) in {folder} for --engine-scan")
        folder = shlex.quote(f"{root}/{service.SCAN_DB}")
        self._stage(f"mkdir -p {folder} && rm -rf {folder}/*", "scan")  # not the staging folder (a dot folder)
        for number, path in enumerate(records):
            self._put(path.read_bytes(), f"{root}/{service.SCAN_DB}/{number:06d}{path.suffix}", 0o644, "scan")
        self._put(json.dumps({"fail_on": fail_on}).encode(), f"{root}/{service.SCAN_SETTINGS}", 0o644, "scan")

    def start(self) -> None:
        assert self.facts is not None
        if not self.changed and self.facts.values.get("running"):
            self.progress.detail(f"{self.engine_title} already running with this configuration")
            self.apply()  # what needs no restart (a revocation list, a trust policy)
            return
        self._stage(f"{self.control_path} restart" + (" --ready" if self.reports_ready else ""), "start")
        # Ends once the new daemon serves (its "READY=1") or has died; at once under systemd (no output).
        try:
            result = self.apply(timeout=API_TIMEOUT)
        except MachineTimeoutError:
            return  # neither ready nor dead yet: ``wait`` polls, and names the cause if it never answers
        supervised = not self.facts.values.get("systemd")
        self.died_starting = bool(self.reports_ready and supervised and result and "READY=1" not in result.stdout)

    def wait(self) -> dict[str, Any]:
        """Ask the API for /version (over mutual TLS, or through SSH for --api ssh) until it answers.

        A daemon that reported readiness answers the first request. Otherwise (systemd, Docker Engine) this polls,
        and from the second second on the daemon's log since this start is checked too (at once when the daemon
        died before it was ready), so a daemon that exits at once (bad flags, a port taken, a broken runtime) fails
        the wait with its own message instead of a timeout.
        """
        started = time.monotonic()
        next_log_check = started + (0.0 if self.died_starting else 1.0)
        last_error = "no answer"
        while time.monotonic() < started + API_TIMEOUT:
            try:
                return self._version_over_tls() if self.api == "tls" else self._version_over_ssh()
            except (OSError, ssl.SSLError, http.client.HTTPException, ValueError) as error:
                last_error = str(error) or type(error).__name__
            if time.monotonic() >= next_log_check:
                next_log_check = time.monotonic() + 1.0
                failure = self._daemon_failure()
                if failure:
                    raise ProvisionError(f"{self.machine.name}: {self.engine_title} failed to start: {failure}{self._log_hint()}")
            time.sleep(0.1)
        failure = self._daemon_failure() or last_error
        raise ProvisionError(
            f"{self.machine.name}: {self.engine_title} did not answer within {API_TIMEOUT:g}s: {failure}{self._log_hint()}"
        )

    def _log_hint(self) -> str:
        return f" (log: {self.layout.log} on the host)"

    @staticmethod
    def _is_fatal(line: str) -> bool:
        """Whether a daemon log line says why it stopped."""
        return line.startswith("runtime: ") or "Error" in line.split(":")[0]

    def _daemon_failure(self) -> str | None:
        """The fatal line the daemon logged since this provisioning started it, if any."""
        assert self.facts is not None
        offset = int(self.facts.values.get("log_size") or 0) + 1
        output = self._run(f"tail -c +{offset} {self.layout.log} 2>/dev/null | tail -n 20", "wait", check=False).stdout
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        fatal = [line for line in lines if self._is_fatal(line)]
        if not fatal:
            return None
        cause = fatal[-1]
        if "Address already in use" in cause:
            cause = f"port {service.TLS_PORT} is already in use on the host ({cause})"
        return cause

    def _version_over_tls(self) -> dict[str, Any]:
        context = client_ssl_context(self.machine.dir)
        # Where the driver says the API is reached: a NAT VM's is a forwarded port on 127.0.0.1, not 2376 (which may
        # be another machine's, signed by the same CA).
        where = urllib.parse.urlsplit(self.machine.driver.url(service.TLS_PORT))
        connection = http.client.HTTPSConnection(where.hostname or self.ip, where.port or service.TLS_PORT,
                                                 context=context, timeout=5)
        try:
            connection.request("GET", "/version")
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise ValueError(f"/version answered {response.status}")
        version: dict[str, Any] = json.loads(body)
        return version

    def _version_over_ssh(self) -> dict[str, Any]:
        assert self.conn is not None
        request = "GET /version HTTP/1.0\r\nHost: docker\r\n\r\n"
        result = self.conn.run(
            f"{self._python()} {service.RUNTIME_PATH} dial-stdio --host unix://{service.SOCKET_PATH}",
            sudo=True,
            check=False,
            input=request,
            timeout=10,
        )
        head, _, body = result.stdout.partition("\r\n\r\n")
        if not head.startswith("HTTP/1.") or " 200 " not in head.splitlines()[0]:
            raise ValueError(head.splitlines()[0] if head else _last_line(result))
        version: dict[str, Any] = json.loads(body)
        return version

    def _roll_back_runtime(self) -> str:
        """After a new runtime failed to start: put the one that ran before back, so the machine keeps working."""
        assert self.facts is not None
        previous = self.facts.values.get("runtime")
        if not previous or self._runtime_current():
            return ""
        # The log is measured once the failed runtime is stopped: its supervisor keeps relaunching it, and a
        # launch still starting when the size was taken would log its failure as the old runtime's own.
        result = self._run(
            f"{service.CONTROL_PATH} stop >&2; wc -c < {service.LOG_PATH}; "
            f"ln -sfn {shlex.quote(previous)} {service.RUNTIME_PATH} && {service.CONTROL_PATH} start",
            "rollback",
            check=False,
        )
        try:
            if not result.ok:
                raise ProvisionError(_last_line(result))
            self.facts.values["log_size"] = result.stdout.split()[0]  # judge the old runtime by its own log lines
            self.wait()
        except ProvisionError:
            return "; putting the previous runtime back failed too"
        return "; the previous runtime was put back"

    def cleanup(self) -> None:
        """Remove runtime versions no daemon uses any more (only after the new one answers)."""
        assert self.facts is not None
        if not set(self.facts.values.get("runtimes", "").split()) - {self._runtime_name()}:
            return  # nothing else was there: no round trip
        self._run(
            f"find {service.LIB_DIR} -maxdepth 1 -name 'runtime-*.pyz' ! -name {self._runtime_name()} -delete",
            "cleanup",
            check=False,
        )

    def phases(self) -> list[tuple[str, Callable[[], None]]]:
        """The phases before "wait for API", by title."""
        return [
            ("detect", self.detect),
            ("hostname", self.hostname),
            *self.engine_phases(),
            ("certificates", self.certs),
            ("service", self.install_service),
            ("start", self.start),
        ]

    def engine_phases(self) -> list[tuple[str, Callable[[], None]]]:
        """What puts this engine on the host: python and the runtime zipapp."""
        return [("python", self.python), ("upload runtime", self.upload)]

    def run(self) -> None:
        for title, phase in self.phases():
            with self.progress.phase(title):
                phase()
        with self.progress.phase("wait for API"):
            try:
                version = self.wait()
            except ProvisionError as error:
                raise ProvisionError(f"{error}{self._roll_back_runtime()}") from None
        self.cleanup()
        self.save_runtime(self.engine_fields(version))

    def engine_fields(self, version: dict[str, Any]) -> dict[str, Any]:
        """What this engine records in ``runtime`` besides the common fields, given its ``/version`` answer."""
        return {"version": version.get("Version", self._bundle().version), "sha256": self._bundle().sha256,
                "python": self._python()}  # fmt: skip

    def save_runtime(self, fields: dict[str, Any]) -> None:
        """Record what runs now in the machine's ``runtime`` (the fields every engine has, and ``fields``)."""
        assert self.facts is not None
        self.machine.runtime.update(
            {
                "api": self.api,
                "port": service.TLS_PORT if self.api == "tls" else None,
                "data_root": self.data_root,
                "socket": service.SOCKET_PATH,
                "service": "systemd" if self.facts.values.get("systemd") else "supervisor",
                "phases": {title: round(seconds, 4) for title, seconds in self.progress.timings},
                **fields,
            }
        )
        self.machine.save()


def runtime_daemon_json(options: HostOptions) -> dict[str, Any]:
    """The daemon.json our runtime gets: the options' directives but the data root (it is on the command line)."""
    config = options.daemon_json()
    config.pop("data-root", None)
    return config


def daemon_json_on_host(machine: Machine, path: str = service.CONFIG_PATH) -> dict[str, Any] | None:
    """The engine's daemon.json as the host has it (``None`` when it has none or it is not JSON)."""
    result = machine.ssh().run(f"cat {path}", sudo=True, check=False)
    try:
        config = json.loads(result.stdout) if result.ok else None
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _last_line(result: Result) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {result.exit_status}"


def client_ssl_context(machine_dir: str | Path) -> ssl.SSLContext:
    """A client context that trusts only the store CA and presents the client certificate (mutual TLS)."""
    directory = Path(machine_dir)
    context = ssl.create_default_context(cafile=str(directory / certificates.CA_CERT))
    context.load_cert_chain(str(directory / certificates.CLIENT_CERT), str(directory / certificates.CLIENT_KEY))
    return context


def provision(
    machine: Machine,
    progress: Progress | None = None,
    *,
    bundle: bundles.Bundle | None = None,
    new_server_cert: bool = False,
) -> None:
    """Install (or bring up to date) the runtime on the machine and wait until its API answers."""
    try:
        ProvisioningRun(machine, progress, bundle, new_server_cert=new_server_cert).run()
    except MachinesError:
        raise
    except OSError as error:
        raise ProvisionError(f"{machine.name}: provisioning failed: {error}") from None


def after_start(machine: Machine, progress: Progress | None = None) -> None:
    """Hook for ``start``/``restart``: new server certificate if the IP changed, daemon started if not running."""
    provision(machine, progress)


def upgrade(machine: Machine, progress: Progress | None = None, *, bundle: bundles.Bundle | None = None) -> None:
    """Upload the current runtime and restart the daemon on it; containers and images stay."""
    before = machine.record.get("runtime", {}).get("sha256")
    provision(machine, progress, bundle=bundle)
    if progress is not None and before == machine.record["runtime"]["sha256"]:
        progress.note(f"runtime {machine.record['runtime']['version']} was already current")


def regenerate_certs(machine: Machine, progress: Progress | None = None) -> None:
    """Issue a new server certificate for the current addresses, install it and restart the runtime."""
    if not machine.host_options.api_over_tls:
        raise StateError(f"machine {machine.name!r} has no TLS API (created with --api ssh): it has no certificate")
    provision(machine, progress, new_server_cert=True)

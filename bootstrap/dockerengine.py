"""``DockerEngineProvisioner``: the ``machines.machine.Provisioner`` for machines created with ``--engine docker``.

Docker Engine instead of our bundled runtime, for what only it has (Swarm mode, see ``machines.swarm``). It is
configured with the same model as our runtime: the unix socket ``/var/run/docker.sock`` for SSH access, TCP 2376
with mutual TLS (the store's CA, the machine's server certificate) for ``--api tls``, the data root, labels and the
engine options, all in one ``daemon.json`` of ours (``/etc/machines/dockerd.json``; a host's own
``/etc/docker/daemon.json`` is not read). Like Docker Machine's provisioners it installs the engine with the host's
package manager, unless a ``dockerd`` is already there: then that engine is adopted, never reinstalled. It runs as
``docker.service`` with a drop-in of ours where systemd is PID 1, else under the same supervisor script as our
runtime (``dockerd --pidfile``). ``upgrade`` is a package upgrade of whichever package owns ``dockerd``.

Written to ``machine.record["runtime"]``: engine ("docker"), version, package, adopted, api, port, data_root,
socket, service, phases.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import Any

from machines.bootstrap import provision as provisioning
from machines.bootstrap import service
from machines.bootstrap.provisioner import RuntimeProvisioner
from machines.errors import MachinesError, ProvisionError, StateError
from machines.hostoptions import HostOptions
from machines.machine import Machine
from machines.progress import Progress

ENGINE = "docker"
DEFAULT_DATA_ROOT = "/var/lib/docker"
CONFIG_PATH = f"{service.ETC_DIR}/dockerd.json"  # 0600 like the runtime's: options may hold passwords
OUR_KEYS = ("hosts", "data-root", "pidfile", "exec-root", "tlsverify", "tlscacert", "tlscert", "tlskey")
ENV_PATH = f"{service.ETC_DIR}/dockerd.env"  # --engine-env (proxies): dockerd 20.10 reads them from its environment
CONTROL_PATH = f"{service.LIB_DIR}/docker-engine"
DROP_IN_PATH = "/etc/systemd/system/docker.service.d/10-machines.conf"
DOCKER_SERVICE = service.ServiceLayout(
    unit="docker.service",
    launcher=f"{service.LIB_DIR}/run-dockerd",
    log="/var/log/machines-dockerd.log",
    supervisor_pid="/var/run/machines-dockerd-supervisor.pid",
    daemon_pid="/var/run/docker.pid",
    exec_root="/var/run/docker",
    match="dockerd",
    description="Docker Engine (dockerd)",
)
# Per package manager: the package that provides Docker Engine, and how to install it (Docker Machine's
# provisioners install Docker's own packages from get.docker.com; the distributions' packages need no third-party
# repository).
INSTALL = {
    "apt-get": "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q --no-install-recommends docker.io "
    "|| { apt-get update -q && apt-get install -y -q --no-install-recommends docker.io; }",
    "dnf": "dnf install -y -q moby-engine || dnf install -y -q docker",
    "yum": "yum install -y -q docker || yum install -y -q moby-engine",
    "apk": "apk add --no-cache -q docker",
}
UPGRADE = {
    "apt-get": "export DEBIAN_FRONTEND=noninteractive; apt-get update -q && "
    "apt-get install -y -q --only-upgrade {package}",
    "dnf": "dnf upgrade -y -q {package}",
    "yum": "yum update -y -q {package}",
    "apk": "apk upgrade --no-cache -q {package}",
}


def _facts_script() -> str:
    managed = " ".join([DOCKER_SERVICE.launcher, CONTROL_PATH, DROP_IN_PATH, CONFIG_PATH, ENV_PATH, service.CA_PATH,
                        service.CERT_PATH])
    return provisioning.HOST_FACTS + f"""
{_dockerd_facts()}
sha256sum {managed} 2>/dev/null | awk '{{ print "sum=" $2 " " $1 }}'
{CONTROL_PATH} status >/dev/null 2>&1 && echo running=1
echo "log_size=$(wc -c < {DOCKER_SERVICE.log} 2>/dev/null || echo 0)"
""" + provisioning.port_facts()


def _dockerd_facts() -> str:
    """Where ``dockerd`` is, its version and the package that owns it (what ``upgrade`` upgrades)."""
    return """if d=$(command -v dockerd 2>/dev/null) && [ -f "$d" ]; then
  echo "dockerd=$d"
  echo "dockerd_version=$("$d" --version 2>/dev/null | sed -n 's/^Docker version \\([^,]*\\).*/\\1/p')"
  real=$(readlink -f "$d")
  owner=$( { dpkg-query -S "$real" || dpkg-query -S "$d"; } 2>/dev/null | head -n 1 | cut -d: -f1)
  [ -n "$owner" ] || owner=$(rpm -qf --qf '%{NAME}\\n' "$real" 2>/dev/null | head -n 1)
  [ -n "$owner" ] || owner=$(apk info -q --who-owns "$real" 2>/dev/null | sed -n 's/.* is owned by \\(.*\\)-[0-9].*/\\1/p')
  echo "package=$owner"
fi"""


def user_config(options: HostOptions) -> dict[str, Any]:
    """The part of dockerd's configuration the user chose: engine options and labels (the data root apart)."""
    config = provisioning.runtime_daemon_json(options)
    config.pop("proxies", None)  # dockerd 20.10 knows no "proxies" directive: they are in its environment
    return config


def daemon_config(options: HostOptions, data_root: str, api: str) -> dict[str, Any]:
    """dockerd's configuration: the user's part, then the data root and our sockets and TLS."""
    config = user_config(options)
    config.update({
        "hosts": [f"unix://{service.SOCKET_PATH}"],
        "data-root": data_root,
        "pidfile": DOCKER_SERVICE.daemon_pid,
        "exec-root": DOCKER_SERVICE.exec_root,
    })  # fmt: skip
    if api == "tls":
        config["hosts"].append(f"tcp://0.0.0.0:{service.TLS_PORT}")
        config.update(tlsverify=True, tlscacert=service.CA_PATH, tlscert=service.CERT_PATH, tlskey=service.KEY_PATH)
    return config


def config_on_host(machine: Machine) -> dict[str, Any] | None:
    """The user's part of the configuration the host has now (``None``: none, or not JSON)."""
    config = provisioning.daemon_json_on_host(machine, CONFIG_PATH)
    return None if config is None else {key: value for key, value in config.items() if key not in OUR_KEYS}


def launcher(dockerd: str) -> str:
    """The one place dockerd's command line lives; systemd's drop-in and the supervisor both exec it."""
    return (
        "#!/bin/sh\n# Installed by machines: Docker Engine's command line and environment (settings: the config file).\n"
        f"set -a\n[ -r {ENV_PATH} ] && . {ENV_PATH}\nset +a\n"
        f"exec {shlex.quote(dockerd)} --config-file {CONFIG_PATH}\n"
    )


def systemd_drop_in() -> str:
    """Replaces the packaged unit's command line (``-H fd://`` would clash with the hosts of our config)."""
    return f"""# Installed by machines.
[Service]
ExecStart=
ExecStart={DOCKER_SERVICE.launcher}
StandardOutput=append:{DOCKER_SERVICE.log}
StandardError=append:{DOCKER_SERVICE.log}
"""


class DockerEngineRun(provisioning.ProvisioningRun):
    """One provisioning run of Docker Engine: detect, hostname, engine, certificates, service, start, wait."""

    layout = DOCKER_SERVICE
    control_path = CONTROL_PATH
    engine_title = "Docker Engine"
    checks_revocations = False  # so machines share/revoke refuse Docker Engine machines (machines.share)
    reports_ready = False  # dockerd reports readiness to systemd only (sd_notify): its supervisor polls the API

    def __init__(self, machine: Machine, progress: Progress | None = None, *, new_server_cert: bool = False,
                 upgrade: bool = False) -> None:
        super().__init__(machine, progress, new_server_cert=new_server_cert)
        options = machine.host_options
        self.data_root = options.engine_data_root or machine.driver.runtime_data_root or DEFAULT_DATA_ROOT
        self.upgrade = upgrade
        self.adopted = bool(machine.runtime.get("adopted"))

    def detect(self) -> None:
        """Gather the facts; refuse an unknown OS, or no dockerd and no package manager, before changing anything."""
        facts = self.gather(_facts_script())
        if not facts.values.get("dockerd") and not facts.package_managers:
            raise ProvisionError(
                f"{self.machine.name}: no Docker Engine (dockerd) on the host and no package manager "
                "(apt-get, dnf, yum, apk) to install it"
            )
        self.ip = self.machine.ip()
        self.check_port()
        self.progress.detail(f"{self.os_name()}, dockerd {facts.values.get('dockerd_version') or 'missing'}, "
                             f"service {'systemd' if facts.values.get('systemd') else 'supervisor'}")  # fmt: skip

    def engine(self) -> None:
        """Install Docker Engine with the package manager, adopt the one there, or upgrade it (``upgrade``)."""
        assert self.facts is not None
        values = self.facts.values
        if values.get("dockerd") and not self.upgrade:
            self.adopted = self.adopted or not self.machine.runtime  # there before our first provisioning
            self.progress.detail(f"Docker Engine {values.get('dockerd_version')} already installed "
                                 f"({values.get('package') or 'no package'})")  # fmt: skip
            return
        if not self.facts.package_managers:
            raise ProvisionError(f"{self.machine.name}: no package manager (apt-get, dnf, yum, apk) to upgrade "
                                 "Docker Engine with")  # fmt: skip
        manager = self.facts.package_managers[0]
        if values.get("dockerd"):
            package = values.get("package") or self.machine.runtime.get("package")
            if not package:
                raise ProvisionError(f"{self.machine.name}: {values['dockerd']} belongs to no package: upgrade it "
                                     "the way it was installed")  # fmt: skip
            self.progress.detail(f"upgrading {package} with {manager}")
            self._run(UPGRADE[manager].format(package=shlex.quote(package)), f"upgrading {package} with {manager}")
        else:
            self.progress.detail(f"installing Docker Engine with {manager}")
            self._run(INSTALL[manager], f"installing Docker Engine with {manager}")
        result = self._run(f"sh -c {shlex.quote(_dockerd_facts())}", "engine", check=False)
        found = provisioning._parse_facts(result.stdout).values
        if not found.get("dockerd"):
            raise ProvisionError(f"{self.machine.name}: {manager} installed no dockerd")
        upgraded = found.get("dockerd_version") != values.get("dockerd_version")
        values.update(found)
        self.changed = self.changed or upgraded

    def install_service(self) -> None:
        assert self.facts is not None
        config = daemon_config(self.machine.host_options, self.data_root, self.api)
        files = [  # (path, content, mode, whether a change needs a daemon restart)
            (CONFIG_PATH, json.dumps(config, indent=2, sort_keys=True) + "\n", 0o600, True),
            (ENV_PATH, service.environment_file(self.environment), 0o600, True),
            (DOCKER_SERVICE.launcher, launcher(self.facts.values["dockerd"]), 0o755, True),
            (CONTROL_PATH, service.control_script(DOCKER_SERVICE), 0o755, False),
        ]
        if self.facts.values.get("systemd"):
            files.append((DROP_IN_PATH, systemd_drop_in(), 0o644, True))
        self._stage(f"mkdir -p {service.LIB_DIR} {service.ETC_DIR} {shlex.quote(self.data_root)} "
                    f"{shlex.quote(DROP_IN_PATH.rsplit('/', 1)[0]) if self.facts.values.get('systemd') else ''} && "
                    f"chmod 700 {service.ETC_DIR}", "service")  # fmt: skip
        self.install_files(files)

    @staticmethod
    def _is_fatal(line: str) -> bool:
        return "level=fatal" in line or line.startswith(("failed to start daemon", "unable to configure the Docker"))

    def _version_over_ssh(self) -> dict[str, Any]:
        assert self.conn is not None
        result = self.conn.run(f"docker -H unix://{service.SOCKET_PATH} version --format '{{{{json .Server}}}}'",
                               sudo=True, check=False, timeout=10)  # fmt: skip
        if not result.ok:
            raise ValueError(provisioning._last_line(result))
        version: dict[str, Any] = json.loads(result.stdout)
        return version

    def engine_phases(self) -> list[tuple[str, Callable[[], None]]]:
        return [("docker engine", self.engine)]

    def _roll_back_runtime(self) -> str:
        return ""  # the package manager keeps one version of Docker Engine: there is nothing to go back to

    def cleanup(self) -> None:
        """Nothing: the package manager owns the engine's files."""

    def engine_fields(self, version: dict[str, Any]) -> dict[str, Any]:
        assert self.facts is not None
        return {
            "engine": ENGINE,
            "version": version.get("Version") or self.facts.values.get("dockerd_version"),
            "package": self.facts.values.get("package") or None,
            "adopted": self.adopted,
        }


def provision(machine: Machine, progress: Progress | None = None, *, new_server_cert: bool = False,
              upgrade: bool = False) -> None:
    """Install or adopt Docker Engine, configure it as ours and wait until its API answers."""
    try:
        DockerEngineRun(machine, progress, new_server_cert=new_server_cert, upgrade=upgrade).run()
    except MachinesError:
        raise
    except OSError as error:
        raise ProvisionError(f"{machine.name}: provisioning failed: {error}") from None


class DockerEngineProvisioner(RuntimeProvisioner):
    """Docker Engine from the host's packages; reached exactly as our runtime is (``env``, ``config``, forwarder)."""

    def check_options(self, options: HostOptions) -> None:
        """Nothing beyond ``HostOptions``' own checks: every directive ``--engine-opt`` takes is dockerd's."""

    def engine_config(self, options: HostOptions) -> dict[str, Any]:
        return user_config(options)

    def engine_config_on_host(self, machine: Machine) -> dict[str, Any] | None:
        return config_on_host(machine)

    def daemon_log(self, machine: Machine) -> str:
        return DOCKER_SERVICE.log

    def provision(self, machine: Machine, progress: Progress) -> None:
        provision(machine, progress)

    def upgrade(self, machine: Machine, progress: Progress) -> None:
        before = machine.runtime.get("version")
        provision(machine, progress, upgrade=True)
        if before == machine.runtime.get("version"):
            progress.note(f"Docker Engine {before} was already the newest its package manager offers")

    def regenerate_certs(self, machine: Machine, progress: Progress) -> None:
        if not machine.host_options.api_over_tls:
            raise StateError(f"machine {machine.name!r} has no TLS API (created with --api ssh): it has no certificate")
        provision(machine, progress, new_server_cert=True)

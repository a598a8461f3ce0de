"""The files provisioning installs on a host to run the runtime as a service, rendered as text.

One control script (``machines-runtime start|stop|restart|status``) decides at every call between systemd (when
systemd is PID 1) and a small supervisor that restarts the daemon when it dies; hosts without systemd (containers,
the test hosts, minimal images) get the supervisor, started with ``setsid nohup`` so it outlives the SSH session.
Both stop only the daemon process, never its process group, so containers keep running across a restart.
"""

from __future__ import annotations

import dataclasses
import shlex

LIB_DIR = "/usr/local/lib/machines"
ETC_DIR = "/etc/machines"
RUNTIME_PATH = f"{LIB_DIR}/runtime.pyz"  # a symlink to runtime-<hash>.pyz, swapped atomically on upgrade
LAUNCHER_PATH = f"{LIB_DIR}/run-daemon"
CONTROL_PATH = f"{LIB_DIR}/machines-runtime"
UNIT_PATH = "/etc/systemd/system/machines-runtime.service"
SHIM_PATH = "/usr/local/bin/docker"
SHIM_MARKER = "machines-docker-shim"
LOG_PATH = "/var/log/machines-runtime.log"
DAEMON_PID = "/var/run/machines-runtime.pid"
SUPERVISOR_PID = "/var/run/machines-supervisor.pid"
EXEC_ROOT = "/var/run/machines-runtime"
SOCKET_PATH = "/var/run/docker.sock"
DEFAULT_DATA_ROOT = "/var/lib/machines-runtime"
TRUST_POLICY = "policy.json"  # in the data root: the runtime's runtime.images.trust.POLICY_FILE
SIGNING_POLICY = "signing.json"  # in the data root: runtime.images.signing.SIGNING_FILE
SIGNING_KEYS = "signing"  # in the data root (0700): runtime.images.signing.KEYS_DIR, each key 0600
SCAN_SETTINGS = "scan.json"  # in the data root: runtime.images.scan.arrival.SCAN_FILE
SCAN_DB = "osv"  # in the data root: runtime.images.scan.arrival.OSV_DIR
TLS_PORT = 2376
CA_PATH, CERT_PATH, KEY_PATH = f"{ETC_DIR}/ca.pem", f"{ETC_DIR}/server.pem", f"{ETC_DIR}/server-key.pem"
CRL_PATH = f"{ETC_DIR}/crl.pem"  # the store CA's revocation list (machines revoke); the daemon re-reads it
CONFIG_PATH = f"{ETC_DIR}/daemon.json"  # the engine options, in dockerd's daemon.json names (0600: proxy passwords)
READY_FD = "MACHINES_READY_FD"  # the runtime's runtime.__main__.READY_FD: the descriptor it reports readiness on
ENV_PATH = f"{ETC_DIR}/daemon.env"  # the daemon's environment (--engine-env), sourced by the launcher (0600)


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """What the daemon is started with; a change of any field means the daemon must restart."""

    python: str
    data_root: str
    api: str  # "tls": unix socket + TCP 2376 with mutual TLS; "ssh": unix socket only
    socket_path: str = SOCKET_PATH
    port: int = TLS_PORT

    def argv(self) -> list[str]:
        argv = [
            self.python, RUNTIME_PATH, "daemon",
            "--config-file", CONFIG_PATH,
            "--data-root", self.data_root,
            "--exec-root", EXEC_ROOT,
            "--host", f"unix://{self.socket_path}",
            "--pidfile", DAEMON_PID,
        ]  # fmt: skip
        if self.api == "tls":
            argv += [
                "--host", f"tcp://0.0.0.0:{self.port}",
                "--tlsverify", "--tlscacert", CA_PATH, "--tlscert", CERT_PATH, "--tlskey", KEY_PATH,
                "--tlscrl", CRL_PATH,
            ]  # fmt: skip
        return argv


def launcher(config: DaemonConfig) -> str:
    """The one place the daemon's command line lives; systemd and the supervisor both exec it."""
    return (f"#!/bin/sh\n# Installed by machines: the runtime daemon's command line and environment.\n"
            f"set -a\n[ -r {ENV_PATH} ] && . {ENV_PATH}\nset +a\nexec {shlex.join(config.argv())}\n")


def environment_file(variables: dict[str, str]) -> str:
    """The daemon's environment as shell assignments, quoted (sourced by the launcher with ``set -a``)."""
    lines = [f"{key}={shlex.quote(value)}" for key, value in variables.items()]
    return "# Installed by machines: the runtime daemon's environment (machines set --engine-env).\n" + "".join(
        line + "\n" for line in lines)


@dataclasses.dataclass(frozen=True)
class ServiceLayout:
    """Where one supervised daemon's service files live on the host: our runtime's, or Docker Engine's dockerd.

    ``match``: a string of the daemon's and the supervisor's command lines, so a pid file left from before a reboot
    never names another process.
    """

    unit: str
    launcher: str
    log: str
    supervisor_pid: str
    daemon_pid: str
    exec_root: str
    match: str
    description: str


RUNTIME_SERVICE = ServiceLayout(
    unit="machines-runtime.service", launcher=LAUNCHER_PATH, log=LOG_PATH, supervisor_pid=SUPERVISOR_PID,
    daemon_pid=DAEMON_PID, exec_root=EXEC_ROOT, match=LIB_DIR, description="the container runtime",
)


def control_script(layout: ServiceLayout = RUNTIME_SERVICE) -> str:
    """``machines-runtime start|stop|restart [--ready]|status``: the host-side service control, systemd or supervised.

    ``--ready`` (supervised daemons that report readiness, as our runtime does): the command's output stays open
    until the daemon it starts writes ``READY=1`` there or dies, so the caller waits on that instead of polling.
    Under systemd, or when the supervisor already runs, it returns at once with no output.
    """
    return f"""#!/bin/sh
# Installed by machines: runs {layout.description} under systemd when systemd is PID 1, else under a supervisor
# that restarts the daemon if it dies. Stopping signals the daemon only.
set -u
UNIT={layout.unit}
SUPERVISOR_PID={layout.supervisor_pid}
DAEMON_PID={layout.daemon_pid}

# A pid file names a live process of ours (not a pid reused after a reboot on hosts where /var/run persists).
alive() {{
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null &&
    tr '\\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -e {shlex.quote(layout.match)} -e {LIB_DIR}
}}
systemd() {{ [ -d /run/systemd/system ]; }}

# With "ready", fd 3 is the caller's stdout: the first daemon gets it as {READY_FD} and writes "READY=1" there once
# it serves; the supervisor lets go of it, so the caller reads that line, or end of file if the daemon died first.
supervise() {{
  echo $$ > "$SUPERVISOR_PID"
  child=
  trap 'if [ -n "$child" ] && kill -TERM "$child" 2>/dev/null; then wait "$child"; fi; rm -f "$SUPERVISOR_PID"; exit 0' TERM INT
  if [ "${{1:-}}" = ready ]; then
    {READY_FD}=3 {layout.launcher} >>{layout.log} 2>&1 &
    child=$!
    exec 3>&-
    wait "$child"
    sleep 1
  fi
  while :; do
    {layout.launcher} >>{layout.log} 2>&1 &
    child=$!
    wait "$child"
    sleep 1
  done
}}

stop() {{
  if systemd; then systemctl stop "$UNIT"; return; fi
  if alive "$SUPERVISOR_PID"; then
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
  fi
  if alive "$DAEMON_PID"; then kill -KILL "$pid"; fi
  rm -f "$SUPERVISOR_PID"
}}

start() {{
  mkdir -p {layout.exec_root}
  if systemd; then systemctl daemon-reload && systemctl enable --now "$UNIT" >/dev/null 2>&1; return; fi
  alive "$SUPERVISOR_PID" && return
  if [ "${{1:-}}" = --ready ]; then
    setsid nohup "$0" supervise ready </dev/null 3>&1 >/dev/null 2>&1 &
  else
    setsid nohup "$0" supervise </dev/null >/dev/null 2>&1 &
  fi
}}

case "${{1:-}}" in
  supervise) supervise "${{2:-}}" ;;
  start) start "${{2:-}}" ;;
  stop) stop ;;
  restart) stop; start "${{2:-}}" ;;
  status) if systemd; then systemctl is-active --quiet "$UNIT"; else alive "$SUPERVISOR_PID"; fi ;;
  *) echo "usage: $0 start|stop|restart [--ready]|status" >&2; exit 2 ;;
esac
"""


def systemd_unit() -> str:
    return f"""# Installed by machines.
[Unit]
Description=machines container runtime
After=network-online.target
Wants=network-online.target

[Service]
ExecStart={LAUNCHER_PATH}
Restart=always
RestartSec=1
# Containers are children of the daemon: a restart (upgrade) must not kill them.
KillMode=process
Delegate=yes
# One log for both service kinds: provisioning reads it to name why a daemon did not start (systemd >= 240).
StandardOutput=append:{LOG_PATH}
StandardError=append:{LOG_PATH}
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"""


def docker_shim(python: str) -> str:
    """A ``docker`` command implementing only ``docker [-H|--host unix://P] system dial-stdio``.

    That is all the docker CLI and docker-py run on the remote side for ``DOCKER_HOST=ssh://user@host``. A
    non-root user without access to the socket goes through ``sudo -n``.
    """
    return f"""#!/bin/sh
# {SHIM_MARKER}: installed by machines so that DOCKER_HOST=ssh://user@host works; it only implements
# `docker [--host unix://PATH] system dial-stdio`. Run the docker CLI on your own machine for everything else.
host=unix://{SOCKET_PATH}
while [ $# -gt 0 ]; do
  case "$1" in
    -H|--host) host=$2; shift 2 ;;
    -H=*|--host=*) host=${{1#*=}}; shift ;;
    system)
      if [ "${{2:-}}" = dial-stdio ]; then
        socket=${{host#unix://}}
        if [ "$(id -u)" != 0 ] && [ ! -w "$socket" ] && command -v sudo >/dev/null; then
          exec sudo -n {python} {RUNTIME_PATH} dial-stdio --host "$host"
        fi
        exec {python} {RUNTIME_PATH} dial-stdio --host "$host"
      fi
      break ;;
    *) break ;;
  esac
done
echo "this host runs the machines runtime: its docker command only implements 'docker system dial-stdio';" \\
  "run docker on your own computer with DOCKER_HOST set (see 'machines env')" >&2
exit 1
"""

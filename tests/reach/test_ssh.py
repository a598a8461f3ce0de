"""``machines ssh`` with OpenSSH's forwarding options, and the system ssh through ``machines ssh-config`` with the
host key checked against the file machines keeps."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.default import Machines
from tests.reach.conftest import Reachable, eventually, free_port, http_get
from tests.support.cli import MACHINES
from tests.support.hosts import write_key_pair


@pytest.fixture
def served(ssh_machine: Reachable) -> Iterator[int]:
    """A web server on the machine's own 127.0.0.1 (nothing outside the machine can reach it directly)."""
    port = free_port()
    folder = f"/tmp/www-{port}"
    pid = ssh_machine.cli("ssh", ssh_machine.name, "--", f"mkdir -p {folder} && echo inside > {folder}/index.html && "
                          f"{{ busybox httpd -f -p 127.0.0.1:{port} -h {folder} </dev/null >/dev/null 2>&1 & }}; "
                          "echo $!").stdout.strip()
    yield port
    ssh_machine.cli("ssh", ssh_machine.name, f"kill {pid}; rm -rf {folder}", check=False)


def _background(machine: Reachable, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([MACHINES, "--storage-path", str(machine.store), *args], env=machine.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_ssh_L_forwards_while_the_session_lasts(ssh_machine: Reachable, served: int) -> None:
    here = free_port()
    session = _background(ssh_machine, "ssh", ssh_machine.name, "-N", "-L", f"{here}:127.0.0.1:{served}")
    try:
        assert eventually(lambda: http_get(here), lambda body: body is not None) == "inside\n"
    finally:
        session.terminate()
        assert session.wait(30) == 0, session.stderr.read() if session.stderr else ""
    assert http_get(here) is None


def test_ssh_L_with_a_command_and_D_as_socks_proxy(ssh_machine: Reachable, served: int) -> None:
    here, socks = free_port(), free_port()
    script = f"for i in $(seq 100); do wget -qO- http://127.0.0.1:{served}/ && break; sleep 0.1; done"
    session = _background(ssh_machine, "ssh", ssh_machine.name, f"-L{here}:localhost:{served}", "-D", str(socks),
                          "-T", "--", "sleep", "30")
    try:
        assert eventually(lambda: http_get(here), lambda body: body is not None) == "inside\n"
        fetched = subprocess.run(["curl", "-s", "--socks5-hostname", f"127.0.0.1:{socks}",
                                  f"http://127.0.0.1:{served}/"], capture_output=True, text=True, timeout=60)
        assert fetched.stdout == "inside\n", fetched.stderr
    finally:
        session.terminate()
        session.wait(30)
    assert "inside" in ssh_machine.cli("ssh", ssh_machine.name, "-T", "--", script).stdout


def test_ssh_R_reaches_back_and_exit_status_passes_through(ssh_machine: Reachable, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("workstation\n")
    port = free_port()
    server = subprocess.Popen(["busybox", "httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", str(tmp_path)])
    try:
        remote = free_port()
        result = ssh_machine.cli("ssh", ssh_machine.name, "-R", f"{remote}:127.0.0.1:{port}", "--",
                                 f"wget -qO- http://127.0.0.1:{remote}/; exit 7", check=False)
        assert result.returncode == 7 and result.stdout == "workstation\n", result.stderr
    finally:
        server.terminate()
        server.wait()


def test_bad_ssh_options_are_refused_with_one_line(ssh_machine: Reachable) -> None:
    for args, message in (
        (("-X",), "unknown option -X"),
        (("-o", "StrictHostKeyChecking=no"), "option -o needs --native"),
        (("-L", "nonsense"), "bad local forwarding specification 'nonsense'"),
        (("-L",), "option -L requires an argument"),
        (("-N", "--", "true"), "-N means no command"),
    ):
        result = ssh_machine.cli("ssh", ssh_machine.name, *args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1


def _system_ssh(config: Path, name: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", name, *command], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_system_ssh_with_ssh_config_checks_the_host_key(ssh_machine: Reachable, tmp_path: Path) -> None:
    blocks = ssh_machine.cli("ssh-config", ssh_machine.name).stdout
    assert f"Host {ssh_machine.name}\n" in blocks and "StrictHostKeyChecking yes" in blocks
    assert "StrictHostKeyChecking no" not in blocks and "/dev/null" not in blocks
    config = tmp_path / "ssh_config"
    config.write_text(blocks)
    result = _system_ssh(config, ssh_machine.name, "hostname")
    assert result.returncode == 0 and result.stdout == f"{ssh_machine.name}\n", result.stderr
    assert ssh_machine.cli("ssh", "--native", ssh_machine.name, "hostname").stdout == f"{ssh_machine.name}\n"
    native = ssh_machine.cli("ssh", ssh_machine.name, "--native", "-o", "LogLevel=ERROR", "--", "echo", "a  b")
    assert native.stdout == "a b\n"

    # The host now presents a key other than the pinned one (as a swapped host would): refused by both.
    machine = Machines(ssh_machine.store).get(ssh_machine.name)
    pinned = machine.record["ssh_host_key"]
    machine.record["ssh_host_key"] = write_key_pair(tmp_path / "other")[1]
    machine.save()
    try:
        config.write_text(ssh_machine.cli("ssh-config", ssh_machine.name).stdout)
        refused = _system_ssh(config, ssh_machine.name, "hostname")
        assert refused.returncode == 255 and refused.stdout == ""
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr or "verification failed" in refused.stderr
        native = ssh_machine.cli("ssh", "--native", ssh_machine.name, "hostname", check=False)
        assert native.returncode == 255 and native.stdout == ""
        ours = ssh_machine.cli("ssh", ssh_machine.name, "hostname", check=False)
        assert ours.returncode != 0 and "host key of" in ours.stderr and "has changed" in ours.stderr
    finally:
        machine.record["ssh_host_key"] = pinned
        machine.save()
    assert _system_ssh(config, ssh_machine.name, "true").returncode == 255  # the file still holds the wrong key
    config.write_text(ssh_machine.cli("ssh-config").stdout)  # all machines: this one again
    assert _system_ssh(config, ssh_machine.name, "hostname").stdout == f"{ssh_machine.name}\n"


def test_logs_shows_the_runtime_log(ssh_machine: Reachable) -> None:
    shown = ssh_machine.cli("logs", ssh_machine.name).stdout
    assert shown.strip(), "the runtime's log is empty"
    last = ssh_machine.cli("logs", "--tail", "1", ssh_machine.name).stdout
    assert len(last.strip().splitlines()) == 1 and shown.rstrip("\n").endswith(last.rstrip("\n"))
    bad = ssh_machine.cli("logs", "--tail", "x; reboot", ssh_machine.name, check=False)
    assert bad.returncode == 2 and "invalid --tail" in bad.stderr


def test_scp_delta_copies_with_rsync_over_the_pinned_key(ssh_machine: Reachable, tmp_path: Path) -> None:
    source = tmp_path / "tree"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "a.txt").write_text("one\n")
    (source / "setuid").write_text("x")
    (source / "setuid").chmod(0o4755)
    target = f"/tmp/delta-{tmp_path.name}"
    ssh_machine.cli("scp", "--delta", "-r", f"{source}/", f"{ssh_machine.name}:{target}")
    listing = ssh_machine.cli("ssh", ssh_machine.name, f"cat {target}/sub/a.txt; stat -c %a {target}/setuid").stdout
    assert listing == "one\n755\n"
    back = tmp_path / "back"
    ssh_machine.cli("ssh", ssh_machine.name, f"echo changed > {target}/sub/a.txt; ln -s /etc/shadow {target}/evil")
    ssh_machine.cli("scp", "--delta", "-r", f"{ssh_machine.name}:{target}/", str(back))
    assert (back / "sub" / "a.txt").read_text() == "changed\n"
    assert not (back / "evil").exists() and not (back / "evil").is_symlink()  # a link out of the tree is skipped
    both = ssh_machine.cli("scp", "--delta", f"{ssh_machine.name}:/etc/hostname", f"{ssh_machine.name}:/tmp/x",
                           check=False)
    assert both.returncode == 2 and "between this computer and one machine" in both.stderr
    ssh_machine.cli("ssh", ssh_machine.name, f"rm -rf {target}")


def test_agent_forwarding_only_with_A(ssh_machine: Reachable, tmp_path: Path) -> None:
    key, public = write_key_pair(tmp_path / "agent")
    started = subprocess.run(["ssh-agent", "-a", str(tmp_path / "agent.sock"), "-s"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    pid = int(started.split("SSH_AGENT_PID=")[1].split(";")[0])
    env = {**ssh_machine.env, "SSH_AUTH_SOCK": str(tmp_path / "agent.sock")}
    try:
        subprocess.run(["ssh-add", str(key)], env=env, capture_output=True, timeout=30, check=True)
        machines_args = [MACHINES, "--storage-path", str(ssh_machine.store), "ssh", ssh_machine.name]
        forwarded = subprocess.run([*machines_args, "-A", "--", "ssh-add", "-L"], env=env, capture_output=True,
                                   text=True, timeout=60)
        assert forwarded.returncode == 0 and public.split()[1] in forwarded.stdout, forwarded.stderr
        plain = subprocess.run([*machines_args, "--", "ssh-add", "-L"], env=env, capture_output=True, text=True,
                               timeout=60)
        assert plain.returncode != 0 and public.split()[1] not in plain.stdout  # off unless -A
    finally:
        os.kill(pid, signal.SIGTERM)

"""The real docker CLI against our daemon: what users type, with Docker's output and exit codes."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

from tests.support.daemon import DOCKER, Daemon


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def test_version_and_info(daemon: Daemon) -> None:
    assert daemon.out("version", "--format", "{{.Server.APIVersion}}") == "1.47\n"
    info = json.loads(daemon.out("info", "--format", "{{json .}}"))
    assert info["Swarm"]["LocalNodeState"] == "inactive"
    assert info["OSType"] == "linux" and info["Driver"] == "overlay2"


def test_run_attached_output_streams_and_exit_codes(daemon: Daemon, image: str) -> None:
    result = daemon.docker("run", "--rm", image, "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
    assert daemon.docker("run", "--rm", image, "no-such-command").returncode == 127
    # A registry on a closed loopback port: the CLI's pull path runs without any lookup leaving the machine.
    missing = daemon.docker("run", "--rm", "127.0.0.1:9/apitest/missing:latest", "true")
    assert missing.returncode == 125
    assert b"Unable to find image '127.0.0.1:9/apitest/missing:latest' locally" in missing.stderr
    assert b"Error response from daemon: " in missing.stderr


def test_run_rm_removes_the_container(daemon: Daemon, image: str, name: str) -> None:
    assert daemon.out("run", "--rm", "--name", name, image, "echo", "hello") == "hello\n"
    assert daemon.out("ps", "-a", "--filter", "name=" + name, "--format", "{{.Names}}") == ""
    outputs = [daemon.out("run", "--rm", image, "echo", str(attempt)) for attempt in range(15)]
    assert outputs == [f"{attempt}\n" for attempt in range(15)]  # a fast process's output is never lost


def test_run_it_through_a_pseudo_terminal(daemon: Daemon, image: str) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(DOCKER, [DOCKER, "run", "-it", "--rm", image, "sh"], daemon.env())
    output = b""
    try:
        def read_until(token: bytes, timeout: float = 20) -> None:
            nonlocal output
            deadline = time.monotonic() + timeout
            while token not in output:
                assert time.monotonic() < deadline, output
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    output += os.read(fd, 4096)

        read_until(b"# ")
        os.write(fd, b"echo $((6 * 7)); tty; stty size\r")
        read_until(b"42")
        read_until(b"/dev/pts/")
        os.write(fd, b"exit 4\r")
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 4
    finally:
        if pid:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)


def test_detached_env_workdir_logs_ps_stop(daemon: Daemon, image: str, name: str) -> None:
    container = daemon.out("run", "-d", "--name", name, "-e", "FOO=bar", "-w", "/tmp", image,
                           "sh", "-c", "echo $FOO; pwd; exec sleep 60").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", container)
    assert wait_until(lambda: daemon.out("logs", name) == "bar\n/tmp\n")
    line = daemon.out("ps", "--filter", "name=" + name, "--format", "{{.ID}} {{.Names}} {{.Status}}")
    assert line.startswith(f"{container[:12]} {name} Up ")
    assert daemon.out("ps", "-q", "--filter", "status=exited", "--filter", "name=" + name) == ""
    assert daemon.out("stop", "-t", "1", name) == name + "\n"
    assert daemon.out("ps", "-a", "--filter", "status=exited", "--filter", "name=" + name,
                      "--format", "{{.Names}}") == name + "\n"
    state = json.loads(daemon.out("inspect", name))[0]["State"]
    assert state["Status"] == "exited" and not state["Running"]
    assert daemon.out("rm", name) == name + "\n"
    missing = daemon.docker("inspect", name)
    assert missing.returncode == 1 and b"No such object: " + name.encode() in missing.stderr


def test_logs_follow_ends_with_the_container(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, image, "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.3; done")
    result = daemon.docker("logs", "-f", name, timeout=30)
    assert (result.returncode, result.stdout) == (0, b"line1\nline2\nline3\n")
    assert daemon.out("logs", "--tail", "1", name) == "line3\n"
    daemon.out("rm", name)


def test_exec_kill_wait_top_stats(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, image, "sleep", "300")
    assert daemon.out("exec", name, "echo", "hi") == "hi\n"
    assert daemon.docker("exec", name, "sh", "-c", "exit 5").returncode == 5
    assert daemon.docker("exec", "-e", "X=1", "-w", "/etc", name, "sh", "-c", "echo $X $(pwd)").stdout == b"1 /etc\n"
    top = daemon.out("top", name)
    assert "sleep 300" in top and "PID" in top
    stats = daemon.out("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", name)
    assert stats.split() == [name, "1"]
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(DOCKER, [DOCKER, "exec", "-it", name, "sh", "-c", "tty; exit 2"], daemon.env())
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 2 and b"/dev/pts/" in output
    assert daemon.out("kill", name) == name + "\n"
    assert daemon.out("wait", name) == "137\n"
    assert daemon.out("inspect", "-f", "{{.State.ExitCode}}", name) == "137\n"
    assert daemon.docker("kill", name).returncode == 1
    daemon.out("rm", name)


def test_rm_force_removes_a_running_container(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, image, "sleep", "300")
    refused = daemon.docker("rm", name)
    assert refused.returncode == 1 and b"cannot remove" in refused.stderr.lower()
    assert daemon.out("rm", "-f", name) == name + "\n"
    assert daemon.out("ps", "-aq", "--filter", "name=" + name) == ""


def test_cp_both_ways_and_bind_mounts(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from the host\n")
    daemon.out("run", "-d", "--name", name, "-v", f"{tmp_path}:/data", image, "sleep", "300")
    assert daemon.out("exec", name, "cat", "/data/in.txt") == "from the host\n"
    daemon.out("cp", str(tmp_path / "in.txt"), name + ":/tmp/copied.txt")
    assert daemon.out("exec", name, "cat", "/tmp/copied.txt") == "from the host\n"
    daemon.out("exec", name, "sh", "-c", "mkdir -p /out && echo made inside > /out/f")
    daemon.out("cp", name + ":/out", str(tmp_path / "back"))
    assert (tmp_path / "back" / "f").read_text() == "made inside\n"
    missing = daemon.docker("cp", name + ":/nonexistent", str(tmp_path / "x"))
    assert missing.returncode == 1 and b"Could not find the file /nonexistent" in missing.stderr
    daemon.out("rm", "-f", name)


def test_published_port_is_reachable(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, "-p", "127.0.0.1::8080", image, "sh", "-c",
               "mkdir /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www")
    port = daemon.out("port", name, "8080/tcp").strip()
    assert port.startswith("127.0.0.1:")

    def fetch() -> bytes:
        try:
            with urllib.request.urlopen(f"http://{port}/index.html", timeout=2) as response:
                return response.read()
        except OSError:
            return b""

    assert wait_until(fetch, timeout=15) == b"served\n"
    listed = daemon.out("ps", "--filter", "name=" + name, "--format", "{{.Ports}}")
    assert "->8080/tcp" in listed
    daemon.out("rm", "-f", name)


def test_restart_policy_and_memory_limit(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, "--restart", "on-failure:2", "--memory", "64m", image,
               "sh", "-c", "sleep 0.2; exit 1")
    config = json.loads(daemon.out("inspect", name))[0]
    assert config["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert config["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert wait_until(lambda: daemon.out("inspect", "-f", "{{.RestartCount}} {{.State.Status}}", name)
                      == "2 exited\n", timeout=30)
    daemon.out("rm", name)


def test_images_tag_rmi_save_load(daemon: Daemon, image: str, tmp_path: Path) -> None:
    other = f"apitest/other-{os.getpid()}:v1"
    daemon.out("tag", image, other)
    listed = daemon.out("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    assert image in listed and other in listed
    assert daemon.out("image", "inspect", "-f", "{{.Id}}", other) == daemon.out("image", "inspect", "-f",
                                                                                  "{{.Id}}", image)
    archive = tmp_path / "saved.tar"
    daemon.out("save", "-o", str(archive), other)
    assert daemon.out("rmi", other) == f"Untagged: {other}\n"
    assert daemon.out("load", "-i", str(archive)) == f"Loaded image: {other}\n"
    assert daemon.out("run", "--rm", other, "echo", "loaded") == "loaded\n"
    assert daemon.out("rmi", other) == f"Untagged: {other}\n"
    missing = daemon.docker("rmi", other)
    assert missing.returncode == 1 and b"No such image: " + other.encode() in missing.stderr


def test_network_commands_and_name_resolution(daemon: Daemon, image: str, name: str) -> None:
    network = name + "-net"
    network_id = daemon.out("network", "create", network).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", network_id)
    assert network in daemon.out("network", "ls", "--format", "{{.Name}}").split()
    assert daemon.out("network", "inspect", "-f", "{{.Driver}}", network) == "bridge\n"
    daemon.out("run", "-d", "--name", name, "--network", network, image, "sleep", "300")
    assert daemon.out("run", "--rm", "--network", network, image, "ping", "-c", "1", "-W", "5", name)
    peer = name + "-peer"
    daemon.out("run", "-d", "--name", peer, image, "sleep", "300")
    daemon.out("network", "connect", network, peer)
    assert network in daemon.out("inspect", "-f", "{{json .NetworkSettings.Networks}}", peer)
    assert daemon.docker("exec", peer, "ping", "-c", "1", "-W", "5", name).returncode == 0
    daemon.out("network", "disconnect", network, peer)
    busy = daemon.docker("network", "rm", network)
    assert busy.returncode == 1
    daemon.out("rm", "-f", name, peer)
    assert daemon.out("network", "rm", network) == network + "\n"
    assert daemon.docker("network", "inspect", network).returncode == 1


def test_volume_commands(daemon: Daemon, image: str, name: str) -> None:
    volume = name + "-vol"
    assert daemon.out("volume", "create", volume) == volume + "\n"
    assert volume in daemon.out("volume", "ls", "-q").split()
    daemon.out("run", "--rm", "-v", volume + ":/v", image, "sh", "-c", "echo kept > /v/f")
    assert daemon.out("run", "--rm", "-v", volume + ":/v", image, "cat", "/v/f") == "kept\n"
    assert json.loads(daemon.out("volume", "inspect", volume))[0]["Name"] == volume
    assert daemon.out("volume", "rm", volume) == volume + "\n"
    assert daemon.docker("volume", "inspect", volume).returncode == 1
    daemon.out("volume", "prune", "-f")


def test_docker_compose_two_services(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        "version: '3'\n"
        "services:\n"
        "  web:\n"
        f"    image: {image}\n"
        "    command: sh -c 'mkdir /www && echo compose > /www/index.html && exec httpd -f -p 80 -h /www'\n"
        "  client:\n"
        f"    image: {image}\n"
        "    command: sh -c 'sleep 1; wget -q -O - http://web/index.html; exec sleep 300'\n"
        "    depends_on: [web]\n")
    env = daemon.env()
    project = ["/usr/bin/docker-compose", "-p", name.replace("-", ""), "-f", str(tmp_path / "docker-compose.yml")]

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*project, *args], capture_output=True, env=env, timeout=120)

    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        ps = compose("ps")
        assert ps.returncode == 0 and ps.stdout.count(b"Up") == 2, ps.stdout
        assert wait_until(lambda: b"compose" in compose("logs", "client").stdout, timeout=20)
    finally:
        down = compose("down", "-t", "1")
    assert down.returncode == 0, down.stderr
    assert daemon.out("ps", "-aq", "--filter", "label=com.docker.compose.project=" + name.replace("-", "")) == ""


def test_diff_and_commit(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("run", "-d", "--name", name, "-e", "KEEP=1", image, "sh", "-c", "echo data > /made; exec sleep 300")
    assert wait_until(lambda: daemon.docker("exec", name, "cat", "/made").stdout == b"data\n")
    assert daemon.out("diff", name) == "A /made\n"
    committed = f"apitest/committed-{os.getpid()}:1"
    image_id = daemon.out("commit", "-c", 'CMD ["sh", "-c", "cat /made; echo $KEEP"]', name, committed).strip()
    assert image_id.startswith("sha256:")
    assert daemon.out("inspect", "-f", "{{.State.Running}} {{.State.Paused}}", name) == "true false\n"
    assert daemon.out("run", "--rm", committed) == "data\n1\n"
    exported = daemon.docker("export", name, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(exported)) as archive:
        assert archive.extractfile("made").read() == b"data\n"
    daemon.out("rm", "-f", name)
    daemon.out("rmi", committed)


def test_pause_rename_restart_events_prune(daemon: Daemon, image: str, name: str) -> None:
    since = str(int(time.time()) - 1)
    container = daemon.out("run", "-d", "--name", name, image, "sleep", "300").strip()
    assert daemon.out("pause", name) == name + "\n"
    assert daemon.out("ps", "--filter", "name=" + name, "--format", "{{.Status}}").endswith("(Paused)\n")
    assert daemon.docker("exec", name, "true").returncode == 1  # Docker refuses exec in a paused container
    daemon.out("unpause", name)
    renamed = name + "-renamed"
    daemon.out("rename", name, renamed)
    before = daemon.out("inspect", "-f", "{{.State.StartedAt}}", renamed)
    daemon.out("restart", "-t", "1", renamed)
    assert daemon.out("inspect", "-f", "{{.State.Running}}", renamed) == "true\n"
    assert daemon.out("inspect", "-f", "{{.State.StartedAt}}", renamed) != before
    daemon.out("stop", "-t", "1", renamed)
    until = str(int(time.time()) + 1)
    actions = daemon.out("events", "--since", since, "--until", until, "--filter", "container=" + container,
                         "--format", "{{.Action}}").split()
    assert actions[:4] == ["create", "start", "pause", "unpause"] and "rename" in actions and "die" in actions
    pruned = daemon.out("container", "prune", "-f", "--filter", "label!=keep")
    assert renamed not in daemon.out("ps", "-a", "--format", "{{.Names}}").split() and "Total reclaimed" in pruned

"""Health checks as Docker runs them: HEALTHCHECK in images, the docker run flags, the create API's Healthcheck,
State.Health, health_status events, docker ps, --filter health=, a daemon killed with SIGKILL, and docker-compose's
``condition: service_healthy``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import docker
import pytest

from tests.support import busybox
from tests.support.daemon import COMPOSE, Daemon, free_subnet, link_exists, start_daemon, stop_daemon, wait_for_listen
from tests.support.waiting import poll

FAST = ["--health-interval", "100ms", "--health-start-interval", "100ms"]


def health(daemon: Daemon, ref: str) -> dict | None:
    return json.loads(daemon.out("inspect", "-f", "{{json .State.Health}}", ref))


def status_line(daemon: Daemon, ref: str) -> str:
    """The STATUS column of ``docker ps -a`` for one container (the text comes from the daemon)."""
    for line in daemon.out("ps", "-a", "--filter", "name=" + ref, "--format", "{{.Names}}\t{{.Status}}").splitlines():
        found, _, status = line.partition("\t")
        if found == ref:
            return status
    raise AssertionError(f"{ref} is not in docker ps -a")


def names_with(daemon: Daemon, value: str) -> list:
    return daemon.out("ps", "-a", "--filter", "health=" + value, "--format", "{{.Names}}").split()


def test_run_flags_state_ps_filter_and_events(daemon: Daemon, image: str, name: str) -> None:
    since = str(time.time() - 1)
    daemon.out("run", "-d", "--name", name, "--health-cmd", "cat /tmp/ok", "--health-retries", "2",
               "--health-start-period", "5m", "--health-timeout", "5s", *FAST, image, "sleep", "300")
    try:
        # A failing probe inside the start period does not count: the container stays "starting".
        poll("a failed probe logged", lambda: (health(daemon, name) or {}).get("Log"))
        state = health(daemon, name)
        assert state["Status"] == "starting" and state["FailingStreak"] == 0
        entry = state["Log"][0]
        assert entry["ExitCode"] == 1 and "/tmp/ok" in entry["Output"] and entry["Start"] <= entry["End"]
        assert status_line(daemon, name).endswith("(health: starting)")
        assert name in names_with(daemon, "starting") and name not in names_with(daemon, "healthy")

        daemon.out("exec", name, "sh", "-c", "echo fine > /tmp/ok")
        poll("healthy", lambda: health(daemon, name)["Status"] == "healthy")
        assert status_line(daemon, name).endswith("(healthy)")
        assert name in names_with(daemon, "healthy") and name not in names_with(daemon, "starting")
        assert health(daemon, name)["Log"][-1]["Output"] == "fine\n"

        # Out of the start period now: two failures in a row (the retries) make it unhealthy.
        daemon.out("exec", name, "rm", "/tmp/ok")
        poll("unhealthy", lambda: health(daemon, name)["Status"] == "unhealthy")
        poll("six failures in a row", lambda: health(daemon, name)["FailingStreak"] >= 6)
        assert len(health(daemon, name)["Log"]) == 5  # only the last five results are kept
        assert status_line(daemon, name).endswith("(unhealthy)")
        assert name in names_with(daemon, "unhealthy") and name not in names_with(daemon, "none")

        events = daemon.out("events", "--since", since, "--until", str(time.time() + 1), "--filter",
                            "container=" + name, "--filter", "event=health_status", "--format", "{{.Action}}")
        assert events.splitlines() == ["health_status: healthy", "health_status: unhealthy"]

        daemon.out("stop", "-t", "0", name)  # probes stop with the container; the last status stays
        assert health(daemon, name)["Status"] == "unhealthy"
        assert status_line(daemon, name).startswith("Exited")
    finally:
        daemon.docker("rm", "-f", name)


def test_bad_filter_value_and_create_validation(daemon: Daemon, image: str, name: str) -> None:
    refused = daemon.docker("ps", "--filter", "health=fine")
    assert refused.returncode != 0
    assert "Unrecognised filter value for health: fine" in refused.stderr.decode()
    client = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        cases = [({"Test": ["CMD", "true"], "Interval": 500_000}, "Interval in Healthcheck cannot be less than 1ms"),
                 ({"Test": ["CMD", "true"], "Timeout": -1}, "Timeout in Healthcheck cannot be less than 1ms"),
                 ({"Test": ["CMD", "true"], "Retries": -1}, "Retries in Healthcheck cannot be negative"),
                 ({"Test": ["CMD", "true"], "StartPeriod": 10}, "StartPeriod in Healthcheck cannot be less than 1ms"),
                 ({"Test": ["CMD", "true"], "Interval": "5s"}, "json: cannot unmarshal string into Go struct field "
                                                               "HealthConfig.Healthcheck.Interval of type time.Duration")]
        for check, message in cases:
            with pytest.raises(docker.errors.APIError) as failed:
                client.create_container(image, "true", name=name, healthcheck=check)
            assert failed.value.status_code == 400 and message in str(failed.value.explanation)
        assert daemon.docker("inspect", name).returncode != 0  # nothing half-created
    finally:
        client.close()


def test_image_healthcheck_none_and_overrides(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    tag = f"apitest/healthy-{name}:1"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {image}\nHEALTHCHECK --interval=100ms --retries=1 CMD [\"sh\", \"-c\", \"exit 3\"]\n")
    daemon.out("build", "-q", "-t", tag, str(tmp_path), timeout=120)
    none_tag = tag + "-none"
    (tmp_path / "Dockerfile").write_text(f"FROM {tag}\nHEALTHCHECK NONE\n")
    daemon.out("build", "-q", "-t", none_tag, str(tmp_path), timeout=120)
    made = {key: f"{name}-{key}" for key in ("image", "off", "cmd", "none")}
    try:
        daemon.out("run", "-d", "--name", made["image"], tag, "sleep", "300")
        daemon.out("run", "-d", "--name", made["off"], "--no-healthcheck", tag, "sleep", "300")
        daemon.out("run", "-d", "--name", made["cmd"], "--health-cmd", "exit 0", tag, "sleep", "300")
        daemon.out("run", "-d", "--name", made["none"], none_tag, "sleep", "300")
        poll("the image's failing check makes it unhealthy",
             lambda: (health(daemon, made["image"]) or {}).get("Status") == "unhealthy")
        assert health(daemon, made["image"])["Log"][-1]["ExitCode"] == 3
        # --health-cmd replaces the image's test and keeps its interval and retries (moby's merge).
        poll("the overriding check makes it healthy",
             lambda: (health(daemon, made["cmd"]) or {}).get("Status") == "healthy")
        check = json.loads(daemon.out("inspect", "-f", "{{json .Config.Healthcheck}}", made["cmd"]))
        assert check == {"Test": ["CMD-SHELL", "exit 0"], "Interval": 100_000_000, "Retries": 1}
        for key in ("off", "none"):
            assert health(daemon, made[key]) is None
            assert status_line(daemon, made[key]).startswith("Up") and "(" not in status_line(daemon, made[key])
            assert made[key] in names_with(daemon, "none")
        assert json.loads(daemon.out("inspect", "-f", "{{json .Config.Healthcheck.Test}}", made["off"])) == ["NONE"]
    finally:
        daemon.docker("rm", "-f", *made.values())
        daemon.docker("rmi", none_tag, tag)


def test_timeout_and_output_truncated_like_moby(daemon: Daemon, image: str, name: str) -> None:
    slow, loud = name + "-slow", name + "-loud"
    try:
        daemon.out("run", "-d", "--name", slow, "--health-cmd", "echo partial; sleep 30", "--health-timeout",
                   "300ms", "--health-retries", "1", *FAST, image, "sleep", "300")
        daemon.out("run", "-d", "--name", loud, "--health-cmd", "head -c 5000 /dev/zero | tr '\\0' x", *FAST,
                   image, "sleep", "300")
        poll("a timed-out probe", lambda: (health(daemon, slow) or {}).get("Log"))
        entry = health(daemon, slow)["Log"][0]
        assert entry["ExitCode"] == -1
        assert entry["Output"] == "Health check exceeded timeout (300ms): partial\n"
        poll("unhealthy after a timeout", lambda: health(daemon, slow)["Status"] == "unhealthy")
        poll("a loud probe", lambda: (health(daemon, loud) or {}).get("Log"))
        assert health(daemon, loud)["Log"][0]["Output"] == "x" * 4096 + "..."
        # The probes are the daemon's own execs: finished ones are not left listed on the container.
        poll("five probes", lambda: len(health(daemon, loud)["Log"]) == 5)
        assert len(json.loads(daemon.out("inspect", "-f", "{{json .ExecIDs}}", loud)) or []) <= 1
    finally:
        daemon.docker("rm", "-f", slow, loud)


def test_dockerpy_sees_health(daemon: Daemon, image: str, name: str) -> None:
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        container = client.containers.run(image, "sleep 300", detach=True, name=name, healthcheck={
            "test": ["CMD", "true"], "interval": 100_000_000, "start_interval": 100_000_000})
        poll("healthy through docker-py", lambda: container.reload() or container.health == "healthy")
        assert container.attrs["State"]["Health"]["FailingStreak"] == 0
        assert [c.name for c in client.containers.list(filters={"health": "healthy", "name": name})] == [name]
    finally:
        client.api.remove_container(name, force=True)
        client.close()


def test_compose_service_healthy_orders_the_stack(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text(
        "version: '2.4'\n"
        "services:\n"
        "  db:\n"
        f"    image: {image}\n"
        "    command: sh -c 'sleep 1; touch /tmp/ready; exec sleep 300'\n"
        "    healthcheck:\n"
        "      test: ['CMD-SHELL', 'test -f /tmp/ready']\n"
        "      interval: 100ms\n"
        "      retries: 300\n"
        "  app:\n"
        f"    image: {image}\n"
        "    command: sleep 300\n"
        "    depends_on:\n"
        "      db:\n"
        "        condition: service_healthy\n")
    project = name.replace("-", "")
    env = {k: v for k, v in daemon.env().items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}

    def compose(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([COMPOSE, "-p", project, "-f", str(tmp_path / "docker-compose.yml"), *args],
                              capture_output=True, env=env, timeout=180)

    since = str(time.time() - 1)
    try:
        up = compose("up", "-d")
        assert up.returncode == 0, up.stderr
        assert health(daemon, project + "_db_1")["Status"] == "healthy"
        assert daemon.out("inspect", "-f", "{{.State.Running}}", project + "_app_1") == "true\n"
        events = daemon.out("events", "--since", since, "--until", str(time.time() + 1), "--filter",
                            "label=com.docker.compose.project=" + project, "--filter", "event=start", "--filter",
                            "event=health_status", "--format", "{{.Actor.Attributes.name}} {{.Action}}").splitlines()
        assert events[:3] == [project + "_db_1 start", project + "_db_1 health_status: healthy",
                              project + "_app_1 start"], events
    finally:
        down = compose("down", "-t", "1")
    assert down.returncode == 0, down.stderr
    assert daemon.out("ps", "-aq", "--filter", "label=com.docker.compose.project=" + project) == ""


@pytest.fixture
def own_daemon(tmp_path: Path):
    """A daemon of this test's own, which it may kill with SIGKILL and start again on the same roots."""
    socket_path = tmp_path / "docker.sock"
    bridge = f"hcb{os.getpid() % 100000}"
    args = ["--host", f"unix://{socket_path}", "--bridge-subnet", free_subnet(197), "--bridge-name", bridge]
    processes = []

    def start() -> Daemon:
        log = tmp_path / "daemon.log"
        process = start_daemon(tmp_path, args)
        processes.append(process)
        wait_for_listen(log, process, time.monotonic() + 30)
        return Daemon(tmp_path, process, socket_path, "", {}, bridge, log)

    yield start
    current = processes[-1]
    if current.poll() is None:
        instance = Daemon(tmp_path, current, socket_path, "", {}, bridge, tmp_path / "daemon.log")
        ids = instance.docker("ps", "-aq").stdout.split()
        if ids:
            instance.docker("rm", "-f", *[item.decode() for item in ids], timeout=120)
    stop_daemon(current)
    if link_exists(bridge):
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_probes_resume_after_daemon_sigkill(own_daemon, name: str) -> None:
    first = own_daemon()
    first.out("import", "-", "hc/busybox:1", input=busybox.rootfs())
    first.out("run", "-d", "--name", name, "--health-cmd", "cat /tmp/ok", "--health-retries", "1", *FAST,
              "hc/busybox:1", "sh", "-c", "touch /tmp/ok; exec sleep 300")
    poll("healthy before the kill", lambda: (health(first, name) or {}).get("Status") == "healthy")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    second = own_daemon()
    assert second.out("inspect", "-f", "{{.State.Running}}", name) == "true\n"
    assert health(second, name)["Log"], "the probe log was not kept across the restart"
    # Probes resume: a status change only a live probe can cause.
    second.out("exec", name, "rm", "/tmp/ok")
    poll("unhealthy after the restart", lambda: health(second, name)["Status"] == "unhealthy")
    second.out("exec", name, "touch", "/tmp/ok")
    poll("healthy again", lambda: health(second, name)["Status"] == "healthy")
    assert status_line(second, name).endswith("(healthy)")

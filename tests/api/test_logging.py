"""Log drivers json-file, local and none with the docker CLI and docker-py: what ``docker logs`` gives, where the
lines live, rotation, and dockerd's refusals for unknown drivers and options."""

from __future__ import annotations

import json
import os

import docker
import pytest

from tests.support.daemon import Daemon


def test_none_keeps_no_log_and_says_so(daemon: Daemon, image: str, name: str) -> None:
    try:
        run = daemon.docker("run", "--log-driver", "none", "--name", name, image, "sh", "-c", "echo out; echo err >&2")
        assert (run.returncode, run.stdout, run.stderr) == (0, b"out\n", b"err\n")  # attach still streams
        logs = daemon.docker("logs", name)
        assert logs.returncode == 1
        assert logs.stderr.decode().strip() == ("Error response from daemon: configured logging driver does not "
                                                "support reading")
        config = json.loads(daemon.out("inspect", "-f", "{{json .HostConfig.LogConfig}}", name))
        assert config == {"Type": "none", "Config": {}}
        assert daemon.out("inspect", "-f", "{{.LogPath}}", name) == "\n"
        client = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
        try:
            with pytest.raises(docker.errors.APIError) as refused:
                client.logs(name)
            assert refused.value.status_code == 501
            assert "configured logging driver does not support reading" in str(refused.value.explanation)
        finally:
            client.close()
        root = json.loads(daemon.out("inspect", name))[0]["GraphDriver"]["Data"]["UpperDir"].rsplit("/", 1)[0]
        assert not [f for f in os.listdir(root) if "log" in f]  # nothing written anywhere
    finally:
        daemon.docker("rm", "-f", name)


def test_local_reads_back_rotates_and_hides_its_file(daemon: Daemon, image: str, name: str) -> None:
    try:
        daemon.out("run", "--log-driver", "local", "--log-opt", "max-size=2k", "--log-opt", "max-file=2", "--name",
                   name, image, "sh", "-c", "for i in $(seq 1 400); do echo line-$i; done; echo last >&2")
        assert daemon.out("inspect", "-f", "{{json .HostConfig.LogConfig}}", name).strip() == (
            '{"Type":"local","Config":{"max-file":"2","max-size":"2k"}}')
        assert daemon.out("inspect", "-f", "{{.LogPath}}", name) == "\n"  # as dockerd: local's file is private
        lines = daemon.docker("logs", name, check=True)
        out = lines.stdout.decode().split()
        assert lines.stderr == b"last\n"
        assert out[-1] == "line-400" and "line-1" not in out  # older lines rotated away
        assert out == [f"line-{i}" for i in range(int(out[0].split("-")[1]), 401)]  # in order, none lost
        tail = daemon.docker("logs", "--tail", "2", name, check=True)  # the last two entries of both streams
        assert (tail.stdout, tail.stderr) == (b"line-400\n", b"last\n")
    finally:
        daemon.docker("rm", "-f", name)


def test_json_file_is_the_default_and_reads_back(daemon: Daemon, image: str, name: str) -> None:
    try:
        daemon.out("run", "--name", name, image, "echo", "kept")
        assert daemon.out("inspect", "-f", "{{json .HostConfig.LogConfig}}", name).strip() == (
            '{"Type":"json-file","Config":{}}')
        path = daemon.out("inspect", "-f", "{{.LogPath}}", name).strip()
        assert path.endswith("-json.log") and json.loads(open(path).readline())["log"] == "kept\n"
        assert daemon.out("logs", name) == "kept\n"
        assert sorted(json.loads(daemon.out("info", "--format", "{{json .Plugins.Log}}"))) == [
            "json-file", "local", "none"]
    finally:
        daemon.docker("rm", "-f", name)


@pytest.mark.parametrize("args, message", [
    (["--log-driver", "x"], "logger: no log driver named 'x' is registered"),
    (["--log-driver", "syslog"], "logger: no log driver named 'syslog' is registered"),
    (["--log-opt", "foo=1"], "unknown log opt 'foo' for json-file log driver"),
    (["--log-driver", "local", "--log-opt", "foo=1"], "unknown log opt 'foo' for log driver local"),
    (["--log-opt", "max-file=0"], "max-file cannot be less than 1"),
    (["--log-opt", "mode=sometimes"], "logger: logging mode not supported: sometimes"),
    (["--log-opt", "max-buffer-size=4m"], "logger: max-buffer-size option is only supported with "
                                           "'mode=non-blocking'"),
])
def test_refusals_as_dockerd(daemon: Daemon, image: str, name: str, args: list, message: str) -> None:
    result = daemon.docker("run", "--name", name, *args, image, "true")
    assert result.returncode == 125
    assert result.stderr.decode().splitlines()[0] == "docker: Error response from daemon: " + message
    assert daemon.docker("inspect", name).returncode == 1  # nothing created

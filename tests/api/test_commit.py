"""``docker commit`` as dockerd does it, with the docker CLI and docker-py: a running container paused while its
layer is written (pause, commit, unpause events) unless ``--pause=false``, and ``--change`` for CMD, ENTRYPOINT,
ENV, EXPOSE, LABEL, USER, WORKDIR, VOLUME and HEALTHCHECK merged with the container's config."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import docker
import pytest

from tests.support.daemon import TAG, Daemon

from .test_cli import wait_until


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    instance = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    yield instance
    instance.close()


def _running(daemon: Daemon, image: str, name: str) -> str:
    container = daemon.out("run", "-d", "--name", name, "-e", "KEEP=1", "-e", "PORT=80", "--label", "run=label",
                           image, "sh", "-c", "echo data > /made; exec sleep 300").strip()
    assert wait_until(lambda: daemon.docker("exec", name, "cat", "/made").stdout == b"data\n")
    return container


def _actions(daemon: Daemon, name: str, since: str) -> list[str]:
    until = str(int(time.time()) + 1)
    out = daemon.out("events", "--since", since, "--until", until, "--filter", "container=" + name,
                     "--format", "{{.Action}}")
    return [line for line in out.split() if line in ("pause", "unpause", "commit")]


def test_commit_pauses_a_running_container_unless_told_not_to(daemon: Daemon, image: str, name: str) -> None:
    since = str(int(time.time()) - 1)
    _running(daemon, image, name)
    paused = "apitest/commit-paused:" + TAG
    daemon.out("commit", name, paused)
    assert _actions(daemon, name, since) == ["pause", "commit", "unpause"]
    assert daemon.out("inspect", "-f", "{{.State.Running}} {{.State.Paused}}", name) == "true false\n"
    since = str(int(time.time()))
    unpaused = "apitest/commit-live:" + TAG
    daemon.out("commit", "--pause=false", name, unpaused)
    assert wait_until(lambda: _actions(daemon, name, since) == ["commit"])
    for committed in (paused, unpaused):
        assert daemon.out("run", "--rm", committed, "cat", "/made") == "data\n"
    history = json.loads(daemon.out("history", "--no-trunc", "--format", "{{json .}}", paused).splitlines()[0])
    assert history["CreatedBy"] == "sh -c echo data > /made; exec sleep 300"
    # a paused container is committed as it is, and stays paused
    daemon.out("pause", name)
    daemon.out("commit", name, paused)
    assert daemon.out("inspect", "-f", "{{.State.Paused}}", name) == "true\n"
    daemon.out("unpause", name)
    daemon.out("rm", "-f", name)
    daemon.out("rmi", paused, unpaused)


CHANGES = ['CMD ["sh", "-c", "echo $KEEP $ADDED"]', "ENV ADDED=2 PORT=8080", "EXPOSE 8080/tcp 53/udp",
           "LABEL change=label", "USER nobody", "WORKDIR /tmp", "VOLUME /data",
           "HEALTHCHECK --interval=5s --retries=2 CMD true"]


def test_changes_with_the_cli(daemon: Daemon, image: str, name: str) -> None:
    _running(daemon, image, name)
    committed = "apitest/commit-changes:" + TAG
    args = [item for change in CHANGES for item in ("-c", change)]
    daemon.out("commit", *args, name, committed)
    config = json.loads(daemon.out("image", "inspect", "-f", "{{json .Config}}", committed))
    assert config["Cmd"] == ["sh", "-c", "echo $KEEP $ADDED"] and config.get("Entrypoint") is None
    assert {"KEEP=1", "ADDED=2", "PORT=8080"} <= set(config["Env"]) and "PORT=80" not in config["Env"]
    assert config["ExposedPorts"] == {"8080/tcp": {}, "53/udp": {}}
    assert config["Labels"] == {"run": "label", "change": "label"}
    assert (config["User"], config["WorkingDir"], config["Volumes"]) == ("nobody", "/tmp", {"/data": {}})
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000, "Retries": 2}
    assert daemon.out("run", "--rm", "-u", "0", committed) == "1 2\n"
    # ENTRYPOINT without a CMD change clears the container's command, as a Dockerfile does
    entry = "apitest/commit-entry:" + TAG
    daemon.out("commit", "-c", 'ENTRYPOINT ["echo", "entry"]', name, entry)
    config = json.loads(daemon.out("image", "inspect", "-f", "{{json .Config}}", entry))
    assert config["Entrypoint"] == ["echo", "entry"] and config.get("Cmd") is None
    assert daemon.out("run", "--rm", entry) == "entry\n"
    refused = daemon.docker("commit", "-c", "RUN true", name)
    assert refused.returncode == 1
    assert refused.stderr.decode().strip() == "Error response from daemon: run is not a valid change command"
    missing = daemon.docker("commit", "no-such-container-" + TAG)
    assert missing.stderr.decode().strip() == "Error response from daemon: No such container: no-such-container-" + TAG
    daemon.out("rm", "-f", name)
    daemon.out("rmi", committed, entry)


def test_changes_and_pause_with_docker_py(daemon: Daemon, client: docker.DockerClient, image: str,
                                          name: str) -> None:
    _running(daemon, image, name)
    container = client.containers.get(name)
    since = int(time.time()) - 1
    committed = container.commit(repository="apitest/commit-py", tag=TAG, pause=False, message="by docker-py",
                                 author="images", changes="ENV FROM_PY=yes\nLABEL multi=line\nUSER 1000")
    config = committed.attrs["Config"]
    assert "FROM_PY=yes" in config["Env"] and "KEEP=1" in config["Env"]
    assert config["Labels"] == {"run": "label", "multi": "line"} and config["User"] == "1000"
    assert config["Cmd"] == ["sh", "-c", "echo data > /made; exec sleep 300"]
    assert committed.attrs["Comment"] == "by docker-py" and committed.attrs["Author"] == "images"
    events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                           filters={"container": name, "event": ["pause", "unpause", "commit"]})
    (event,) = list(events)
    assert event["Action"] == "commit" and event["Actor"]["Attributes"]["imageID"] == committed.id
    assert event["Actor"]["Attributes"]["imageRef"] == "apitest/commit-py:" + TAG
    with pytest.raises(docker.errors.APIError, match="from is not a valid change command"):
        container.commit(changes=["FROM scratch"])
    client.images.remove(committed.id, force=True)
    container.remove(force=True)

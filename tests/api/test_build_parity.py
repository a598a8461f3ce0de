"""The classic builder as the docker CLI (DOCKER_BUILDKIT=0) and docker-py use it: a Dockerfile from outside the
context, .dockerignore as the clients apply it, RUN output and errors in the stream, --cache-from, and the RUN
container options (--add-host, --network, --shm-size, --ulimit)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.support.daemon import TAG, Daemon


@pytest.fixture
def client(daemon: Daemon) -> Iterator[docker.DockerClient]:
    instance = docker.DockerClient(base_url=daemon.host, version="auto", timeout=120)
    yield instance
    instance.close()


def _write(root: Path, files: dict) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _listing(daemon: Daemon, image: str) -> list:
    return daemon.out("run", "--rm", image, "find", "/ctx").split()


def test_dockerfile_outside_the_context(daemon: Daemon, client: docker.DockerClient, image: str,
                                        tmp_path: Path) -> None:
    context = _write(tmp_path / "ctx", {"a.txt": "a", "sub/b.txt": "b"})
    outside = _write(tmp_path / "elsewhere", {"Dockerfile.build": f"FROM {image}\nCOPY . /ctx/\nLABEL from=outside\n"}) / "Dockerfile.build"
    tag = "parity/outside:" + TAG
    built = daemon.docker("build", "-f", str(outside), "-t", tag, str(context), timeout=120)
    assert built.returncode == 0, built.stderr
    # the CLI sent the Dockerfile as .dockerfile.<random> and named it (and .dockerignore) in .dockerignore
    assert sorted(_listing(daemon, tag)) == ["/ctx", "/ctx/a.txt", "/ctx/sub", "/ctx/sub/b.txt"]
    py_tag = "parity/outside-py:" + TAG
    client.images.build(path=str(context), dockerfile=str(outside), tag=py_tag, rm=True)
    assert client.images.get(py_tag).labels == {"from": "outside"}
    assert sorted(_listing(daemon, py_tag)) == ["/ctx", "/ctx/a.txt", "/ctx/sub", "/ctx/sub/b.txt"]
    daemon.out("rmi", tag, py_tag)


IGNORE = """# a comment
**/*.log
!logs/keep.log
docs
!docs/README.md
node_modules
  # not a comment for the docker CLI: a pattern that matches nothing here
**/*.tmp
Dockerfile
.dockerignore
"""
FILES = {"keep.txt": "k", "drop.log": "d", "logs/a.log": "a", "logs/keep.log": "k", "docs/README.md": "r",
         "docs/x.md": "x", "node_modules/p/index.js": "n", "sub/dir/deep.tmp": "t", ".dockerignore": IGNORE}
KEPT = ["/ctx", "/ctx/docs", "/ctx/docs/README.md", "/ctx/keep.txt", "/ctx/logs", "/ctx/logs/keep.log", "/ctx/sub",
        "/ctx/sub/dir"]


def test_dockerignore_as_the_clients_send_it(daemon: Daemon, client: docker.DockerClient, image: str,
                                             tmp_path: Path) -> None:
    context = _write(tmp_path / "ctx", dict(FILES, Dockerfile=f"FROM {image}\nCOPY . /ctx/\n"))
    tag = "parity/ignore:" + TAG
    built = daemon.docker("build", "-t", tag, str(context), timeout=120)
    assert built.returncode == 0, built.stderr
    # the CLI sends Dockerfile and .dockerignore even when ignored; the daemon drops both after reading them
    assert sorted(_listing(daemon, tag)) == KEPT
    py_tag = "parity/ignore-py:" + TAG
    client.images.build(path=str(context), tag=py_tag, rm=True)
    assert sorted(_listing(daemon, py_tag)) == KEPT  # docker-py too sends both (it adds "!Dockerfile")
    daemon.out("rmi", tag, py_tag)


def test_run_output_and_errors_in_the_stream(daemon: Daemon, client: docker.DockerClient, image: str,
                                             tmp_path: Path) -> None:
    context = _write(tmp_path / "ctx", {"Dockerfile": f"FROM {image}\nRUN echo to-stdout; echo to-stderr >&2\n"})
    built = daemon.docker("build", "--no-cache", str(context), timeout=120)
    assert built.returncode == 0 and b"to-stdout\n" in built.stdout and b"to-stderr\n" in built.stdout
    _, logs = client.images.build(path=str(context), nocache=True, rm=True)
    streams = [entry.get("stream") for entry in logs]
    assert "to-stdout\n" in streams and "to-stderr\n" in streams
    daemon.docker("image", "prune", "-f")
    # every failure once the context is in is the stream's last message, never a dropped connection
    for text, message in ((f"FROM {image}\nFORM x\n", "unknown instruction: FORM"),
                          (f"FROM {image}\nCOPY missing /x\n", "COPY failed: file not found in build context"),
                          (f"FROM {image}\nRUN exit 7\n", "returned a non-zero code: 7"),
                          ("FROM 127.0.0.1:9/no/registry\n", "Connection refused")):  # a base image to pull
        (tmp_path / "ctx" / "Dockerfile").write_text(text)
        with pytest.raises(docker.errors.BuildError, match=message):
            client.images.build(path=str(tmp_path / "ctx"), rm=True)
        failed = daemon.docker("build", str(tmp_path / "ctx"), timeout=120)
        assert failed.returncode != 0 and message.encode() in failed.stderr
        assert b"Error response from daemon" not in failed.stderr
    hostile = io.BytesIO()
    with tarfile.open(fileobj=hostile, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\n"), ("../../escape", b"x")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(docker.errors.BuildError, match="escapes the layer"):
        client.images.build(fileobj=io.BytesIO(hostile.getvalue()), custom_context=True)
    # a request the daemon cannot read is refused before the stream, as dockerd refuses it
    with pytest.raises(docker.errors.APIError) as refused:
        client.api._result(client.api._post(client.api._url("/build"), params={"cachefrom": "[not json"},
                                            data=hostile.getvalue(), headers={"Content-Type": "application/x-tar"}))
    assert refused.value.status_code == 400
    assert daemon.out("ps", "-aq") == ""


def test_cache_from_an_image_without_local_history(daemon: Daemon, image: str, tmp_path: Path) -> None:
    dockerfile = f"FROM {image}\nENV STEP=1\nRUN echo layer > /layer\nRUN echo {TAG} > /second\nCMD [\"cat\", \"/layer\"]\n"
    context = _write(tmp_path / "ctx", {"Dockerfile": dockerfile})
    tag = "parity/cache:" + TAG
    daemon.out("build", "-t", tag, str(context), timeout=120)
    image_id = daemon.out("image", "inspect", "-f", "{{.Id}}", tag).strip()
    saved = tmp_path / "saved.tar"
    daemon.out("save", "-o", str(saved), tag)
    daemon.out("rmi", tag)  # the intermediate images (the local cache) go with it
    daemon.out("load", "-i", str(saved))
    plain = daemon.docker("build", str(context), timeout=120)
    assert plain.returncode == 0 and b"Using cache" not in plain.stdout  # nothing local to reuse
    daemon.docker("image", "prune", "-f")
    cached = daemon.docker("build", "--cache-from", tag, "-t", tag, str(context), timeout=120)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.count(b" ---> Using cache\n") == 4 and b"Running in" not in cached.stdout
    assert daemon.out("image", "inspect", "-f", "{{.Id}}", tag).strip() == image_id
    # a local cache hit counts only when a --cache-from image descends from it (dockerd's rule)
    other = daemon.docker("build", "--cache-from", image, str(context), timeout=120)
    assert other.returncode == 0 and b"Running in" in other.stdout
    daemon.docker("rmi", tag)
    daemon.docker("image", "prune", "-f")


def test_run_container_options(daemon: Daemon, client: docker.DockerClient, image: str, tmp_path: Path) -> None:
    dockerfile = (f"FROM {image}\nRUN grep buildhost /etc/hosts > /hosts; df -k /dev/shm | tail -1 > /shm; "
                  "ulimit -n > /nofile; ls /sys/class/net > /links\n")
    context = _write(tmp_path / "ctx", {"Dockerfile": dockerfile})
    tag = "parity/options:" + TAG
    daemon.out("build", "--no-cache", "--add-host", "buildhost:10.1.2.3", "--network", "none", "--shm-size", "8m",
               "--ulimit", "nofile=512:1024", "-t", tag, str(context), timeout=120)
    out = daemon.out("run", "--rm", tag, "sh", "-c", "cat /hosts /shm /nofile /links")
    lines = out.splitlines()
    assert lines[0].split() == ["10.1.2.3", "buildhost"]
    assert lines[1].split()[1] == "8192" and lines[2] == "512" and lines[3:] == ["lo"]
    py_tag = "parity/options-py:" + TAG
    client.images.build(path=str(context), tag=py_tag, nocache=True, network_mode="none",
                        extra_hosts={"buildhost": "10.9.8.7"}, shmsize=4 << 20,
                        container_limits={}, rm=True)
    out = daemon.out("run", "--rm", py_tag, "sh", "-c", "cat /hosts /shm")
    assert out.splitlines()[0].split() == ["10.9.8.7", "buildhost"] and out.splitlines()[1].split()[1] == "4096"
    daemon.out("rmi", tag, py_tag)
    assert json.loads(daemon.out("ps", "-a", "--format", "{{json .}}") or "null") is None


def test_run_steps_get_the_build_memory_limit(daemon: Daemon, image: str, tmp_path: Path) -> None:
    """``docker build --memory``: a RUN step that needs more is killed (137), the same step without it passes."""
    context = _write(tmp_path / "ctx", {"Dockerfile": f"FROM {image}\n"
                                        "RUN head -c 100000000 /dev/zero | tail -c 90000000 > /dev/null\n"})
    unlimited = daemon.docker("build", "--no-cache", str(context), timeout=120)
    assert unlimited.returncode == 0, unlimited.stderr
    limited = daemon.docker("build", "--no-cache", "--memory", "32m", "--memory-swap", "32m", str(context),
                            timeout=120)
    assert limited.returncode != 0 and b"returned a non-zero code: 137" in limited.stderr, limited.stderr
    daemon.docker("image", "prune", "-f")
    assert daemon.out("ps", "-aq") == ""


def test_run_steps_on_a_user_network(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    """``docker build --network NET``: RUN steps join the network and reach its containers by name."""
    network = name + "-net"
    daemon.out("network", "create", network)
    try:
        daemon.out("run", "-d", "--name", name, "--network", network, image, "sleep", "300")
        context = _write(tmp_path / "ctx", {"Dockerfile": f"FROM {image}\nRUN ping -c 1 -W 5 {name} > /ping\n"})
        tag = "parity/network:" + TAG
        built = daemon.docker("build", "--no-cache", "--network", network, "-t", tag, str(context), timeout=120)
        assert built.returncode == 0, built.stderr
        address = daemon.out("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}",
                             name).strip()
        assert address and f"({address})" in daemon.out("run", "--rm", tag, "cat", "/ping")
        daemon.out("rmi", tag)
    finally:
        daemon.docker("rm", "-f", name)
        daemon.out("network", "rm", network)

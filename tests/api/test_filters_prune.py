"""Filters and prune as Docker: ``until``, ``label``/``label!``, anonymous-only volume prune, image list filters,
and moby's refusal of unknown filter keys, through the real docker CLI and docker-py.

Refusal wording checked against moby's ``api/types/filters`` (``invalid filter 'x'``, ``invalid filter 'k=[v]'``).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterator

import docker
import pytest

from tests.support.daemon import Daemon

UNKNOWN_KEY_COMMANDS = [
    ("ps", "-a", "--filter", "bogus=1"),
    ("images", "--filter", "bogus=1"),
    ("volume", "ls", "--filter", "bogus=1"),
    ("network", "ls", "--filter", "bogus=1"),
    ("container", "prune", "-f", "--filter", "bogus=1"),
    ("image", "prune", "-f", "--filter", "bogus=1"),
    ("volume", "prune", "-f", "--filter", "bogus=1"),
    ("network", "prune", "-f", "--filter", "bogus=1"),
    ("container", "prune", "-f", "--filter", "reference=x"),  # a key of another route
    ("volume", "prune", "-f", "--filter", "dangling=true"),
]


@pytest.mark.parametrize("command", UNKNOWN_KEY_COMMANDS, ids=lambda c: " ".join(c))
def test_unknown_filter_keys_are_refused_with_mobys_words(daemon: Daemon, command: tuple) -> None:
    result = daemon.docker(*command)
    key = command[-1].split("=")[0]
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"Error response from daemon: invalid filter '{key}'"


@pytest.mark.parametrize("command", [("images", "--filter", "dangling=maybe"),
                                     ("volume", "ls", "--filter", "dangling=maybe")])
def test_a_boolean_filter_with_another_value_is_refused(daemon: Daemon, command: tuple) -> None:
    result = daemon.docker(*command)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "Error response from daemon: invalid filter 'dangling=[maybe]'"


@pytest.mark.parametrize("key, value", [("status", "sleeping"), ("health", "great")])
def test_container_state_filters_take_only_known_values(daemon: Daemon, key: str, value: str) -> None:
    result = daemon.docker("ps", "--filter", f"{key}={value}")
    assert result.returncode == 1
    assert result.stderr.decode().strip() == f"Error response from daemon: Unrecognised filter value for {key}: {value}"


def test_ps_name_id_publish_and_expose_filters(daemon: Daemon, image: str, name: str) -> None:
    daemon.out("create", "--name", name, "-p", "127.0.0.1::8080", "--expose", "9000/udp", "--label", "suite=" + name,
               image, "true")
    try:
        def listed(*filters: str) -> list[str]:
            args = [item for f in ("label=suite=" + name, *filters) for item in ("--filter", f)]
            return daemon.out("ps", "-a", "--format", "{{.Names}}", *args).split()

        assert listed(f"name=^{name}$") == [name]  # names and ids are regular expressions, as moby's
        assert listed(f"name=^/{name}$") == [name]
        assert listed("name=^nothing-like-it$") == []
        container_id = daemon.out("inspect", "--format", "{{.Id}}", name).strip()
        assert listed(f"id={container_id[:10]}") == [name]
        assert listed("publish=8080") == [name]
        assert listed("publish=8000-8100/tcp") == [name]
        assert listed("publish=8080/udp") == []
        assert listed("expose=9000/udp") == [name]
        assert listed("expose=9000") == []
        bad = daemon.docker("ps", "--filter", "publish=1:80")
        assert bad.returncode == 1
        assert "filter for 'publish' should not contain ':': 1:80" in bad.stderr.decode()
    finally:
        daemon.docker("rm", "-f", name)


def test_until_that_is_neither_time_nor_duration_is_refused(daemon: Daemon) -> None:
    result = daemon.docker("container", "prune", "-f", "--filter", "until=yesterday")
    assert result.returncode == 1
    assert 'failed to parse value as time or duration: "yesterday"' in result.stderr.decode()
    twice = daemon.docker("network", "prune", "-f", "--filter", "until=1h", "--filter", "until=2h")
    assert twice.returncode == 1
    assert twice.stderr.decode().strip() == "Error response from daemon: more than one until filter specified"


def _ids(daemon: Daemon, *args: str) -> list[str]:
    return daemon.out(*args).split()


@pytest.fixture
def labelled(daemon: Daemon, image: str, name: str) -> Iterator[dict]:
    """Three stopped containers, networks and volumes: labelled keep, labelled drop, unlabelled."""
    made = {"containers": [], "networks": [], "volumes": []}
    for suffix, labels in (("keep", [f"suite={name}", "keep=yes"]), ("drop", [f"suite={name}", "drop=yes"]),
                           ("bare", [])):
        flags = [item for label in labels for item in ("--label", label)]
        made["containers"].append(daemon.out("create", *flags, "--name", f"{name}-{suffix}", image,
                                             "true").strip())
        made["networks"].append(daemon.out("network", "create", *flags, f"{name}-{suffix}").strip())
        made["volumes"].append(daemon.out("volume", "create", *flags, f"{name}-{suffix}").strip())
    try:
        yield made
    finally:
        daemon.docker("rm", "-f", *made["containers"])
        daemon.docker("network", "rm", *made["networks"])
        daemon.docker("volume", "rm", "-f", *made["volumes"])


def _exists(daemon: Daemon, kind: str, ref: str) -> bool:
    return daemon.docker(kind, "inspect", ref).returncode == 0


def test_container_and_network_prune_by_label_and_until(daemon: Daemon, labelled: dict, name: str) -> None:
    keep, drop, bare = labelled["containers"]
    # created moments ago: an until of an hour back prunes none of them
    daemon.out("container", "prune", "-f", "--filter", "until=1h", "--filter", "label=suite=" + name)
    assert all(_exists(daemon, "container", ref) for ref in (keep, drop))
    # label! with the suite label: only the one not labelled keep goes
    daemon.out("container", "prune", "-f", "--filter", "label=suite=" + name, "--filter", "label!=keep")
    assert _exists(daemon, "container", keep) and not _exists(daemon, "container", drop)
    assert _exists(daemon, "container", bare)  # no suite label: untouched
    future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    daemon.out("container", "prune", "-f", "--filter", "until=" + future, "--filter", "label=keep")
    assert not _exists(daemon, "container", keep) and _exists(daemon, "container", bare)

    net_keep, net_drop, net_bare = [f"{name}-{s}" for s in ("keep", "drop", "bare")]
    daemon.out("network", "prune", "-f", "--filter", "until=1h")
    assert all(_exists(daemon, "network", n) for n in (net_keep, net_drop, net_bare))
    daemon.out("network", "prune", "-f", "--filter", "label=suite=" + name, "--filter", "label!=keep")
    assert _exists(daemon, "network", net_keep) and not _exists(daemon, "network", net_drop)
    daemon.out("network", "prune", "-f", "--filter", f"until={int(time.time()) + 60}", "--filter", "label=keep")
    assert not _exists(daemon, "network", net_keep) and _exists(daemon, "network", net_bare)


def test_volume_prune_takes_only_anonymous_volumes_unless_all(daemon: Daemon, image: str, labelled: dict,
                                                               name: str) -> None:
    container = daemon.out("create", "-v", "/data", "--label", "suite=" + name, image, "true").strip()
    anonymous = json.loads(daemon.out("inspect", container))[0]["Mounts"][0]["Name"]
    daemon.out("rm", container)
    pruned = daemon.out("volume", "prune", "-f")
    assert anonymous in pruned
    assert all(_exists(daemon, "volume", v) for v in labelled["volumes"]), pruned
    daemon.out("volume", "prune", "-af", "--filter", "label=suite=" + name, "--filter", "label!=keep")
    keep, drop, bare = labelled["volumes"]
    assert _exists(daemon, "volume", keep) and not _exists(daemon, "volume", drop) and _exists(daemon, "volume", bare)


def test_volume_prune_before_api_1_42_takes_named_volumes_too(daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
                                                              name: str) -> None:
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    daemon.out("volume", "create", "--label", "suite=" + name, name)
    old = docker.DockerClient(base_url=daemon.host, version="1.41")
    new = docker.DockerClient(base_url=daemon.host, version="1.47")
    try:
        assert name not in (new.volumes.prune(filters={"label": "suite=" + name})["VolumesDeleted"] or [])
        assert old.volumes.prune(filters={"label": "suite=" + name})["VolumesDeleted"] == [name]
    finally:
        old.close()
        new.close()
        daemon.docker("volume", "rm", "-f", name)


@pytest.fixture
def images(daemon: Daemon, image: str, name: str) -> Iterator[list[str]]:
    """Two committed images, ``<name>/img:one`` (label flt=one) then ``<name>/img:two`` (flt=two)."""
    made = []
    for tag in ("one", "two"):
        container = daemon.out("create", image, "true").strip()
        try:
            made.append(daemon.out("commit", "--change", f"LABEL flt={tag} suite={name}", container,
                                   f"{name}/img:{tag}").strip())
        finally:
            daemon.docker("rm", container)
    try:
        yield made
    finally:
        daemon.docker("rmi", "-f", *made)


def _listed(daemon: Daemon, *filters: str) -> list[str]:
    args = [item for f in filters for item in ("--filter", f)]
    return daemon.out("images", "--no-trunc", "--format", "{{.ID}}", *args).split()


def test_image_list_filters(daemon: Daemon, images: list[str], name: str) -> None:
    one, two = images
    assert sorted(_listed(daemon, f"reference={name}/img")) == sorted(images)
    assert _listed(daemon, f"reference={name}/img:one") == [one]
    assert _listed(daemon, f"reference={name}/*:two") == [two]
    assert _listed(daemon, "reference=*:two") == []  # '*' stays inside one path component, as Go's path.Match
    assert _listed(daemon, "label=flt=one") == [one]
    assert _listed(daemon, f"label=suite={name}", "label=flt=two") == [two]
    assert _listed(daemon, f"label=suite={name}", f"since={name}/img:one") == [two]
    assert _listed(daemon, f"label=suite={name}", f"before={name}/img:two") == [one]
    assert _listed(daemon, f"label=suite={name}", "dangling=false") == [two, one]
    assert _listed(daemon, f"label=suite={name}", "dangling=true") == []
    missing = daemon.docker("images", "--filter", f"since={name}/nothing:here")
    assert missing.returncode == 1 and "No such image" in missing.stderr.decode()


def test_image_dangling_list_and_prune_by_label(daemon: Daemon, images: list[str], image: str, name: str) -> None:
    one, two = images
    daemon.out("tag", f"{name}/img:two", f"{name}/img:one")  # one loses its only tag: dangling
    assert one in _listed(daemon, "dangling=true", f"label=suite={name}")
    daemon.out("image", "prune", "-f", "--filter", f"label=suite={name}", "--filter", "until=1h")
    assert _exists(daemon, "image", one)  # made moments ago
    daemon.out("image", "prune", "-f", "--filter", f"label=suite={name}", "--filter", "label!=flt=one")
    assert _exists(daemon, "image", one)
    pruned = daemon.out("image", "prune", "-f", "--filter", f"label=suite={name}")
    assert one.split(":")[1] in pruned and not _exists(daemon, "image", one)
    assert _exists(daemon, "image", two)


def test_docker_py_filters(daemon: Daemon, images: list[str], labelled: dict, name: str,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    client = docker.DockerClient(base_url=daemon.host)
    try:
        assert [i.id for i in client.images.list(filters={"reference": f"{name}/img:two"})] == [images[1]]
        assert [i.id for i in client.images.list(filters={"label": [f"suite={name}", "flt=one"]})] == [images[0]]
        result = client.containers.prune(filters={"label": f"suite={name}", "label!": "keep"})
        assert result["ContainersDeleted"] == [labelled["containers"][1]]
        with pytest.raises(docker.errors.APIError, match="invalid filter 'nope'"):
            client.networks.prune(filters={"nope": "1"})
    finally:
        client.close()

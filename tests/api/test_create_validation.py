"""Create-time validation as dockerd: conflicting options are refused before anything is made, with moby's words
(``runconfig.validateNetMode``, ``ValidateRestartPolicy``, ``validateHostConfig``), through the docker CLI and
docker-py; what dockerd only warns about comes back as a warning."""

from __future__ import annotations

import docker
import pytest

from tests.support.daemon import Daemon

MAC = "92:d0:c6:0a:29:33"


@pytest.fixture
def client(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> docker.APIClient:
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    api = docker.APIClient(base_url=daemon.host)
    yield api
    api.close()


def _names(daemon: Daemon) -> list[str]:
    return daemon.out("ps", "-a", "--format", "{{.Names}}").split()


@pytest.mark.parametrize("host, message", [
    ({"auto_remove": True, "restart_policy": {"Name": "always"}},
     "can't create 'AutoRemove' container with restart policy"),
    ({"auto_remove": True, "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 2}},
     "can't create 'AutoRemove' container with restart policy"),
    ({"restart_policy": {"Name": "sometimes"}}, "invalid restart policy 'sometimes'"),
    ({"restart_policy": {"Name": "always", "MaximumRetryCount": 3}},
     "maximum retry count cannot be used with restart policy 'always'"),
    ({"restart_policy": {"Name": "unless-stopped", "MaximumRetryCount": -1}},
     "maximum retry count cannot be used with restart policy 'unless-stopped'"),
    ({"restart_policy": {"Name": "on-failure", "MaximumRetryCount": -1}}, "maximum retry count cannot be negative"),
    ({"network_mode": "host", "links": {"other": "alias"}},
     "conflicting options: host type networking can't be used with links. This would result in undefined behavior"),
    ({"network_mode": "container:"}, "Invalid network mode: invalid container format container:<name|id>"),
    ({"network_mode": "container:other", "dns": ["8.8.8.8"]}, "conflicting options: dns and the network mode"),
    ({"network_mode": "container:other", "extra_hosts": {"name": "8.8.8.8"}},
     "conflicting options: custom host-to-IP mapping and the network mode"),
    ({"network_mode": "container:other", "port_bindings": {80: 8080}},
     "conflicting options: port publishing and the container type network mode"),
    ({"network_mode": "container:other", "publish_all_ports": True},
     "conflicting options: port publishing and the container type network mode"),
])
def test_conflicting_host_options_are_refused_with_dockerds_words(daemon: Daemon, client: docker.APIClient,
                                                                  image: str, name: str, host: dict,
                                                                  message: str) -> None:
    with pytest.raises(docker.errors.APIError) as refused:
        client.create_container(image, ["true"], name=name, host_config=client.create_host_config(**host))
    assert refused.value.status_code == 400
    assert refused.value.explanation == message
    assert name not in _names(daemon)


@pytest.mark.parametrize("config, host, message", [
    ({"hostname": "box"}, {"network_mode": "container:other"}, "conflicting options: hostname and the network mode"),
    ({"ports": [80]}, {"network_mode": "container:other"},
     "conflicting options: port exposing and the container type network mode"),
    ({"hostname": "box"}, {"uts_mode": "host"}, "conflicting options: hostname and the UTS mode"),
    ({"mac_address": MAC}, {"network_mode": "host"}, "conflicting options: mac-address and the network mode"),
])
def test_options_that_contradict_the_network_mode_are_refused(daemon: Daemon, client: docker.APIClient, image: str,
                                                              name: str, config: dict, host: dict,
                                                              message: str) -> None:
    with pytest.raises(docker.errors.APIError) as refused:
        client.create_container(image, ["true"], name=name, host_config=client.create_host_config(**host), **config)
    assert (refused.value.status_code, refused.value.explanation) == (400, message)
    assert name not in _names(daemon)


def test_the_refusal_comes_before_the_image_lookup(client: docker.APIClient, name: str) -> None:
    with pytest.raises(docker.errors.APIError) as refused:
        client.create_container("no-such-image-here:never", ["true"], name=name,
                                host_config=client.create_host_config(auto_remove=True,
                                                                      restart_policy={"Name": "always"}))
    assert refused.value.explanation == "can't create 'AutoRemove' container with restart policy"


@pytest.mark.parametrize("args, message", [
    (["--network", "host", "--mac-address", MAC], "conflicting options: mac-address and the network mode"),
    (["--network", "container:other", "--dns", "8.8.8.8"], "conflicting options: dns and the network mode"),
    (["--network", "container:other", "--add-host", "name:8.8.8.8"],
     "conflicting options: custom host-to-IP mapping and the network mode"),
    (["--network", "container:other", "-p", "8080:80"],
     "conflicting options: port publishing and the container type network mode"),
    (["--network", "container:other", "--expose", "80"],
     "conflicting options: port exposing and the container type network mode"),
])
def test_docker_cli_gets_dockerds_refusals(daemon: Daemon, image: str, name: str, args: list,
                                           message: str) -> None:
    result = daemon.docker("create", "--name", name, *args, image, "true")
    assert result.returncode != 0
    assert message in result.stderr.decode()
    assert name not in _names(daemon)


def test_published_ports_on_the_host_network_are_a_warning(daemon: Daemon, image: str, name: str) -> None:
    result = daemon.docker("create", "--name", name, "--network", "host", "-p", "8080:80", image, "true")
    try:
        assert result.returncode == 0, result.stderr
        assert "Published ports are discarded when using host network mode" in result.stderr.decode()
    finally:
        daemon.docker("rm", "-f", name)

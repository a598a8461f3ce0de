"""Networking options through the real docker CLI and docker-py: --link, --mac-address, --ip/--ip6, dual-stack and
option-carrying networks, swarm drivers refused, and the embedded DNS server of user-defined networks.

Queries for unknown names go to ``--dns 127.0.0.1`` (nothing listens there on the test machine), so no DNS leaves
the machine; the point is that they fail fast with SERVFAIL instead of hanging.
"""
from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import docker
import pytest

from tests.support.daemon import Daemon, free_subnet


@pytest.fixture
def network(daemon: Daemon, name: str) -> Iterator[str]:
    """A name for a network the test creates; the network and its containers go at the end."""
    net = name + "-net"
    yield net
    ids = daemon.docker("ps", "-aq", "--filter", "network=" + net).stdout.split()
    if ids:
        daemon.docker("rm", "-f", *[item.decode() for item in ids])
    daemon.docker("network", "rm", net)


def inspect(daemon: Daemon, *args: str) -> object:
    return json.loads(daemon.out("inspect", *args))[0]


def test_legacy_links_give_env_hosts_and_can_be_removed(daemon: Daemon, image: str, name: str) -> None:
    db, web = name + "-db", name + "-web"
    try:
        daemon.out("run", "-d", "--name", db, "--hostname", "dbhost", "-e", "SECRET=s3", "-e", "PATH=/bin",
                   "--expose", "5432", "--expose", "7000-7001", image, "sleep", "300")
        db_ip = daemon.out("inspect", "-f", "{{.NetworkSettings.IPAddress}}", db).strip()
        daemon.out("run", "-d", "--name", web, "--link", db + ":sql", image, "sleep", "300")
        env = daemon.out("exec", web, "env").splitlines()
        for line in (f"SQL_PORT=tcp://{db_ip}:5432", f"SQL_PORT_5432_TCP=tcp://{db_ip}:5432",
                     f"SQL_PORT_5432_TCP_ADDR={db_ip}", "SQL_PORT_5432_TCP_PORT=5432",
                     "SQL_PORT_5432_TCP_PROTO=tcp", f"SQL_PORT_7000_TCP_START=tcp://{db_ip}:7000",
                     "SQL_PORT_7000_TCP_PORT_END=7001", f"SQL_NAME=/{web}/sql", "SQL_ENV_SECRET=s3"):
            assert line in env
        assert not any(line.startswith("SQL_ENV_PATH=") for line in env)
        assert f"{db_ip}\tsql dbhost {db}" in daemon.out("exec", web, "cat", "/etc/hosts")
        assert daemon.docker("exec", web, "ping", "-c", "1", "-W", "5", "sql").returncode == 0
        assert inspect(daemon, web)["HostConfig"]["Links"] == [f"/{db}:/{web}/sql"]

        default = daemon.docker("rm", "--link", db)
        assert default.returncode == 1
        assert b"Conflict, cannot remove the default link name of the container" in default.stderr
        assert daemon.out("rm", "--link", f"/{web}/sql") == f"/{web}/sql\n"
        assert inspect(daemon, web)["HostConfig"]["Links"] is None
        assert "sql" not in daemon.out("exec", web, "cat", "/etc/hosts")
        assert daemon.docker("inspect", db).returncode == 0  # removing a link leaves the container

        missing = daemon.docker("run", "--rm", "--link", "nosuch-" + name + ":x", image, "true")
        assert missing.returncode == 125 and b"could not get container for nosuch-" in missing.stderr
        host = daemon.docker("run", "--rm", "--network", "host", "--link", db, image, "true")
        assert b"conflicting options: host type networking can't be used with links" in host.stderr
        elsewhere = daemon.docker("run", "--rm", "--link", web + "-none:x", image, "true")
        assert b"could not get container for " in elsewhere.stderr
        daemon.out("run", "-d", "--name", web + "-alone", "--network", "none", image, "sleep", "300")
        alone = daemon.docker("run", "--rm", "--link", web + "-alone:x", image, "true")
        assert b"Cannot link to /%s-alone, as it does not belong to the default network" % web.encode() in alone.stderr
        daemon.out("stop", "-t", "0", db)
        stopped = daemon.docker("run", "--rm", "--link", db + ":sql", image, "true")
        assert stopped.returncode != 0
        assert b"Cannot link to a non running container: /%s AS /" % db.encode() in stopped.stderr
    finally:
        daemon.docker("rm", "-f", db, web, web + "-alone")


def test_addresses_mac_and_a_dual_stack_network(daemon: Daemon, image: str, name: str, network: str) -> None:
    v4 = free_subnet(197)
    prefix = v4.rsplit(".", 1)[0]
    v6 = f"fd00:{uuid.uuid4().int & 0xFFFF:x}:{uuid.uuid4().int & 0xFFFF:x}::/64"
    v6_prefix = v6.split("::")[0]
    daemon.out("network", "create", "--ipv6", "--subnet", v4, "--subnet", v6, network)
    shown = inspect(daemon, "--type", "network", network)
    assert shown["EnableIPv6"] is True
    assert [c["Subnet"] for c in shown["IPAM"]["Config"]] == [v4, v6]

    box = name + "-box"
    daemon.out("run", "-d", "--name", box, "--network", network, "--ip", prefix + ".50", "--ip6", v6_prefix + "::50",
               "--mac-address", "02:11:22:33:44:55", image, "sleep", "300")
    endpoint = inspect(daemon, box)["NetworkSettings"]["Networks"][network]
    assert (endpoint["IPAddress"], endpoint["GlobalIPv6Address"], endpoint["MacAddress"]) == (
        prefix + ".50", v6_prefix + "::50", "02:11:22:33:44:55")
    assert endpoint["IPAMConfig"] == {"IPv4Address": prefix + ".50", "IPv6Address": v6_prefix + "::50"}
    links = daemon.out("exec", box, "ip", "addr", "show", "eth0")
    assert "link/ether 02:11:22:33:44:55" in links and f"inet6 {v6_prefix}::50/64" in links
    member = inspect(daemon, "--type", "network", network)["Containers"]
    assert [entry["IPv6Address"] for entry in member.values()] == [v6_prefix + "::50/64"]
    ping = daemon.docker("run", "--rm", "--network", network, image, "ping", "-c", "1", "-W", "5", v6_prefix + "::50")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    other = daemon.out("run", "--rm", "--network", network, image, "ip", "-6", "addr", "show", "eth0")
    assert f"inet6 {v6_prefix}::" in other  # an address of its own from the v6 subnet

    taken = daemon.docker("run", "--rm", "--network", network, "--ip", prefix + ".50", image, "true")
    assert b"Address already in use" in taken.stderr
    bridge_ip = daemon.docker("run", "--rm", "--ip", "10.9.9.9", image, "true")
    assert b"user specified IP address is supported on user defined networks only" in bridge_ip.stderr
    host_mac = daemon.docker("run", "--rm", "--network", "host", "--mac-address", "02:00:00:00:00:01", image, "true")
    assert b"conflicting options: mac-address and the network mode" in host_mac.stderr


def test_network_options_and_swarm_drivers(daemon: Daemon, image: str, name: str, network: str) -> None:
    bridge = f"mrtx{uuid.uuid4().hex[:8]}"
    daemon.out("network", "create", "--attachable", "--internal", "--scope", "local", "--label", "k=v",
               "-o", "com.docker.network.bridge.name=" + bridge, "-o", "com.docker.network.driver.mtu=1400", network)
    shown = inspect(daemon, "--type", "network", network)
    assert (shown["Attachable"], shown["Internal"], shown["Scope"], shown["Labels"]) == (True, True, "local",
                                                                                        {"k": "v"})
    box = name + "-box"
    daemon.out("run", "-d", "--name", box, "--network", network, image, "sleep", "300")
    device = subprocess.run(["ip", "-o", "link", "show", bridge], capture_output=True, text=True).stdout
    assert "mtu 1400" in device
    assert daemon.out("exec", box, "ip", "route") .count("default") == 0  # internal: no way out
    daemon.out("rm", "-f", box)
    for args, message in (
            (["-d", "overlay"], b'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" '
                                b'to connect this node to swarm and try again.'),
            (["--ingress"], b"Ingress network can only be global scope network"),
            (["--scope", "swarm"], b"cannot create a swarm scoped network when swarm is not active")):
        refused = daemon.docker("network", "create", *args, name + "-swarm")
        assert refused.returncode == 1 and message in refused.stderr, refused.stderr
    assert daemon.docker("network", "inspect", name + "-swarm").returncode == 1


def test_embedded_dns_answers_names_ids_and_aliases(daemon: Daemon, image: str, name: str, network: str) -> None:
    daemon.out("network", "create", network)
    web = name + "-web"
    web_id = daemon.out("run", "-d", "--name", web, "--network", network, "--network-alias", "front", image,
                        "sleep", "300").strip()
    web_ip = inspect(daemon, web)["NetworkSettings"]["Networks"][network]["IPAddress"]
    script = (f"cat /etc/resolv.conf; for n in {web} front {web_id[:12]} {web}.{network}; do nslookup $n || echo FAILED $n; done; "
              "nslookup nosuch.invalid || echo UNKNOWN-FAILED")
    result = daemon.docker("run", "--rm", "--network", network, "--dns", "127.0.0.1", image, "sh", "-c", script,
                           timeout=60)
    output = result.stdout.decode()
    assert output.startswith("nameserver 127.0.0.11\n") and "options ndots:0" in output
    assert "FAILED " not in output.replace("UNKNOWN-FAILED", "")
    assert output.count(web_ip) >= 4
    assert "UNKNOWN-FAILED" in output and "SERVFAIL" in output
    joined = daemon.out("run", "--rm", "--network", "container:" + web, image, "sh", "-c",
                        "cat /etc/resolv.conf; nslookup front")
    assert joined.startswith("nameserver 127.0.0.11\n") and web_ip in joined  # shares web's namespace and server
    late = name + "-late"
    daemon.out("run", "-d", "--name", late, "--dns", "127.0.0.1", image, "sleep", "300")
    assert "127.0.0.11" not in daemon.out("exec", late, "cat", "/etc/resolv.conf")  # default bridge: host's servers
    daemon.out("network", "connect", network, late)
    assert daemon.out("exec", late, "cat", "/etc/resolv.conf").startswith("nameserver 127.0.0.11\n")
    assert web_ip in daemon.out("exec", late, "nslookup", "front")
    daemon.out("rm", "-f", late)


def test_networking_config_endpoint_settings_with_docker_py(daemon: Daemon, image: str, name: str,
                                                           network: str) -> None:
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        v4 = free_subnet(196)
        prefix = v4.rsplit(".", 1)[0]
        client.networks.create(network, ipam=docker.types.IPAMConfig(pool_configs=[
            docker.types.IPAMPool(subnet=v4)]))
        db = client.containers.run(image, ["sleep", "300"], name=name + "-db", detach=True, network=network)
        config = client.api.create_networking_config({network: client.api.create_endpoint_config(
            aliases=["api", "backend"], ipv4_address=prefix + ".77", links=[(db.name, "store")])})
        created = client.api.create_container(image, ["sleep", "300"], name=name + "-app",
                                              networking_config=config)
        client.api.start(created["Id"])
        body = {"Image": image, "Cmd": ["true"], "HostConfig": {  # docker-py itself refuses this combination
            "NetworkMode": "host", "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}}
        hosted = client.api._result(client.api._post_json(client.api._url("/containers/create"), data=body,
                                                          params={"name": name + "-hosted"}), json=True)
        assert hosted["Warnings"] == ["Published ports are discarded when using host network mode"]
        legacy_mac = client.containers.run(image, ["ip", "link", "show", "eth0"], name=name + "-mac", remove=True,
                                           mac_address="02:ab:cd:ef:01:23")  # Config.MacAddress, as docker-py sends it
        assert b"link/ether 02:ab:cd:ef:01:23" in legacy_mac
        app = client.containers.get(created["Id"])
        endpoint = app.attrs["NetworkSettings"]["Networks"][network]
        assert endpoint["IPAddress"] == prefix + ".77"
        assert set(endpoint["Aliases"]) >= {"api", "backend"}
        assert set(endpoint["DNSNames"]) >= {app.name, created["Id"][:12], "api", "backend"}
        for alias in ("api", "backend", created["Id"][:12]):
            code, out = db.exec_run(["nslookup", alias])
            assert code == 0 and prefix.encode() + b".77" in out, out
        code, out = app.exec_run(["nslookup", "store"])  # the link is the app's own name for db
        assert code == 0 and db.attrs["Id"][:12].encode() not in out
        db_ip = client.containers.get(db.id).attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        assert db_ip.encode() in out
    finally:
        for suffix in ("-app", "-db", "-hosted"):
            try:
                client.containers.get(name + suffix).remove(force=True)
            except docker.errors.NotFound:
                pass
        client.close()


def test_network_connect_with_address_alias_and_link(daemon: Daemon, image: str, name: str, network: str) -> None:
    subnet = free_subnet(195)
    prefix = subnet.rsplit(".", 1)[0]
    daemon.out("network", "create", "--subnet", subnet, network)
    db, app = name + "-db", name + "-app"
    daemon.out("run", "-d", "--name", db, "--network", network, "--dns", "127.0.0.1", image, "sleep", "300")
    daemon.out("run", "-d", "--name", app, image, "sleep", "300")
    daemon.out("network", "connect", "--ip", prefix + ".88", "--alias", "worker", "--link", db + ":store",
               network, app)
    endpoint = inspect(daemon, app)["NetworkSettings"]["Networks"][network]
    assert endpoint["IPAddress"] == prefix + ".88" and "worker" in endpoint["Aliases"]
    assert endpoint["Links"] == [db + ":store"]
    db_ip = inspect(daemon, db)["NetworkSettings"]["Networks"][network]["IPAddress"]
    assert db_ip in daemon.out("exec", app, "nslookup", "store")
    assert prefix + ".88" in daemon.out("exec", db, "nslookup", "worker")
    unknown = daemon.docker("exec", db, "nslookup", "store")  # the link is app's own name for db: asked upstream
    assert unknown.returncode != 0 and b"SERVFAIL" in unknown.stdout + unknown.stderr

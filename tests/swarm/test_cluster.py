"""Issue 13's "Done when" on three ``local`` machines running Debian's Docker Engine, one cluster for the module:
a 3-manager swarm forms, a stack of two services on an overlay network spreads over the nodes and answers across
them, stopping a manager keeps ``docker node ls`` answering, and ``machines rm`` of a worker drains it first.

One test walks the cluster through these steps in order (each starts from what the previous one left): forming a
swarm of Docker Engine hosts is the slow part, so it is done once, and pytest-xdist never splits the steps over
workers (its default distribution would, for separate tests of one module).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import TypeVar

import pytest

from tests.support.waiting import poll
from tests.swarm.conftest import ENGINE_FLAGS, IMAGE, Fleet

T = TypeVar("T")


def converge(what: str, check: Callable[[], T]) -> T:
    """A wait for the cluster to converge (Raft, task scheduling): longer than a container's, looked at once a second."""
    return poll(what, check, limit=120.0, interval=1.0)


COMPOSE = f"""
version: "3.8"
services:
  web:
    image: {IMAGE}
    command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
    networks: [appnet]
    stop_grace_period: 1s
    deploy:
      replicas: 3
      endpoint_mode: dnsrr  # no IPVS in this kernel: no virtual IP, DNS round robin over the tasks
      placement:
        max_replicas_per_node: 1
    ports:
      - {{target: 8080, published: 18080, protocol: tcp, mode: host}}  # no ingress mesh without IPVS
  client:
    image: {IMAGE}
    command: ["sleep", "100000"]
    networks: [appnet]
    stop_grace_period: 1s
    deploy:
      endpoint_mode: dnsrr
networks:
  appnet:
    driver: overlay
"""


def _nodes(fleet: Fleet, cluster: str) -> dict[str, dict[str, str]]:
    """``machines swarm ls`` rows by machine name."""
    lines = fleet("swarm", "ls", cluster).stdout.splitlines()
    header = lines[0].split()
    return {row["MACHINE"]: row for row in (dict(zip(header, line.split(), strict=True)) for line in lines[1:])}


def _tasks(fleet: Fleet, cluster: str, service: str) -> list[dict[str, str]]:
    output = fleet.docker(f"--swarm {cluster}", f"docker service ps {service} --format '{{{{json .}}}}'").stdout
    return [json.loads(line) for line in output.decode().splitlines()]


def _running_nodes(fleet: Fleet, cluster: str, service: str) -> list[str]:
    return sorted(task["Node"] for task in _tasks(fleet, cluster, service)
                  if task["DesiredState"] == "Running" and task["CurrentState"].startswith("Running"))


def _answers(fleet: Fleet, node: str, probe: str) -> set[str] | str:
    """The distinct answers of ``probe`` run on ``node`` when there are three, else what it printed (not true)."""
    result = fleet.docker(node, probe, check=False)
    answers = set(result.stdout.decode().split())
    return answers if len(answers) == 3 else ""


@pytest.mark.timeout(900)  # four steps on one cluster, on a machine shared with the rest of the suite
def test_a_three_manager_swarm_from_creation_to_rm(fleet: Fleet) -> None:
    names = [fleet.name(f"sw{index}") for index in (1, 2, 3)]
    fleet("create", *ENGINE_FLAGS, *names)  # in parallel
    for name in names:
        fleet.load_busybox(name)
    cluster = {"name": names[0], "managers": " ".join(names)}
    _three_managers_form_a_swarm_and_tokens_stay_secret(fleet, cluster)
    _stack_spreads_over_the_nodes_and_answers_across_them(fleet, cluster)
    _worker_created_into_the_swarm_is_drained_by_rm(fleet, cluster)
    _a_stopped_manager_keeps_the_swarm_answering(fleet, cluster)


def _three_managers_form_a_swarm_and_tokens_stay_secret(fleet: Fleet, cluster: dict[str, str]) -> None:
    first, *others = cluster["managers"].split()
    assert fleet("swarm", "init", first).stdout == f"{first}\n"
    joined = fleet("--debug", "swarm", "join", *others, "--manager", first, "--role", "manager")
    assert "SWMTKN" not in joined.stdout + joined.stderr  # the token went from one host's stdout to another's stdin
    nodes = _nodes(fleet, first)
    assert sorted(nodes) == sorted([first, *others])
    assert {row["ROLE"] for row in nodes.values()} == {"manager"}
    assert {row["AVAILABILITY"] for row in nodes.values()} == {"Active"}
    assert [row["LEADER"] for row in nodes.values()].count("*") == 1
    listing = fleet("ls", "--format", "{name} {engine} {runtime}").stdout.split("\n")
    assert f"{first} docker docker-20.10" in "\n".join(listing)  # Debian 12's docker.io
    assert "SWMTKN" not in fleet("inspect", first).stdout
    again = fleet("swarm", "join", others[0], "--manager", first, check=False)
    assert again.returncode == 1 and "already part of a swarm" in again.stderr


def _stack_spreads_over_the_nodes_and_answers_across_them(fleet: Fleet, cluster: dict[str, str]) -> None:
    swarm = f"--swarm {cluster['name']}"
    fleet.docker(swarm, "docker node ls && docker stack deploy -c - app", stdin=COMPOSE.encode())
    managers = cluster["managers"].split()
    assert converge("3 web tasks on 3 nodes", lambda: _running_nodes(fleet, cluster["name"], "app_web") == sorted(managers))
    client_node = converge("the client task", lambda: _running_nodes(fleet, cluster["name"], "app_client"))[0]

    # Service to service over the overlay: from the client's container, each web task by its overlay address.
    probe = ("c=$(docker ps -q -f label=com.docker.swarm.service.name=app_client) && "
             "docker exec $c sh -c 'for ip in $(nslookup tasks.web 127.0.0.11 | sed -n \"s/^Address: //p\"); do "
             "timeout 5 wget -q -O - http://$ip:8080/; done'")
    answers = converge("answers of all web tasks", lambda: _answers(fleet, client_node, probe))
    web_containers = {task["Name"] for task in _tasks(fleet, cluster["name"], "app_web")}
    assert len(answers) == 3 and len(web_containers) >= 3  # three containers answered, one per node

    # Published in host mode: each node's own address answers with the task on that node.
    for name in managers:
        address = fleet("ip", name).stdout.strip()
        result = subprocess.run(["curl", "-s", "-m", "5", f"http://{address}:18080/"], capture_output=True, text=True)
        assert result.stdout.strip() in answers

    # dockerd ran with iptables=false, ip-masq=false, bridge=none: this machine's own tables got nothing.
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert "DOCKER" not in rules and "docker_gwbridge" not in rules


def _worker_created_into_the_swarm_is_drained_by_rm(fleet: Fleet, cluster: dict[str, str]) -> None:
    worker = fleet.name("wk")
    fleet("create", *ENGINE_FLAGS, "--swarm-manager", cluster["name"], worker)  # worker is the default role
    assert _nodes(fleet, cluster["name"])[worker]["ROLE"] == "worker"
    fleet.load_busybox(worker)
    # The scheduler spreads replicas over the nodes with the fewest: one of the four lands on the new worker.
    fleet.docker(f"--swarm {cluster['name']}",
                 f"docker service create -q --name mover --replicas 4 --stop-grace-period 1s {IMAGE} sleep 100000")
    assert worker in converge("a mover task on the worker", lambda: _running_nodes(fleet, cluster["name"], "mover"))

    removed = fleet("-v", "rm", "-y", worker)
    assert "Leaving the swarm" in removed.stderr
    assert worker not in _nodes(fleet, cluster["name"])
    nodes = converge("4 mover tasks again, none on the worker",
                  lambda: (lambda found: found if len(found) == 4 else None)(_running_nodes(fleet, cluster["name"], "mover")))
    assert worker not in nodes and set(nodes) <= set(cluster["managers"].split())


def _a_stopped_manager_keeps_the_swarm_answering(fleet: Fleet, cluster: dict[str, str]) -> None:
    first, second, third = cluster["managers"].split()
    fleet("stop", first)
    listing = converge("docker node ls through another manager",
                    lambda: fleet.docker(f"--swarm {cluster['name']}", "docker node ls", check=False).stdout.decode())
    assert second in listing and third in listing
    converge("the stopped manager seen as unreachable",
          lambda: _nodes(fleet, cluster["name"])[first]["MANAGER"] == "Unreachable")

    # With one manager down, removing another would leave 1 of 2: refused with the reason, nothing removed.
    refused = fleet("rm", "-y", second, check=False)
    assert refused.returncode == 1 and "quorum" in refused.stderr
    assert second in fleet("ls", "-q").stdout.split()

    fleet("start", first)
    converge("the stopped manager back in the swarm",
          lambda: _nodes(fleet, cluster["name"]).get(first, {}).get("STATUS") == "Ready")

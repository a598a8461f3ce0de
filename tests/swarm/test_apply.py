"""Issue 14 item 5 with Swarm mode: ``machines apply`` of a file whose two ``local`` machines run Docker Engine,
one starting a swarm and one joining it as a worker, makes the swarm ``create --swarm-manager`` would make."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.swarm.conftest import Fleet
from tests.swarm.test_cluster import _nodes


@pytest.mark.timeout(900)  # two Docker Engine hosts on a shared machine
def test_apply_makes_a_swarm_manager_first_then_its_worker(fleet: Fleet, tmp_path: Path) -> None:
    boss, hand = fleet.name("apm"), fleet.name("apw")
    engine = {"driver": "local", "engine_name": "docker", "data_root": "/data/docker",
              "engine": {"opts": ["iptables=false", "ip-masq=false", "bridge=none"]}}
    spec = tmp_path / "machines.yaml"
    spec.write_text(yaml.safe_dump({"label": f"project={boss}", "machines": {
        hand: {**engine, "swarm": {"manager": boss, "role": "worker"}},  # listed first: still created after boss
        boss: {**engine, "swarm": {"role": "manager"}},
    }}, sort_keys=False))
    planned = fleet("apply", "-f", str(spec), "--plan", check=False)
    assert planned.returncode == 2, planned.stderr
    assert planned.stdout.splitlines() == [f"+ {hand}: create (driver local, engine docker, swarm worker of {boss})",
                                           f"+ {boss}: create (driver local, engine docker, swarm manager (init))"]
    fleet("apply", "-f", str(spec))
    nodes = _nodes(fleet, boss)
    assert sorted(nodes) == sorted([boss, hand])
    assert nodes[boss]["ROLE"] == "manager" and nodes[hand]["ROLE"] == "worker"
    assert fleet("apply", "-f", str(spec), "--plan").stdout == "nothing to change\n"

    spec.write_text(yaml.safe_dump({"machines": {hand: {**engine, "swarm": {"manager": boss, "role": "manager"}}}}))
    refused = fleet("apply", "-f", str(spec), check=False)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines() == [
        f"Error: {hand}: the file says swarm role manager but the machine has worker, which cannot change in place; "
        f"recreate it ('machines rm {hand}')"]

    fleet("rm", "-y", hand)
    fleet("rm", "-y", boss)
    assert fleet("ls", "-q").stdout == ""

"""``docker update`` as dockerd does it: limits applied live to the container's cgroup and kept in its HostConfig
(inspect, restart), the restart policy changed, and moby's refusals word for word."""

from __future__ import annotations

import json
import os
import time

import docker
import pytest

from machines.runtime.linux import cgroups
from tests.support.daemon import Daemon
from tests.support.waiting import poll


def cgroup_file(cid: str, controller: str, v1_name: str, v2_name: str) -> str:
    """A limit as the kernel holds it for the container, on this host's cgroup layout."""
    group = cgroups.open_cgroup("machines/" + cid)
    if isinstance(group, cgroups.CgroupV2):
        path = os.path.join(group.dir, v2_name)
    else:
        path = os.path.join(group.path(controller) or "", v1_name)
    with open(path) as f:
        return f.read().strip()


def host_config(daemon: Daemon, ref: str) -> dict:
    return json.loads(daemon.out("inspect", "-f", "{{json .HostConfig}}", ref))


def error_of(result) -> str:
    assert result.returncode != 0, result.stdout
    return result.stderr.decode().strip()


def test_limits_applied_live_kept_and_restart_policy(daemon: Daemon, image: str, name: str) -> None:
    cid = daemon.out("run", "-d", "--name", name, "--memory", "64m", image, "sh", "-c",
                     "trap 'exit 3' USR1; while true; do sleep 0.1; done").strip()
    try:
        assert host_config(daemon, name)["MemorySwap"] == 128 * 1024 * 1024  # twice the memory, as dockerd
        result = daemon.docker("update", "--memory", "100m", "--memory-swap", "300m", "--cpus", "0.5",
                               "--cpu-shares", "512", "--pids-limit", "20", "--cpuset-cpus", "0", "--restart",
                               "on-failure:2", name)
        assert result.returncode == 0 and result.stdout == name.encode() + b"\n", result.stderr
        expected = {"Memory": 100 * 1024 ** 2, "MemorySwap": 300 * 1024 ** 2, "NanoCpus": 500_000_000,
                    "CpuShares": 512, "PidsLimit": 20, "CpusetCpus": "0",
                    "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 2}}

        def kernel_view() -> dict:
            if cgroups.version() == 2:
                return {"memory": cgroup_file(cid, "memory", "", "memory.max"),
                        "cpu": cgroup_file(cid, "cpu", "", "cpu.max"),
                        "pids": cgroup_file(cid, "pids", "", "pids.max"),
                        "cpuset": cgroup_file(cid, "cpuset", "", "cpuset.cpus")}
            return {"memory": cgroup_file(cid, "memory", "memory.limit_in_bytes", ""),
                    "memsw": cgroup_file(cid, "memory", "memory.memsw.limit_in_bytes", ""),
                    "cpu": cgroup_file(cid, "cpu", "cpu.cfs_quota_us", "") + " "
                    + cgroup_file(cid, "cpu", "cpu.cfs_period_us", ""),
                    "shares": cgroup_file(cid, "cpu", "cpu.shares", ""),
                    "pids": cgroup_file(cid, "pids", "pids.max", ""),
                    "cpuset": cgroup_file(cid, "cpuset", "cpuset.cpus", "")}

        want = ({"memory": str(100 * 1024 ** 2), "cpu": "50000 100000", "pids": "20", "cpuset": "0"}
                if cgroups.version() == 2 else
                {"memory": str(100 * 1024 ** 2), "memsw": str(300 * 1024 ** 2), "cpu": "50000 100000",
                 "shares": "512", "pids": "20", "cpuset": "0"})
        assert kernel_view() == want
        config = host_config(daemon, name)
        assert {key: config[key] for key in expected} == expected
        # The pids limit is in force for the running container: a fork bomb stops at it.
        forks = daemon.docker("exec", name, "sh", "-c", "for i in $(seq 40); do sleep 30 >/dev/null 2>&1 & done")
        assert forks.returncode != 0 and b"can't fork" in forks.stderr.lower() + forks.stdout.lower()

        daemon.out("restart", "-t", "0", name)  # a restart keeps what update set
        assert kernel_view() == want and {key: host_config(daemon, name)[key] for key in expected} == expected

        daemon.out("kill", "-s", "USR1", name)  # exits 3: the updated on-failure policy restarts it
        poll("restarted by the updated policy",
             lambda: daemon.out("inspect", "-f", "{{.RestartCount}} {{.State.Running}}", name) == "1 true\n")
        events = daemon.out("events", "--since", "60s", "--until", str(time.time() + 1), "--filter",
                            "container=" + name, "--filter", "event=update", "--format", "{{.Action}}")
        assert events.split() == ["update"]
    finally:
        daemon.docker("rm", "-f", name)


def test_refusals_use_moby_words(daemon: Daemon, image: str, name: str) -> None:
    cid = daemon.out("run", "-d", "--name", name, image, "sleep", "300").strip()
    removed = name + "-rm"
    daemon.out("run", "-d", "--rm", "--name", removed, image, "sleep", "300")
    try:
        assert error_of(daemon.docker("update", "--memory", "100m", name)) == (
            f"Error response from daemon: Cannot update container {cid}: Memory limit should be smaller than already "
            "set memoryswap limit, update the memoryswap at the same time")
        rm_id = daemon.out("inspect", "-f", "{{.Id}}", removed).strip()
        assert error_of(daemon.docker("update", "--restart", "always", removed)) == (
            f"Error response from daemon: Cannot update container {rm_id}: Restart policy cannot be updated because "
            "AutoRemove is enabled for the container")
        daemon.out("update", "--cpus", "1", name)
        assert error_of(daemon.docker("update", "--cpu-quota", "50000", name)) == (
            f"Error response from daemon: Cannot update container {cid}: Conflicting options: CPU Quota cannot be "
            "updated as NanoCPUs has already been set")
        cpus = os.cpu_count()
        assert error_of(daemon.docker("update", "--cpus", str(cpus + 1), name)) == (
            f"Error response from daemon: range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs "
            "available")
        available = cgroups.cpuset_available()[0]
        assert error_of(daemon.docker("update", "--cpuset-cpus", "99", name)) == (
            f"Error response from daemon: Requested CPUs are not available - requested 99, available: {available}")
        assert error_of(daemon.docker("update", "--cpuset-cpus", "1-0", name)) == (
            "Error response from daemon: Invalid value 1-0 for cpuset cpus: invalid format: 1-0")
        assert error_of(daemon.docker("update", "--memory", "1m", "--memory-swap", "-1", name)) == (
            "Error response from daemon: Minimum memory limit allowed is 6MB")
        assert error_of(daemon.docker("update", "--restart", "sometimes", name)).endswith(
            "invalid restart policy 'sometimes'")
        assert "No such container: nothing-" in error_of(daemon.docker("update", "--cpus", "1", "nothing-" + name))
        # Nothing of a refused update was kept.
        config = host_config(daemon, name)
        assert (config["Memory"], config["CpuQuota"], config["NanoCpus"], config["CpusetCpus"]) == (
            0, 0, 1_000_000_000, "")
        assert config["RestartPolicy"]["Name"] == "no"
    finally:
        daemon.docker("rm", "-f", name, removed)


def test_blkio_weight_where_the_host_has_it(daemon: Daemon, image: str, name: str) -> None:
    cid = daemon.out("run", "-d", "--name", name, image, "sleep", "300").strip()
    try:
        result = daemon.docker("update", "--blkio-weight", "300", name)
        assert result.returncode == 0, result.stderr
        if cgroups.supports_blkio_weight():
            assert host_config(daemon, name)["BlkioWeight"] == 300
            group = cgroups.open_cgroup("machines/" + cid)
            assert isinstance(group, cgroups.CgroupV2) or cgroups.blkio_weight_file(group.path("blkio")) is not None
            assert error_of(daemon.docker("update", "--blkio-weight", "5", name)).endswith(
                "Range of blkio weight is from 10 to 1000")
        else:  # dockerd's answer on a kernel without an I/O weight: a warning, and the weight discarded
            assert b"Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded." \
                in result.stdout  # the CLI prints the daemon's warnings on stdout
            assert host_config(daemon, name)["BlkioWeight"] == 0
    finally:
        daemon.docker("rm", "-f", name)


def test_dockerpy_update_answers_like_dockerd(daemon: Daemon, image: str, name: str) -> None:
    client = docker.DockerClient(base_url=daemon.host, version="auto", timeout=60)
    try:
        container = client.containers.run(image, "sleep 300", detach=True, name=name)
        assert container.update(mem_limit="32m", memswap_limit="64m", cpu_shares=256) == {"Warnings": []}
        container.reload()
        resources = container.attrs["HostConfig"]
        assert (resources["Memory"], resources["MemorySwap"], resources["CpuShares"]) == (
            32 * 1024 ** 2, 64 * 1024 ** 2, 256)
        container.pause()  # a paused container is updated live too
        assert container.update(mem_reservation="16m") == {"Warnings": []}
        assert cgroup_file(container.id, "memory", "memory.soft_limit_in_bytes", "memory.low") == str(16 << 20)
        container.unpause()
        container.stop(timeout=0)
        assert container.update(cpu_shares=128) == {"Warnings": []}  # a stopped container: stored for its start
        container.start()
        if cgroups.version() == 1:
            assert cgroup_file(container.id, "cpu", "cpu.shares", "") == "128"
        with pytest.raises(docker.errors.APIError) as refused:
            container.update(cpu_quota=500)
        assert refused.value.status_code == 400
        assert "CPU cfs quota can not be less than 1ms (i.e. 1000)" in str(refused.value.explanation)
    finally:
        client.api.remove_container(name, force=True)
        client.close()


def test_malformed_updates_are_refused_whole(daemon: Daemon, image: str, name: str) -> None:
    """What a hostile or broken client sends: wrong JSON types, a body that is not an object, a cpuset range meant
    to exhaust memory. Each is one 400 with a message, and the container is left as it was."""
    client = docker.APIClient(base_url=daemon.host, version="auto", timeout=60)
    daemon.out("run", "-d", "--name", name, image, "sleep", "300")
    try:
        url = client._url("/containers/{0}/update", name)
        cases = [({"Memory": "1g"}, "json: cannot unmarshal string into Go struct field UpdateConfig.Memory of type "
                                    "int64"),
                 ({"CpuShares": True}, "json: cannot unmarshal bool into Go struct field UpdateConfig.CpuShares"),
                 ({"CpusetCpus": "0-99999999999"}, "Invalid value 0-99999999999 for cpuset cpus: value of out "
                                                   "range, maximum is 8192"),
                 ({"CpusetMems": "0,,1"}, "Invalid value 0,,1 for cpuset mems: invalid format: 0,,1"),
                 ([1, 2], "expected an object")]
        for body, message in cases:
            answer = client._post_json(url, data=body)
            assert answer.status_code == 400, (body, answer.text)
            assert message in answer.json()["message"], (body, answer.text)
        config = host_config(daemon, name)
        assert (config["Memory"], config["CpuShares"], config["CpusetCpus"], config["CpusetMems"]) == (0, 0, "", "")
    finally:
        daemon.docker("rm", "-f", name)
        client.close()

"""Swarm mode clusters of machines that run Docker Engine (``--engine docker``): init, join, leave, nodes.

Docker Machine's ``--swarm`` made a standalone Swarm; ours is Swarm mode, the orchestrator built into Docker Engine.
Every operation runs the engine's own ``docker`` CLI on the host over SSH (root, the engine's unix socket), so
nothing but SSH has to reach the hosts from this computer; the hosts reach each other on the addresses their driver
names (``Driver.private_ip``: the private address on clouds). A machine's membership is kept in its record under
``"swarm"``: ``cluster`` (the name given to ``init``, by default the first manager's), ``role`` and ``node_id``.

Join tokens go from the manager's stdout to the joining host's stdin: never on a command line, in output or in an
error; ``machines.redaction`` blanks any ``SWMTKN-`` that would reach a log line anyway.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import threading
import time
from collections.abc import Callable
from typing import Any

from machines.drivers.base import State
from machines.errors import MachinesError, SwarmError, UsageError
from machines.machine import Machine, Machines
from machines.progress import Progress
from machines.store import validate_name

SWARM_PORT = 2377
# What members must reach of each other: cluster management, node gossip, overlay network traffic (VXLAN).
SWARM_PORTS = ((SWARM_PORT, "tcp"), (7946, "tcp"), (7946, "udp"), (4789, "udp"))
ROLES = ("worker", "manager")
DRAIN_TIMEOUT = 120.0
ELECTION_TIMEOUT = 60.0
LEADERLESS = ("does not have a leader", "context deadline exceeded", "rpc error: code = Unavailable")
ENGINE = "docker"
# Task states of a node that still runs (or is about to run) a container (moby's api/types/swarm TaskState).
BUSY_TASK_STATES = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")

_leaving = threading.Lock()  # one member at a time: each leave's quorum check must see the previous one's result


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of ``docker node ls``, with the machine it is when the store knows it."""

    id: str
    hostname: str
    status: str  # Ready, Down, Unknown
    availability: str  # Active, Pause, Drain
    manager_status: str  # Leader, Reachable, Unreachable; "" for a worker
    machine: str = ""

    @property
    def role(self) -> str:
        return "manager" if self.manager_status else "worker"

    @property
    def leader(self) -> bool:
        return self.manager_status == "Leader"


def membership(machine: Machine) -> dict[str, Any] | None:
    """The machine's ``{"cluster", "role", "node_id"}``, or None when it is in no swarm."""
    member = machine.record.get("swarm")
    return member if isinstance(member, dict) and member.get("cluster") else None


def _remember(machine: Machine, member: dict[str, Any] | None) -> None:
    if member is None:
        machine.record.pop("swarm", None)
    else:
        machine.record["swarm"] = member
    machine.save()


def members(library: Machines, cluster: str) -> list[Machine]:
    """The store's machines in ``cluster``, managers first, by name."""
    found = [machine for machine in library.list() if (membership(machine) or {}).get("cluster") == cluster]
    return sorted(found, key=lambda machine: (membership(machine)["role"] != "manager", machine.name))  # type: ignore[index]


def clusters(library: Machines) -> dict[str, list[Machine]]:
    """Every cluster the store knows, by name, with its members."""
    found: dict[str, list[Machine]] = {}
    for machine in library.list():
        member = membership(machine)
        if member:
            found.setdefault(member["cluster"], []).append(machine)
    return {name: members(library, name) for name in sorted(found)}


def docker(machine: Machine, arguments: str, *, input: str | None = None, timeout: float = 120.0) -> str:  # noqa: A002
    """Run the engine's docker CLI on the host; its stdout, or ``SwarmError`` with docker's own last line."""
    if machine.runtime.get("engine") != ENGINE:
        raise SwarmError(f"machine {machine.name!r} does not run Docker Engine: Swarm mode needs machines created "
                         "with --engine docker")  # fmt: skip
    socket = machine.runtime.get("socket") or "/var/run/docker.sock"
    result = machine.ssh().run(f"docker -H unix://{socket} {arguments}", sudo=True, check=False, input=input,
                               timeout=timeout)  # fmt: skip
    if not result.ok:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise SwarmError(f"{machine.name}: {lines[-1] if lines else f'docker exited {result.exit_status}'}")
    return result.stdout


def on_manager(manager: Machine, arguments: str, timeout: float = ELECTION_TIMEOUT) -> str:
    """``docker`` on a manager, waiting out a leader election (after a manager left or stopped, Raft needs a few
    seconds, more on a loaded host, before managers answer again)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return docker(manager, arguments)
        except SwarmError as error:
            if not any(sign in str(error) for sign in LEADERLESS) or time.monotonic() > deadline:
                raise
        time.sleep(1)


def local_state(machine: Machine) -> dict[str, Any]:
    """``docker info``'s Swarm part: LocalNodeState, NodeID, ControlAvailable..."""
    info: dict[str, Any] = json.loads(docker(machine, "info --format '{{json .Swarm}}'"))
    return info


def _not_in_a_swarm(machine: Machine) -> None:
    if local_state(machine).get("LocalNodeState") not in ("inactive", ""):
        raise SwarmError(f"{machine.name}: This node is already part of a swarm. Use \"machines swarm leave "
                         f"{machine.name}\" to leave this swarm and join another one.")  # fmt: skip


def init(library: Machines, name: str, cluster: str | None = None) -> str:
    """Make ``name`` the first manager of a new swarm, advertised on its driver's private address; the cluster name."""
    machine = library.get(name)
    cluster = validate_name(cluster or name)
    if members(library, cluster):
        raise SwarmError(f"a swarm named {cluster!r} already exists: choose another name with --cluster")
    _not_in_a_swarm(machine)
    machine.driver.open_cluster_ports(cluster, SWARM_PORTS)
    address = shlex.quote(machine.driver.private_ip())
    try:
        docker(machine, f"swarm init --advertise-addr {address} --listen-addr {address}:{SWARM_PORT}")
    except MachinesError:
        machine.driver.close_cluster_ports(cluster, last=True)
        raise
    _remember(machine, {"cluster": cluster, "role": "manager", "node_id": local_state(machine)["NodeID"]})
    return cluster


def join(library: Machines, name: str, manager_name: str, role: str = "worker") -> None:
    """Join machine ``name`` as a ``role`` (worker or manager) to the swarm of ``manager_name`` (a manager, a
    member or the swarm's name: one of its managers that answers gives the token)."""
    if role not in ROLES:
        raise UsageError(f"--role must be 'worker' or 'manager', not {role!r}")
    machine, manager = library.get(name), reachable_manager(library, manager_name)
    cluster = membership(manager)["cluster"]  # type: ignore[index]
    _not_in_a_swarm(machine)
    machine.driver.open_cluster_ports(cluster, SWARM_PORTS)
    try:
        token = on_manager(manager, f"swarm join-token -q {role}").strip()
        address = shlex.quote(machine.driver.private_ip())
        remote = shlex.quote(f"{manager.driver.private_ip()}:{SWARM_PORT}")
        docker(machine, f'swarm join --advertise-addr {address} --token "$(cat)" {remote}', input=token + "\n")
    except MachinesError:
        machine.driver.close_cluster_ports(cluster, last=False)
        raise
    _remember(machine, {"cluster": cluster, "role": role, "node_id": local_state(machine)["NodeID"]})


def managers(library: Machines, cluster_or_manager: str, *, excluding: str = "") -> tuple[str, list[Machine]]:
    """The cluster named by itself or by one of its members, and its managers (a named manager first)."""
    known = {machine.name: machine for machine in library.list()}
    named = known.get(cluster_or_manager)
    cluster = str((membership(named) or {}).get("cluster") or "") if named is not None else cluster_or_manager
    found = [machine for machine in members(library, cluster)
             if membership(machine)["role"] == "manager" and machine.name != excluding]  # type: ignore[index]
    if not found:
        raise SwarmError(f"{cluster_or_manager!r} is neither a swarm nor a member of one (see 'machines swarm ls')")
    return cluster, sorted(found, key=lambda machine: machine.name != cluster_or_manager)


def reachable_manager(library: Machines, cluster_or_manager: str, *, excluding: str = "") -> Machine:
    """A running manager whose engine answers as one: the named manager first, else any of the named cluster's."""
    cluster, candidates = managers(library, cluster_or_manager, excluding=excluding)
    reasons = []
    for machine in candidates:
        try:
            state = machine.state()
            if state != State.RUNNING:
                reasons.append(f"{machine.name} is {state}")
            elif local_state(machine).get("ControlAvailable"):
                return machine
            else:
                reasons.append(f"{machine.name} is no manager any more")
        except MachinesError as error:
            reasons.append(str(error))
    raise SwarmError(f"no manager of swarm {cluster!r} answers: {'; '.join(reasons)}")


def nodes(manager: Machine, library: Machines | None = None) -> list[Node]:
    """The swarm's nodes as its manager sees them (``docker node ls``), each with its machine's name."""
    by_node_id = {}
    if library is not None:
        by_node_id = {(membership(machine) or {}).get("node_id"): machine.name for machine in library.list()}
    found = []
    for line in on_manager(manager, "node ls --format '{{json .}}'").splitlines():
        row = json.loads(line)
        found.append(Node(row["ID"], row["Hostname"], row["Status"], row["Availability"], row.get("ManagerStatus", ""),
                          by_node_id.get(row["ID"], "")))  # fmt: skip
    return found


def _wait_drained(manager: Machine, node_id: str, timeout: float = DRAIN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = on_manager(manager, f"node ps {shlex.quote(node_id)} --format '{{{{.CurrentState}}}}'").split("\n")
        busy = [state for state in states if state.split(" ")[0].lower() in BUSY_TASK_STATES]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise SwarmError(f"{manager.name}: {len(busy)} task(s) still run on node {node_id} after "
                             f"{timeout:g}s of draining")  # fmt: skip
        time.sleep(1)


def leave(library: Machines, name: str, *, force: bool = False, progress: Progress | None = None) -> None:
    """Take machine ``name`` out of its swarm: drained (its tasks move), demoted, left, removed from the node list.

    A manager leaves only when the remaining managers keep a Raft quorum, and the last manager only when no other
    member is left; ``force`` does it anyway (and goes on when the machine itself cannot be reached).
    """
    progress = progress or Progress(name)
    with _leaving:
        machine = library.get(name)
        member = membership(machine)
        if member is None:
            raise SwarmError(f"machine {name!r} is in no swarm")
        cluster, node_id = member["cluster"], member["node_id"]
        others = [other.name for other in members(library, cluster) if other.name != name]
        try:
            manager = reachable_manager(library, cluster, excluding=name)
        except SwarmError as error:
            if others and not force:
                if member["role"] == "worker":
                    raise SwarmError(f"{name} cannot be drained: {error} (use -f to remove it anyway)") from None
                raise SwarmError(f"{name} is the last reachable manager of swarm {cluster!r}: without it "
                                 f"{', '.join(others)} would have no manager (remove them first, or use -f)") from None
            _leave_engine(machine, "swarm leave --force", force, progress)
            _forget(machine, cluster, last=not others)
            return
        if member["role"] == "manager":
            _check_quorum(nodes(manager), node_id, name, cluster, force)
            on_manager(manager, f"node demote {shlex.quote(node_id)}")
        on_manager(manager, f"node update --availability drain {shlex.quote(node_id)}")
        progress.detail(f"drained {name}: waiting for its tasks to move")
        _wait_drained(manager, node_id)
        _leave_engine(machine, "swarm leave", force, progress)
        on_manager(manager, f"node rm --force {shlex.quote(node_id)}")
        _forget(machine, cluster, last=False)


def _forget(machine: Machine, cluster: str, *, last: bool) -> None:
    """The machine is out of the swarm: close what its driver opened for the cluster, then forget the membership."""
    machine.driver.close_cluster_ports(cluster, last=last)
    _remember(machine, None)


def _check_quorum(current: list[Node], node_id: str, name: str, cluster: str, force: bool) -> None:
    """Refuse (unless ``force``) to remove a manager when the managers left would not keep a majority reachable."""
    managers = [node for node in current if node.manager_status and node.id != node_id]
    reachable = [node for node in managers if node.manager_status != "Unreachable"]
    if len(reachable) * 2 <= len(managers) and not force:
        raise SwarmError(
            f"removing manager {name} would leave {len(reachable)} reachable manager(s) out of {len(managers)} in "
            f"swarm {cluster!r}: without a Raft quorum the swarm would be inaccessible (bring the others back, or "
            "use -f)"
        )


def _leave_engine(machine: Machine, command: str, force: bool, progress: Progress) -> None:
    try:
        docker(machine, command)
    except MachinesError as error:
        if not force:
            raise SwarmError(f"{machine.name} could not leave its swarm: {error} (use -f to go on anyway)") from None
        progress.note(f"{machine.name} could not leave its swarm ({error}); its node was removed from the swarm")


def remove(library: Machines, name: str, *, force: bool = False, progress: Progress | None = None) -> None:
    """``machines rm``: a swarm member first leaves its swarm (``leave``: drained, quorum kept), then is removed.

    With ``force`` a failed leave does not stop the removal.
    """
    progress = progress or Progress(name)
    if membership(library.get(name)) is not None:
        try:
            with progress.phase("Leaving the swarm"):
                leave(library, name, force=force, progress=progress)
        except MachinesError as error:
            if not force:
                raise
            progress.note(f"{name} did not leave its swarm cleanly ({error}); removing it anyway (-f)")
            _close_ports_anyway(library, name, progress)
    library.remove(name, force=force, progress=progress)


def _close_ports_anyway(library: Machines, name: str, progress: Progress) -> None:
    """After a failed leave under ``-f``: what the driver opened for the cluster must not outlive its members."""
    machine = library.get(name)
    member = membership(machine)
    if member is None:
        return
    others = [other for other in members(library, member["cluster"]) if other.name != name]
    try:
        machine.driver.close_cluster_ports(member["cluster"], last=not others)
    except MachinesError as error:
        progress.note(f"the cluster's firewall rules for {name} could not be removed: {error}")


def join_new(library: Machines, name: str, manager_name: str, role: str, *, keep: bool = False,
             progress: Progress | None = None) -> None:
    """``create --swarm-manager``: join the machine just made; if that fails it is removed (unless ``keep``), so the
    create stays all or nothing."""
    _all_or_nothing(library, name, lambda: join(library, name, manager_name, role), "Joining the swarm",
                    f"could not join the swarm of {manager_name}", keep=keep, progress=progress)


def init_new(library: Machines, name: str, *, progress: Progress | None = None) -> None:
    """``apply`` of a machine that starts a swarm: ``init`` on the machine just made, removed if that fails."""
    _all_or_nothing(library, name, lambda: init(library, name), "Starting a swarm", "could not start a swarm",
                    keep=False, progress=progress)


def _all_or_nothing(library: Machines, name: str, action: Callable[[], object], phase: str, failure: str, *,
                    keep: bool, progress: Progress | None) -> None:
    progress = progress or Progress(name)
    try:
        with progress.phase(phase):
            action()
    except BaseException as error:  # noqa: BLE001 - Ctrl-C included: the machine must not stay half made
        if keep:
            raise
        with progress.phase("Rolling back"):
            library.remove(name, force=True, progress=progress)
        if isinstance(error, MachinesError):
            raise SwarmError(f"{name} {failure} and was removed: {error}") from None
        raise

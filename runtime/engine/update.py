"""``docker update`` (moby's daemon/update.go): new resource limits and restart policy for a container, checked as
moby checks them, merged into its HostConfig, written to disk and applied live to its cgroup."""
from __future__ import annotations

import os

from machines.runtime.engine.config import check_restart_policy, go_json_type
from machines.runtime.errors import Conflict, InvalidParameter
from machines.runtime.linux import cgroups

MIN_MEMORY = 6 * 1024 * 1024  # moby's linuxMinMemory
_BLKIO_DISCARDED = ("Your kernel does not support Block I/O weight or the cgroup is not mounted. Weight discarded.")
_SWAP_DISCARDED = ("Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory "
                   "limited without swap.")


def _ints(resources: dict) -> dict[str, int]:
    out = {}
    for key in ("Memory", "MemorySwap", "MemoryReservation", "NanoCpus", "CpuShares", "CpuPeriod", "CpuQuota",
                "BlkioWeight"):
        value = resources.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidParameter(f"json: cannot unmarshal {go_json_type(value)} into Go struct field "
                                   f"UpdateConfig.{key} of type int64")
        out[key] = value or 0
    return out


def parse_uint_list(text: str, maximum: int = 0) -> set[int]:
    """moby's parsers.ParseUintListMaximum: ``0-2,5`` to {0, 1, 2, 5}; values above ``maximum`` (when not 0) are
    refused before anything is built, so ``0-99999999999`` cannot make a huge set."""
    if not text:
        return set()
    out: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.partition("-")
        if not (low.isdigit() and (not dash or high.isdigit())) or (dash and int(high) < int(low)):
            raise ValueError(f"invalid format: {text}")
        top = int(high if dash else low)
        if maximum and top > maximum:
            raise ValueError(f"value of out range, maximum is {maximum}")
        out.update(range(int(low), top + 1))
    return out


def _check_cpuset(wanted: str, available: str, what: str, label: str) -> None:
    offered = parse_uint_list(available)
    try:  # moby's sysinfo: 8192 (Linux's usual most CPUs) or the highest the host has
        asked = parse_uint_list(wanted, max([8192, *offered]))
    except ValueError as e:
        raise InvalidParameter(f"Invalid value {wanted} for cpuset {what}: {e}") from None
    if asked and not asked <= offered:
        raise InvalidParameter(f"Requested {label} are not available - requested {wanted}, available: {available}")


def verify_resources(resources: dict, update: bool) -> list[str]:
    """moby's verifyPlatformContainerResources, same order and wording: refusals raise, what the host cannot do is
    dropped from ``resources`` with dockerd's warning."""
    warnings: list[str] = []
    r = _ints(resources)
    if r["Memory"] and r["Memory"] < MIN_MEMORY:
        raise InvalidParameter("Minimum memory limit allowed is 6MB")
    if r["Memory"] > 0 and r["MemorySwap"] != -1 and not cgroups.supports_swap_limit():
        warnings.append(_SWAP_DISCARDED)
        resources["MemorySwap"] = r["MemorySwap"] = -1
    if r["Memory"] > 0 and r["MemorySwap"] > 0 and r["MemorySwap"] < r["Memory"]:
        raise InvalidParameter("Minimum memoryswap limit should be larger than memory limit, see usage")
    if r["Memory"] == 0 and r["MemorySwap"] > 0 and not update:
        raise InvalidParameter("You should always set the Memory limit when using Memoryswap limit, see usage")
    if r["MemoryReservation"] > 0 and r["MemoryReservation"] < MIN_MEMORY:
        raise InvalidParameter("Minimum memory reservation allowed is 6MB")
    if r["Memory"] > 0 and r["MemoryReservation"] > 0 and r["Memory"] < r["MemoryReservation"]:
        raise InvalidParameter("Minimum memory limit can not be less than memory reservation limit, see usage")
    if r["NanoCpus"] > 0 and r["CpuPeriod"] > 0:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if r["NanoCpus"] > 0 and r["CpuQuota"] > 0:
        raise InvalidParameter("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    cpus = os.cpu_count() or 1
    if r["NanoCpus"] and not 0 < r["NanoCpus"] <= cpus * 1_000_000_000:
        raise InvalidParameter(f"range of CPUs is from 0.01 to {cpus}.00, as there are only {cpus} CPUs available")
    if r["CpuPeriod"] and not 1000 <= r["CpuPeriod"] <= 1_000_000:
        raise InvalidParameter("CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s "
                               "(i.e. 1000000)")
    if 0 < r["CpuQuota"] < 1000:
        raise InvalidParameter("CPU cfs quota can not be less than 1ms (i.e. 1000)")
    available_cpus, available_mems = cgroups.cpuset_available()
    _check_cpuset(resources.get("CpusetCpus") or "", available_cpus, "cpus", "CPUs")
    _check_cpuset(resources.get("CpusetMems") or "", available_mems, "mems", "memory nodes")
    if r["BlkioWeight"] > 0 and not cgroups.supports_blkio_weight():
        warnings.append(_BLKIO_DISCARDED)
        resources["BlkioWeight"] = r["BlkioWeight"] = 0
    if r["BlkioWeight"] > 0 and not 10 <= r["BlkioWeight"] <= 1000:
        raise InvalidParameter("Range of blkio weight is from 10 to 1000")
    return warnings


def merge(host: dict, request: dict) -> None:
    """moby's Container.UpdateContainer: what the request sets (non-zero) replaces the container's value, refused
    where it conflicts with what the container already has (409, moby's wording)."""
    new = _ints(request)
    if new["NanoCpus"] > 0 and (host.get("CpuPeriod") or 0) > 0:
        raise Conflict("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set")
    if new["NanoCpus"] > 0 and (host.get("CpuQuota") or 0) > 0:
        raise Conflict("Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set")
    if new["CpuPeriod"] > 0 and (host.get("NanoCpus") or 0) > 0:
        raise Conflict("Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set")
    if new["CpuQuota"] > 0 and (host.get("NanoCpus") or 0) > 0:
        raise Conflict("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set")
    if new["Memory"] and new["Memory"] > (host.get("MemorySwap") or 0) and not new["MemorySwap"]:
        raise Conflict("Memory limit should be smaller than already set memoryswap limit, update the memoryswap at "
                       "the same time")
    for key in ("BlkioWeight", "CpuShares", "NanoCpus", "CpuPeriod", "CpuQuota", "Memory", "MemorySwap",
                "MemoryReservation"):
        if new[key]:
            host[key] = new[key]
    for key in ("CpusetCpus", "CpusetMems"):
        if request.get(key):
            host[key] = request[key]
    if request.get("PidsLimit") is not None:  # the API router's rule: 0 and any negative value mean unlimited
        host["PidsLimit"] = max(int(request["PidsLimit"]), 0)
    policy = request.get("RestartPolicy") or {}
    if policy.get("Name"):
        if host.get("AutoRemove") and policy["Name"] != "no":
            raise Conflict("Restart policy cannot be updated because AutoRemove is enabled for the container")
        host["RestartPolicy"] = check_restart_policy(policy)

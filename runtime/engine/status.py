"""Derived views: ``docker ps`` texts ("Up 5 seconds", "Exited (0) 3 minutes ago"), the Ports list, and the
host figures a stats sample needs."""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional

from runtime import timefmt


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, which docker ps uses."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return "%d seconds" % s
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return "%d minutes" % minutes
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return "%d hours" % hours
    if hours < 24 * 7 * 2:
        return "%d days" % (hours // 24)
    if hours < 24 * 30 * 2:
        return "%d weeks" % (hours // 24 // 7)
    if hours < 24 * 365 * 2:
        return "%d months" % (hours // 24 // 30)
    return "%d years" % (hours // 24 // 365)


def _since(stamp: str) -> float:
    try:
        return max(0.0, time.time() - timefmt.parse_rfc3339(stamp))
    except ValueError:
        return 0.0


def human_status(state: dict) -> str:
    status = state.get("Status")
    if state.get("Restarting"):
        return "Restarting (%d) %s ago" % (state.get("ExitCode", 0), human_duration(_since(state["FinishedAt"])))
    if state.get("Running"):
        text = "Up " + human_duration(_since(state["StartedAt"]))
        if state.get("Paused"):
            return text + " (Paused)"
        health = state.get("Health")  # moby's Health.String()
        if health:
            return text + (" (health: starting)" if health["Status"] == "starting" else " (%s)" % health["Status"])
        return text
    if status == "created":
        return "Created"
    if status == "exited":
        return "Exited (%d) %s ago" % (state.get("ExitCode", 0), human_duration(_since(state["FinishedAt"])))
    return (status or "").capitalize()


def summary_ports(ports: Dict[str, Optional[List[dict]]]) -> List[dict]:
    out = []
    for key, bindings in (ports or {}).items():
        number, _, proto = key.partition("/")
        if not bindings:
            out.append({"PrivatePort": int(number), "Type": proto or "tcp"})
            continue
        for b in bindings:
            out.append({"IP": b.get("HostIp") or "0.0.0.0", "PrivatePort": int(number),
                        "PublicPort": int(b.get("HostPort") or 0), "Type": proto or "tcp"})
    return out


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def system_cpu_ns() -> int:
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:8]
    return sum(int(x) for x in fields) * 1000000000 // os.sysconf("SC_CLK_TCK")


def net_stats(pid: int) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    try:
        with open("/proc/%d/net/dev" % pid) as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        name = name.strip()
        if name == "lo":
            continue
        v = [int(x) for x in rest.split()]
        out[name] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                     "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out

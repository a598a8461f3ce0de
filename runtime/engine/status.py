"""Derived views: ``docker ps`` texts ("Up 5 seconds", "Exited (0) 3 minutes ago"), the Ports list, and the
host figures a stats sample needs."""
from __future__ import annotations

import os
import time

from machines.runtime import timefmt


def human_duration(seconds: float) -> str:
    """go-units HumanDuration, which docker ps uses."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def _since(stamp: str) -> float:
    try:
        return max(0.0, time.time() - timefmt.parse_rfc3339(stamp))
    except ValueError:
        return 0.0


def human_status(state: dict) -> str:
    status = state.get("Status")
    if state.get("Restarting"):
        return f'Restarting ({state.get("ExitCode", 0)}) {human_duration(_since(state["FinishedAt"]))} ago'
    if state.get("Running"):
        text = "Up " + human_duration(_since(state["StartedAt"]))
        if state.get("Paused"):
            return text + " (Paused)"
        health = state.get("Health")  # moby's Health.String()
        if health:
            return text + (" (health: starting)" if health["Status"] == "starting" else f" ({health['Status']})")
        return text
    if status == "created":
        return "Created"
    if status == "exited":
        return f'Exited ({state.get("ExitCode", 0)}) {human_duration(_since(state["FinishedAt"]))} ago'
    return (status or "").capitalize()


def summary_ports(ports: dict[str, list[dict] | None]) -> list[dict]:
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


def net_stats(pid: int) -> dict[str, dict]:
    out: dict[str, dict] = {}
    try:
        with open(f"/proc/{pid}/net/dev") as f:
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

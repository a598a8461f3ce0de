"""Host plumbing for container networking: entering namespaces, iptables rules, sysctls, ``ip`` queries.

Work inside a container's network namespace runs on a throwaway thread that ``setns``-es into it: the namespace is
per thread, and sockets and child processes take the creating thread's, so nothing else in the daemon moves.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from typing import Callable, TypeVar

from machines.runtime.errors import HostError
from machines.runtime.linux.syscalls import CLONE_NEWNET, setns

log = logging.getLogger("runtime.network")

T = TypeVar("T")

RULE_TAG = "machines-net"
ISOLATION = "MACHINES-NET-ISOLATION"


def ip_query(*args: str) -> str:
    """Output of a read-only ``ip`` query (empty when the object is gone)."""
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else ""


def in_netns_of(pid: int, work: Callable[[], T]) -> T:
    """Runs ``work`` in the network namespace of process ``pid`` (see ``in_netns``)."""
    return in_netns(f"/proc/{pid}/ns/net", work)


def in_netns(path: str, work: Callable[[], T]) -> T:
    """Runs ``work`` on a fresh thread inside the network namespace at ``path`` and returns its result.

    Sockets it creates stay in that namespace for life, and ``ip`` processes it starts inherit it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError(f"cannot open the network namespace {path}: {exc.strerror}") from None
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            setns(fd, CLONE_NEWNET)
            results.append(work())
        except BaseException as exc:  # handed back to the caller's thread below
            errors.append(exc)

    try:
        thread = threading.Thread(target=run, name="netns")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if errors:
        raise errors[0]
    return results[0]


def enable_ip_forward() -> None:
    """Outbound NAT needs the host to route; Docker turns this on too and never back off."""
    path = "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as current:
            if current.read().strip() == "1":
                return
        with open(path, "w") as sysctl:
            sysctl.write("1\n")
    except OSError as exc:
        log.warning("cannot enable IPv4 forwarding: %s", exc)


def _comment(tag: str) -> str:
    return f'-m comment --comment "{RULE_TAG}:{tag}"'


def bridge_rules(bridge: str, subnet: str, internal: bool, icc: bool = True,
                 masquerade: bool = True) -> dict[str, list[str]]:
    """Per table, the rules of one bridge (tag: the bridge name): accept bridged (or, without ``icc``, drop it)
    and return traffic, masquerade what leaves (unless ``masquerade`` is off); an internal network's traffic
    stays on its bridge.

    Like Docker, networks are isolated from each other: traffic leaving a bridge for another goes through the
    isolation chain, where each bridge drops what arrives from elsewhere unless it was DNATed to a published port.
    """
    comment = _comment(bridge)
    forward = [f"-I FORWARD -i {bridge} -o {bridge} {comment} -j {'ACCEPT' if icc else 'DROP'}"]
    if internal:
        forward += [
            f"-I FORWARD -i {bridge} ! -o {bridge} {comment} -j DROP",
            f"-I FORWARD -o {bridge} ! -i {bridge} {comment} -j DROP",
        ]
        return {"filter": forward}
    forward += [
        f"-I FORWARD -i {bridge} ! -o {bridge} {comment} -j ACCEPT",
        f"-I FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED {comment} -j ACCEPT",
        f"-I FORWARD -i {bridge} ! -o {bridge} {comment} -j {ISOLATION}",  # inserted last: checked first
        f"-A {ISOLATION} -o {bridge} -m conntrack ! --ctstate DNAT {comment} -j DROP",
    ]
    nat = [f"-I POSTROUTING -s {subnet} ! -o {bridge} {comment} -j MASQUERADE"] if masquerade else []
    return {"filter": forward, "nat": nat}


def port_rules(tag: str, bridge: str, records: list[dict[str, object]]) -> dict[str, list[str]]:
    """DNAT for published ports, so clients on other machines reach the container directly and keep their source
    address. Traffic from loopback and from the bridge itself (hairpin) is left to the userland proxy, which
    also holds the host port."""
    comment = _comment(tag)
    nat, forward = [], []
    for record in records:
        host_ip = str(record["host_ip"])
        if ":" in host_ip or host_ip.startswith("127."):
            continue
        match = "-m addrtype --dst-type LOCAL" if host_ip == "0.0.0.0" else f"-d {host_ip}/32"
        values = dict(record, match=match, bridge=bridge, comment=comment)
        nat.append("-I PREROUTING {match} ! -i {bridge} -p {proto} --dport {host_port} {comment} "
                   "-j DNAT --to-destination {container_ip}:{container_port}".format(**values))
        forward.append("-I FORWARD -d {container_ip}/32 ! -i {bridge} -o {bridge} -p {proto} "
                       "--dport {container_port} -m conntrack --ctstate DNAT {comment} -j ACCEPT".format(**values))
    return {"nat": nat, "filter": forward} if nat else {}


class Firewall:
    """iptables rules in groups, each rule tagged with a comment so a group can be found and removed exactly.

    iptables is optional: without it (or when the kernel refuses) containers still reach each other and published
    ports still work through the userland proxy; only outbound NAT is missing. Rules go in and out through
    ``iptables-restore --noflush`` so a group costs two processes, not one per rule.
    """

    def __init__(self) -> None:
        self.save = shutil.which("iptables-save")
        self.restore = shutil.which("iptables-restore")

    @property
    def available(self) -> bool:
        return bool(self.save and self.restore)

    def add(self, tag: str, rules: dict[str, list[str]], check: bool = True) -> None:
        """Installs ``rules``; with ``check``, only if no rule with ``tag`` is there (so restore can repeat it)."""
        if not (self.available and rules):
            return
        chained = any(ISOLATION in line for line in rules.get("filter", []))
        dump = self._dump() if check or chained else ""
        if check and self._tagged(dump, tag):
            return
        if chained and f":{ISOLATION} " not in dump:  # declaring an existing chain would flush it
            rules = dict(rules, filter=[f":{ISOLATION} - [0:0]"] + rules["filter"])
        self._apply(rules)

    def remove(self, tag: str, rules: dict[str, list[str]] | None = None) -> None:
        """Deletes ``rules`` as added (one process), or, failing that or without them, every rule tagged ``tag``.
        The isolation chain goes with the last rule in it."""
        if rules and self.available:
            exact = {table: ["-D" + line[2:] for line in lines] for table, lines in rules.items()}
            if self._apply(exact, quiet=True):
                return
        found = self._tagged(self._dump(), tag)
        self._apply({table: ["-D" + line[2:] for line in lines] for table, lines in found.items()})
        if any(ISOLATION in line for line in found.get("filter", [])):
            lines = self._dump().splitlines()
            if not any(ISOLATION in line for line in lines if line.startswith("-A ")):
                self._apply({"filter": [f"-X {ISOLATION}"]}, quiet=True)

    def _dump(self) -> str:
        return subprocess.run([self.save], capture_output=True, text=True).stdout if self.available and self.save else ""

    @staticmethod
    def _tagged(dump: str, tag: str) -> dict[str, list[str]]:
        """The rules in an iptables-save ``dump`` with ``tag``, by table."""
        token = f"{RULE_TAG}:{tag}"
        found: dict[str, list[str]] = {}
        table = ""
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and token in line.replace('"', "").split():  # legacy iptables omits quotes
                found.setdefault(table, []).append(line)
        return found

    def _apply(self, rules: dict[str, list[str]], quiet: bool = False) -> bool:
        script = "".join("*{}\n{}\nCOMMIT\n".format(table, "\n".join(lines)) for table, lines in rules.items() if lines)
        if not script:
            return True
        proc = subprocess.run([self.restore or "iptables-restore", "-w", "--noflush"], input=script, capture_output=True, text=True)
        if proc.returncode != 0 and not quiet:
            log.warning("iptables-restore: %s", proc.stderr.strip())
        return proc.returncode == 0

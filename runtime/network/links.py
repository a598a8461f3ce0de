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
from typing import Callable, Dict, List, Optional, TypeVar

from runtime.errors import HostError
from runtime.linux.syscalls import CLONE_NEWNET, setns

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
    return in_netns("/proc/%d/ns/net" % pid, work)


def in_netns(path: str, work: Callable[[], T]) -> T:
    """Runs ``work`` on a fresh thread inside the network namespace at ``path`` and returns its result.

    Sockets it creates stay in that namespace for life, and ``ip`` processes it starts inherit it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HostError("cannot open the network namespace %s: %s" % (path, exc.strerror)) from None
    results: List[T] = []
    errors: List[BaseException] = []

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
    return '-m comment --comment "%s:%s"' % (RULE_TAG, tag)


def bridge_rules(bridge: str, subnet: str, internal: bool) -> Dict[str, List[str]]:
    """Per table, the rules of one bridge (tag: the bridge name): accept bridged and return traffic, masquerade
    what leaves; an internal network's traffic stays on its bridge.

    Like Docker, networks are isolated from each other: traffic leaving a bridge for another goes through the
    isolation chain, where each bridge drops what arrives from elsewhere unless it was DNATed to a published port.
    """
    comment = _comment(bridge)
    forward = ["-I FORWARD -i %s -o %s %s -j ACCEPT" % (bridge, bridge, comment)]
    if internal:
        forward += [
            "-I FORWARD -i %s ! -o %s %s -j DROP" % (bridge, bridge, comment),
            "-I FORWARD -o %s ! -i %s %s -j DROP" % (bridge, bridge, comment),
        ]
        return {"filter": forward}
    forward += [
        "-I FORWARD -i %s ! -o %s %s -j ACCEPT" % (bridge, bridge, comment),
        "-I FORWARD -o %s -m conntrack --ctstate RELATED,ESTABLISHED %s -j ACCEPT" % (bridge, comment),
        "-I FORWARD -i %s ! -o %s %s -j %s" % (bridge, bridge, comment, ISOLATION),  # inserted last: checked first
        "-A %s -o %s -m conntrack ! --ctstate DNAT %s -j DROP" % (ISOLATION, bridge, comment),
    ]
    return {"filter": forward, "nat": ["-I POSTROUTING -s %s ! -o %s %s -j MASQUERADE" % (subnet, bridge, comment)]}


def port_rules(tag: str, bridge: str, records: List[Dict[str, object]]) -> Dict[str, List[str]]:
    """DNAT for published ports, so clients on other machines reach the container directly and keep their source
    address. Traffic from loopback and from the bridge itself (hairpin) is left to the userland proxy, which
    also holds the host port."""
    comment = _comment(tag)
    nat, forward = [], []
    for record in records:
        host_ip = str(record["host_ip"])
        if ":" in host_ip or host_ip.startswith("127."):
            continue
        match = "-m addrtype --dst-type LOCAL" if host_ip == "0.0.0.0" else "-d %s/32" % host_ip
        values = dict(record, match=match, bridge=bridge, comment=comment)
        nat.append("-I PREROUTING %(match)s ! -i %(bridge)s -p %(proto)s --dport %(host_port)s %(comment)s "
                   "-j DNAT --to-destination %(container_ip)s:%(container_port)s" % values)
        forward.append("-I FORWARD -d %(container_ip)s/32 ! -i %(bridge)s -o %(bridge)s -p %(proto)s "
                       "--dport %(container_port)s -m conntrack --ctstate DNAT %(comment)s -j ACCEPT" % values)
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

    def add(self, tag: str, rules: Dict[str, List[str]], check: bool = True) -> None:
        """Installs ``rules``; with ``check``, only if no rule with ``tag`` is there (so restore can repeat it)."""
        if not (self.available and rules):
            return
        chained = any(ISOLATION in line for line in rules.get("filter", []))
        dump = self._dump() if check or chained else ""
        if check and self._tagged(dump, tag):
            return
        if chained and ":%s " % ISOLATION not in dump:  # declaring an existing chain would flush it
            rules = dict(rules, filter=[":%s - [0:0]" % ISOLATION] + rules["filter"])
        self._apply(rules)

    def remove(self, tag: str, rules: Optional[Dict[str, List[str]]] = None) -> None:
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
                self._apply({"filter": ["-X %s" % ISOLATION]}, quiet=True)

    def _dump(self) -> str:
        return subprocess.run([self.save], capture_output=True, text=True).stdout if self.available and self.save else ""

    @staticmethod
    def _tagged(dump: str, tag: str) -> Dict[str, List[str]]:
        """The rules in an iptables-save ``dump`` with ``tag``, by table."""
        token = "%s:%s" % (RULE_TAG, tag)
        found: Dict[str, List[str]] = {}
        table = ""
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and token in line.replace('"', "").split():  # legacy iptables omits quotes
                found.setdefault(table, []).append(line)
        return found

    def _apply(self, rules: Dict[str, List[str]], quiet: bool = False) -> bool:
        script = "".join("*%s\n%s\nCOMMIT\n" % (table, "\n".join(lines)) for table, lines in rules.items() if lines)
        if not script:
            return True
        proc = subprocess.run([self.restore or "iptables-restore", "-w", "--noflush"], input=script, capture_output=True, text=True)
        if proc.returncode != 0 and not quiet:
            log.warning("iptables-restore: %s", proc.stderr.strip())
        return proc.returncode == 0

"""Legacy container links (``--link``) and dockerd's checks of a container's network mode.

A link ``db:sql`` on the container ``web`` is stored as dockerd shows it, ``/db:/web/sql``. On the default bridge it
gives ``web`` the environment variables below and a ``/etc/hosts`` line for ``sql``; on user-defined networks the
embedded DNS server answers ``sql`` for ``web`` alone.
"""
from __future__ import annotations

from machines.runtime.errors import InvalidParameter

# moby's runconfig errors, word for word
CONFLICTS = {
    "links_container": "conflicting options: container type network can't be used with links. This would result "
                       "in undefined behavior",
    "links_host": "conflicting options: host type networking can't be used with links. This would result in "
                  "undefined behavior",
    "hostname": "conflicting options: hostname and the network mode",
    "dns": "conflicting options: dns and the network mode",
    "hosts": "conflicting options: custom host-to-IP mapping and the network mode",
    "mac": "conflicting options: mac-address and the network mode",
    "publish": "conflicting options: port publishing and the container type network mode",
    "expose": "conflicting options: port exposing and the container type network mode",
    "uts": "conflicting options: hostname and the UTS mode",
}


def check_network_mode(config: dict, host: dict, kind: str, mac: str) -> None:
    """dockerd's validateNetMode: options that make no sense with ``--network container:`` or ``host``.
    ``kind`` is what ``split_mode`` calls the mode; ``mac`` the MAC address asked for, wherever it was given."""
    mode = str(host.get("NetworkMode") or "")
    if mode.partition(":")[0] == "container" and not mode.partition(":")[2]:
        raise InvalidParameter("Invalid network mode: invalid container format container:<name|id>")
    if host.get("UTSMode") == "host" and config.get("Hostname"):
        raise InvalidParameter(CONFLICTS["uts"])
    if kind == "container":
        checks = [(config.get("Hostname"), "hostname"), (host.get("Links"), "links_container"),
                  (host.get("Dns"), "dns"), (host.get("ExtraHosts"), "hosts"), (mac, "mac"),
                  (host.get("PortBindings") or host.get("PublishAllPorts"), "publish"),
                  (config.get("ExposedPorts"), "expose")]
    elif kind == "host":
        checks = [(host.get("Links"), "links_host"), (mac, "mac")]
    else:
        return
    for value, conflict in checks:
        if value:
            raise InvalidParameter(CONFLICTS[conflict])


def parse_link(spec: str) -> tuple[str, str]:
    """``db``, ``db:sql`` or the stored ``/db:/web/sql`` -> (container, alias)."""
    child, _, alias = str(spec).partition(":")
    child = child.lstrip("/")
    alias = alias.rsplit("/", 1)[-1] if alias else child
    if not child or not alias:
        raise InvalidParameter(f"invalid link specification: {spec}")
    return child, alias


def stored(child_name: str, parent_name: str, alias: str) -> str:
    return f"/{child_name.lstrip('/')}:/{parent_name.lstrip('/')}/{alias}"


def names(alias: str, child_name: str, child_hostname: str) -> list[str]:
    """The names a link gives its target in the linking container: alias, hostname, and name when different."""
    out = [alias, child_hostname]
    if alias != child_name.lstrip("/"):
        out.append(child_name.lstrip("/"))
    return out


def environment(link_name: str, child_ip: str, child_env: list[str], exposed: dict[str, object]) -> list[str]:
    """moby's ``Link.ToEnv``: ``<ALIAS>_PORT...``, ``<ALIAS>_NAME`` and ``<ALIAS>_ENV_...`` for a link named
    ``/parent/alias`` to a container at ``child_ip``."""
    alias = link_name.rsplit("/", 1)[-1].upper().replace("-", "_")
    ports: list[tuple[int, str]] = []
    for key in exposed or {}:
        text, _, kind = str(key).partition("/")
        ports.append((int(text), kind or "tcp"))
    ports.sort(key=lambda port: (port[1] != "tcp", port[1], port[0]))
    env: list[str] = [f"{alias}_PORT={ports[0][1]}://{child_ip}:{ports[0][0]}"] if ports else []
    start = end = ports[0] if ports else (0, "")
    for index, (number, proto) in enumerate(ports):
        prefix = f"{alias}_PORT_{number}_{proto.upper()}"
        env += [f"{prefix}={proto}://{child_ip}:{number}", f"{prefix}_ADDR={child_ip}",
                f"{prefix}_PORT={number}", f"{prefix}_PROTO={proto}"]
        if index and number == end[0] + 1 and proto == end[1]:  # a range goes on
            end = (number, proto)
            if index < len(ports) - 1:
                continue
        if end != start:
            prefix = f"{alias}_PORT_{start[0]}_{start[1].upper()}"
            env += [f"{prefix}_START={start[1]}://{child_ip}:{start[0]}",
                    f"{prefix}_PORT_START={start[0]}",
                    f"{prefix}_END={end[1]}://{child_ip}:{end[0]}", f"{prefix}_PORT_END={end[0]}"]
        start = end = (number, proto)
    env.append(f"{alias}_NAME={link_name}")
    for item in child_env or []:
        name, sep, value = item.partition("=")
        if sep and name not in ("HOME", "PATH"):
            env.append(f"{alias}_ENV_{name}={value}")
    return env

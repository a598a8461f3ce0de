"""The daemon's options: dockerd's ``daemon.json`` directives (``--config-file``) merged with the command line.

Names and refusals follow dockerd: an unknown directive, one given both as a flag and in the file, or a dockerd
directive this runtime does not implement stops the daemon with one line, before it serves anything. The
environment's ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` count unless the file's ``proxies`` set them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from typing import Any

from machines.runtime.errors import EngineError
from machines.runtime.proxy import ProxyConfig

# The directives this runtime honours, by the type daemon.json gives them.
SUPPORTED: dict[str, type] = {
    "labels": list, "insecure-registries": list, "registry-mirrors": list, "proxies": dict, "bip": str,
    "default-address-pools": list, "mtu": int, "debug": bool, "data-root": str, "dns": list, "dns-search": list,
    "dns-opts": list, "log-driver": str, "log-opts": dict,
}
# dockerd's other directives: known, so refused as "not supported" rather than as a typo.
DOCKERD_ONLY = frozenset((
    "fixed-cidr", "fixed-cidr-v6", "default-gateway", "default-gateway-v6", "log-level",
    "storage-driver", "cgroup-parent", "default-runtime", "default-ipc-mode", "default-cgroupns-mode",
    "userns-remap", "seccomp-profile", "ip", "bridge", "default-shm-size", "log-format", "max-concurrent-downloads",
    "max-concurrent-uploads", "max-download-attempts", "shutdown-timeout", "ip-forward", "ip-masq", "iptables",
    "ip6tables", "ipv6", "icc", "live-restore", "experimental", "init", "userland-proxy", "selinux-enabled",
    "no-new-privileges", "storage-opts", "exec-opts", "default-ulimits",
    "hosts", "tls", "tlsverify", "tlscacert", "tlscert", "tlskey", "exec-root", "pidfile",
))


class ConfigError(Exception):
    """A directive the daemon cannot start with: printed as one line."""


def unsupported(directives: Mapping[str, Any]) -> list[str]:
    """The dockerd directives among ``directives`` that this runtime does not implement."""
    return sorted(key for key in directives if key not in SUPPORTED)


@dataclasses.dataclass(frozen=True)
class DaemonOptions:
    """What the engine is started with, beyond its folders and listeners."""

    labels: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    registry_mirrors: tuple[str, ...] = ()
    proxies: ProxyConfig = dataclasses.field(default_factory=ProxyConfig)
    bip: str | None = None
    address_pool: tuple[str, int] | None = None
    mtu: int = 1500
    debug: bool = False
    data_root: str | None = None
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opts: tuple[str, ...] = ()
    log_driver: str = "json-file"
    log_opts: dict[str, str] = dataclasses.field(default_factory=dict)


def read_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"unable to configure the Docker daemon with file {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"unable to configure the Docker daemon with file {path}: {exc}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"unable to configure the Docker daemon with file {path}: not a JSON object")
    return config


def merge(config: Mapping[str, Any], flags: Mapping[str, Any]) -> dict[str, Any]:
    """The file's directives plus the flags that were given; a directive in both is refused, as dockerd does."""
    unknown = sorted(key for key in config if key not in SUPPORTED and key not in DOCKERD_ONLY)
    if unknown:
        raise ConfigError("the following directives don't match any configuration option: " + ", ".join(unknown))
    missing = unsupported(config)
    if missing:
        raise ConfigError("the following directives are not supported by the machines runtime: "
                          + ", ".join(missing))
    both = sorted(key for key, value in flags.items() if value not in (None, [], False) and key in config)
    if both:
        raise ConfigError("the following directives are specified both as a flag and in the configuration file: "
                          + ", ".join(both))
    merged = dict(config)
    merged.update({key: value for key, value in flags.items() if value not in (None, [], False)})
    for key, value in merged.items():
        wanted = SUPPORTED[key]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected a JSON {wanted.__name__}, got {json.dumps(value)}")
    return merged


def _pool(pools: list[Any]) -> tuple[str, int] | None:
    if not pools:
        return None
    if len(pools) > 1:
        raise ConfigError("default-address-pools: the machines runtime takes one pool")
    pool = pools[0]
    try:
        base, size = ipaddress.ip_network(pool["base"]), int(pool["size"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"default-address-pools: invalid pool {json.dumps(pool)}: expected "
                          '{"base": CIDR, "size": PREFIX-LENGTH}') from None
    if not base.prefixlen <= size <= base.max_prefixlen - 2:
        raise ConfigError(f"default-address-pools: size {size} does not fit in {base}")
    return str(base), size


def check(config: Mapping[str, Any]) -> None:
    """Refuse what the daemon would refuse, short of the log driver (the engine's own check): machines runs this
    on the client before anything is created, with no engine to import."""
    merge(config, {})
    options_without_log(config, {})


def options(config: Mapping[str, Any], environ: Mapping[str, str]) -> DaemonOptions:
    """Check every value and build the engine's options."""
    from machines.runtime.engine.logs import log_config  # the engine package imports this module

    log = {"Type": config.get("log-driver") or "json-file", "Config": config.get("log-opts") or {}}
    try:
        log = log_config(log)
    except EngineError as exc:
        raise ConfigError(f"log-driver/log-opts: {exc}") from None
    return dataclasses.replace(options_without_log(config, environ), log_driver=log["Type"], log_opts=log["Config"])


def options_without_log(config: Mapping[str, Any], environ: Mapping[str, str]) -> DaemonOptions:
    for label in config.get("labels") or []:
        if not isinstance(label, str) or "=" not in label:
            raise ConfigError(f"labels: {label!r} is not KEY=VALUE")
    for registry in config.get("insecure-registries") or []:
        if not isinstance(registry, str) or "://" in registry:
            raise ConfigError(f"insecure registry {registry} should not contain '://'")
    for mirror in config.get("registry-mirrors") or []:
        if not isinstance(mirror, str) or not mirror.startswith(("http://", "https://")):
            raise ConfigError(f"invalid mirror: unsupported scheme in {mirror!r}")
    bip = config.get("bip")
    if bip is not None:
        try:
            ipaddress.ip_interface(bip)
        except ValueError:
            raise ConfigError(f"bip: invalid CIDR {bip!r}") from None
    mtu = config.get("mtu", 1500)
    if not 68 <= mtu <= 65535:
        raise ConfigError(f"mtu: {mtu} is not between 68 and 65535")
    for server in config.get("dns") or []:
        try:
            ipaddress.ip_address(server)
        except (TypeError, ValueError):
            raise ConfigError(f"dns: {server!r} is not an IP address") from None
    proxies = config.get("proxies") or {}
    try:
        proxy_config = ProxyConfig.from_environment(environ, proxies)
    except ValueError as exc:
        raise ConfigError(f"proxies: {exc}") from None
    return DaemonOptions(
        labels=tuple(config.get("labels") or ()),
        insecure_registries=tuple(config.get("insecure-registries") or ()),
        registry_mirrors=tuple(config.get("registry-mirrors") or ()),
        proxies=proxy_config,
        bip=bip,
        address_pool=_pool(config.get("default-address-pools") or []),
        mtu=mtu,
        debug=bool(config.get("debug")),
        data_root=config.get("data-root"),
        dns=tuple(config.get("dns") or ()),
        dns_search=tuple(config.get("dns-search") or ()),
        dns_opts=tuple(config.get("dns-opts") or ()),
    )


def load(path: str | None, flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> DaemonOptions:
    """``--config-file`` (when given) merged with the flags, checked."""
    return options(merge(read_file(path) if path else {}, flags), environ)

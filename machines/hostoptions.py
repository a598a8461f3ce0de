"""The options a user chooses for a machine's host at create time, typed and validated in one place.

The CLI builds ``HostOptions`` from ``create``'s flags, the core keeps it in the machine's record (as
``host_options``, with its own ``version``) and hands the same object to the driver (which opens the API port
only for ``api="tls"``) and to the provisioner (API mode, certificate names, data root). Like Docker Machine's
``HostOptions``/``EngineOptions``, it is what the user asked for, never what a driver found out.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from machines.errors import StoreError, UsageError

HOST_OPTIONS_VERSION = 2  # 2: the "engine" part
API_MODES = ("tls", "ssh")
ENGINE_NAMES = ("machines", "docker")  # our bundled runtime (the default), or Docker Engine (for Swarm mode)
SCAN_LEVELS = ("low", "medium", "high", "critical")
DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")

# dockerd's daemon.json directives that --engine-opt accepts, by the kind of value each takes. Directives machines
# sets itself (hosts, TLS) or that have their own flag (labels, registries, proxies) are refused with a pointer.
ENGINE_OPT_KINDS: dict[str, str] = {
    **dict.fromkeys(("bip", "fixed-cidr", "fixed-cidr-v6", "default-gateway", "default-gateway-v6"), "cidr-or-ip"),
    **dict.fromkeys(("log-driver", "log-level", "storage-driver", "cgroup-parent", "default-runtime",
                     "default-ipc-mode", "default-cgroupns-mode", "userns-remap", "seccomp-profile", "ip",
                     "bridge", "default-shm-size", "log-format"), "string"),
    "data-root": "path",
    **dict.fromkeys(("mtu", "max-concurrent-downloads", "max-concurrent-uploads", "max-download-attempts",
                     "shutdown-timeout"), "int"),
    **dict.fromkeys(("debug", "ip-forward", "ip-masq", "iptables", "ip6tables", "ipv6", "icc", "live-restore",
                     "experimental", "init", "userland-proxy", "selinux-enabled", "no-new-privileges"), "bool"),
    **dict.fromkeys(("dns", "dns-opts", "dns-search", "storage-opts", "exec-opts"), "list"),
    **dict.fromkeys(("log-opts", "default-ulimits"), "map"),
    "default-address-pools": "pool",
}
OWN_FLAGS = {
    "labels": "--engine-label", "label": "--engine-label",
    "insecure-registries": "--engine-insecure-registry", "insecure-registry": "--engine-insecure-registry",
    "registry-mirrors": "--engine-registry-mirror", "registry-mirror": "--engine-registry-mirror",
    "proxies": "--engine-env HTTP_PROXY=... (or --engine-proxy auto)",
    "hosts": "--api", "host": "--api", "tls": "--api", "tlsverify": "--api", "tlscacert": "--api",
    "tlscert": "--api", "tlskey": "--api",
}


def split_pair(value: str, flag: str) -> tuple[str, str]:
    """``KEY=VALUE`` as (key, value); anything else is a usage error naming the flag."""
    key, sep, rest = value.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"invalid {flag} {value!r}: expected KEY=VALUE")
    return key.strip(), rest


def check_insecure_registry(value: str) -> str:
    """``HOST[:PORT]`` or a CIDR, as dockerd's ``--insecure-registry`` takes them."""
    if "://" in value:
        raise UsageError(f"invalid --engine-insecure-registry {value!r}: insecure registry {value} should not contain '://'")
    if "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise UsageError(f"invalid --engine-insecure-registry {value!r}: not a CIDR (e.g. 10.0.0.0/8)") from None
        return value
    parsed = urllib.parse.urlsplit("//" + value)
    try:
        port_ok = parsed.port is None or 0 < parsed.port < 65536
    except ValueError:
        port_ok = False
    if not parsed.hostname or not port_ok or parsed.username or parsed.path:
        raise UsageError(f"invalid --engine-insecure-registry {value!r}: expected HOST[:PORT] or a CIDR")
    return value


def check_mirror(value: str) -> str:
    """A registry mirror URL, normalised with a trailing slash, with dockerd's ``ValidateMirror`` refusals."""
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https"):
        raise UsageError(f"invalid --engine-registry-mirror {value!r}: invalid mirror: unsupported scheme "
                         f"{parsed.scheme!r} in {value!r}")
    if parsed.username or parsed.password:
        raise UsageError(f"invalid --engine-registry-mirror {value!r}: invalid mirror: username/password not "
                         "allowed in URI")
    if not parsed.hostname or parsed.path.strip("/") or parsed.query or parsed.fragment:
        raise UsageError(f"invalid --engine-registry-mirror {value!r}: invalid mirror: path, query, or fragment "
                         "at end of the URI (give scheme://host[:port])")
    return f"{parsed.scheme}://{parsed.netloc}/"


def _opt_value(key: str, kind: str, raw: str) -> Any:
    """One ``--engine-opt`` value as daemon.json holds it (list and map kinds are one item each)."""
    flag = f"--engine-opt {key}={raw}"
    if not raw:
        raise UsageError(f"invalid {flag}: empty value")
    if kind == "int":
        if not raw.isdigit():
            raise UsageError(f"invalid {flag}: {key} takes a whole number")
        number = int(raw)
        if key == "mtu" and not 68 <= number <= 65535:
            raise UsageError(f"invalid {flag}: the MTU must be between 68 and 65535")
        return number
    if kind == "bool":
        if raw.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid {flag}: {key} takes true or false")
        return raw.lower() in ("true", "1")
    if kind == "cidr-or-ip":
        try:
            ipaddress.ip_interface(raw)
        except ValueError:
            raise UsageError(f"invalid {flag}: {key} takes an address or CIDR (e.g. 172.30.0.1/16)") from None
        return raw
    if kind == "path":
        if not raw.startswith("/"):
            raise UsageError(f"invalid {flag}: {key} must be an absolute path")
        return raw
    if kind == "map":
        name, _ = split_pair(raw, f"--engine-opt {key}")
        return {name: raw.partition("=")[2]}
    if kind == "pool":
        fields = dict(split_pair(part, f"--engine-opt {key}") for part in raw.split(","))
        if set(fields) != {"base", "size"} or not fields["size"].isdigit():
            raise UsageError(f"invalid {flag}: expected base=CIDR,size=PREFIX-LENGTH")
        try:
            base = ipaddress.ip_network(fields["base"])
        except ValueError:
            raise UsageError(f"invalid {flag}: base {fields['base']!r} is not a network CIDR") from None
        if not base.prefixlen <= int(fields["size"]) <= base.max_prefixlen:
            raise UsageError(f"invalid {flag}: size must be between {base.prefixlen} and {base.max_prefixlen}")
        return {"base": str(base), "size": int(fields["size"])}
    if kind == "list" and key == "dns":
        try:
            ipaddress.ip_address(raw)
        except ValueError:
            raise UsageError(f"invalid {flag}: {raw} is not an IP address") from None
    return raw


def engine_opts_json(opts: Iterable[str]) -> dict[str, Any]:
    """``--engine-opt KEY=VALUE`` items as daemon.json directives; repeated list/map keys accumulate."""
    config: dict[str, Any] = {}
    for item in opts:
        key, raw = split_pair(item, "--engine-opt")
        key = key.removeprefix("--")
        if key in OWN_FLAGS:
            raise UsageError(f"--engine-opt {key} is set with {OWN_FLAGS[key]}")
        kind = ENGINE_OPT_KINDS.get(key)
        if kind is None:
            raise UsageError(f"--engine-opt {key}: the following directives don't match any configuration option: "
                             f"{key} (dockerd's daemon.json names: {', '.join(sorted(ENGINE_OPT_KINDS))})")
        value = _opt_value(key, kind, raw.strip())
        if kind in ("list", "pool"):
            config.setdefault(key, []).append(value)
        elif kind == "map":
            config.setdefault(key, {}).update(value)
        elif key in config and config[key] != value:
            raise UsageError(f"--engine-opt {key} is given twice ({config[key]} and {value})")
        else:
            config[key] = value
    return config


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The engine's own configuration, as Docker Machine's ``EngineOptions`` (labels live in ``HostOptions``).

    ``env``: ``KEY=VALUE`` for the daemon's environment (``HTTP_PROXY``...). ``insecure_registries``: ``HOST[:PORT]``
    or CIDRs allowed over plain HTTP. ``registry_mirrors``: URLs tried before Docker Hub. ``opts``: dockerd
    ``daemon.json`` directives as ``KEY=VALUE`` (repeat a list key, ``log-opts=max-size=10m`` for a map key).
    """

    env: tuple[str, ...] = ()
    insecure_registries: tuple[str, ...] = ()
    registry_mirrors: tuple[str, ...] = ()
    opts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("env", "insecure_registries", "registry_mirrors", "opts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for item in self.env:
            key, value = split_pair(item, "--engine-env")
            if not ENV_NAME.fullmatch(key):
                raise UsageError(f"invalid --engine-env {item!r}: {key!r} is not a variable name")
            if "\n" in value or "\0" in value:
                raise UsageError(f"invalid --engine-env {key}: values cannot hold newlines or NUL")
        for registry in self.insecure_registries:
            check_insecure_registry(registry)
        object.__setattr__(self, "registry_mirrors", tuple(check_mirror(url) for url in self.registry_mirrors))
        engine_opts_json(self.opts)

    @property
    def environment(self) -> dict[str, str]:
        """``env`` as a mapping (a later ``KEY=`` wins, as in a shell)."""
        return dict(split_pair(item, "--engine-env") for item in self.env)

    def with_workstation_proxy(self, environ: Mapping[str, str]) -> EngineOptions:
        """``--engine-proxy auto``: this computer's proxy variables, unless ``--engine-env`` already sets them."""
        given = {key.upper() for key in self.environment}
        copied = tuple(f"{key}={environ[key]}" for key in PROXY_VARIABLES
                       if environ.get(key) and key.upper() not in given)
        return dataclasses.replace(self, env=self.env + copied)

    def daemon_json(self) -> dict[str, Any]:
        """This part of dockerd's daemon.json: opts, registries, mirrors and the proxies of ``env``."""
        config = engine_opts_json(self.opts)
        if self.insecure_registries:
            config["insecure-registries"] = list(self.insecure_registries)
        if self.registry_mirrors:
            config["registry-mirrors"] = list(self.registry_mirrors)
        env = self.environment
        proxies = {name: env.get(key) or env.get(key.lower())
                   for name, key in (("http-proxy", "HTTP_PROXY"), ("https-proxy", "HTTPS_PROXY"),
                                     ("no-proxy", "NO_PROXY"))}
        if any(proxies.values()):
            config["proxies"] = {name: value for name, value in proxies.items() if value}
        return config

    def public_env(self) -> list[str]:
        """``env`` with the passwords of URLs (``http://user:pass@proxy``) masked, for ``inspect``."""
        masked = []
        for item in self.env:
            key, value = split_pair(item, "--engine-env")
            parts = urllib.parse.urlsplit(value) if "://" in value else None
            if parts is not None and parts.password:
                value = value.replace(f":{parts.password}@", ":<hidden>@", 1)
            masked.append(f"{key}={value}")
        return masked

    def to_record(self) -> dict[str, Any]:
        return {"env": list(self.env), "insecure_registries": list(self.insecure_registries),
                "registry_mirrors": list(self.registry_mirrors), "opts": list(self.opts)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> EngineOptions:
        record = record or {}
        return cls(**{name: tuple(record.get(name) or ()) for name in ("env", "insecure_registries",
                                                                         "registry_mirrors", "opts")})


def check_san(value: str) -> str:
    """``value`` when it is an IP address or a plain DNS name; wildcards and anything else are refused."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if len(value) <= 253 and all(DNS_LABEL.fullmatch(label) for label in value.removesuffix(".").split(".")):
        return value
    raise UsageError(f"invalid --tls-san {value!r}: give a host name or an IP address (no wildcards)")


@dataclasses.dataclass(frozen=True)
class HostOptions:
    """``api``: "tls" (TCP 2376 with mutual TLS, the default) or "ssh" (no TCP port, reached through SSH).

    ``tls_san``: extra names or IPs for the server certificate. ``labels``: ``KEY=VALUE`` labels of the machine
    (``ls --filter label=``). ``data_root``: absolute path on the host where the runtime keeps its data; ``None``
    lets the driver (``Driver.runtime_data_root``) or the provisioner choose (``--engine-opt data-root=`` is the
    same setting). ``engine``: the engine's own options (``EngineOptions``). ``engine_name``: which engine the
    machine runs, "machines" (our bundled runtime) or "docker" (Docker Engine from the host's packages).
    ``trust_policy``: the image trust policy (containers-policy.json text, keys inlined; see
    ``machines.trust.policy``) installed on the host. ``signing_policy``: which key signs ``docker push`` per
    registry scope (the runtime's ``signing.json``, keys named, never included); ``signing_keys``: the decrypted
    private keys it names, ``(name, PKCS#8 PEM)``, to install on the host with this change only: never recorded or
    shown. ``scan_fail_on``: scan pulled and built images on arrival
    and refuse those with a vulnerability at or above this severity, against the OSV records of the workstation
    folder ``scan_db`` (uploaded at provisioning).
    """

    api: str = "tls"
    tls_san: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    data_root: str | None = None
    engine: EngineOptions = EngineOptions()
    engine_name: str = "machines"
    trust_policy: str | None = None
    signing_policy: str | None = None
    signing_keys: tuple[tuple[str, bytes], ...] = dataclasses.field(default=(), repr=False)
    scan_fail_on: str | None = None
    scan_db: str | None = None

    def __post_init__(self) -> None:
        # Lists from JSON or callers become tuples, so the frozen object is really immutable.
        object.__setattr__(self, "tls_san", tuple(self.tls_san))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.api not in API_MODES:
            raise UsageError(f"--api must be 'tls' or 'ssh', not {self.api!r}")
        if self.engine_name not in ENGINE_NAMES:
            raise UsageError(f"--engine must be {' or '.join(repr(name) for name in ENGINE_NAMES)}, not {self.engine_name!r}")
        if self.data_root is not None and not self.data_root.startswith("/"):
            raise UsageError(f"--runtime-data-root must be an absolute path, not {self.data_root!r}")
        for value in (*self.tls_san, *self.labels):
            if not isinstance(value, str) or not value:
                raise UsageError(f"host options must be non-empty strings, not {value!r}")
        if self.scan_fail_on not in (None, *SCAN_LEVELS):
            raise UsageError(f"--engine-scan must be one of {', '.join(SCAN_LEVELS)}, not {self.scan_fail_on!r}")
        if (self.scan_fail_on is None) != (self.scan_db is None):
            raise UsageError("--engine-scan and --engine-scan-db go together")
        if self.engine_name != "machines" and (self.trust_policy or self.signing_policy or self.scan_fail_on):
            raise UsageError("--engine-trust-policy, --engine-signing-policy and --engine-scan need the machines "
                             f"engine, not --engine {self.engine_name}")
        for name_or_ip in self.tls_san:
            check_san(name_or_ip)
        for label in self.labels:
            key, _ = split_pair(label, "--engine-label")
            if any(character.isspace() for character in key):
                raise UsageError(f"invalid --engine-label {label!r}: the key cannot hold spaces")
        opt_root = engine_opts_json(self.engine.opts).get("data-root")
        if opt_root and self.data_root and opt_root != self.data_root:
            raise UsageError(f"--engine-opt data-root={opt_root} and --runtime-data-root {self.data_root} disagree")

    @property
    def engine_data_root(self) -> str | None:
        """Where the user wants the engine's data (``--runtime-data-root`` or ``--engine-opt data-root=``)."""
        return self.data_root or engine_opts_json(self.engine.opts).get("data-root")

    def daemon_json(self) -> dict[str, Any]:
        """Everything the user chose for the engine as dockerd's daemon.json directives (labels, data root too)."""
        config = self.engine.daemon_json()
        if self.labels:
            config["labels"] = list(self.labels)
        if self.engine_data_root:
            config["data-root"] = self.engine_data_root
        return config

    @property
    def api_over_tls(self) -> bool:
        """Whether the runtime's API listens on TCP 2376 with TLS (drivers open that port only then)."""
        return self.api == "tls"

    def to_record(self) -> dict[str, Any]:
        """The JSON form kept in ``config.json`` under ``host_options``."""
        record: dict[str, Any] = {"version": HOST_OPTIONS_VERSION, "api": self.api, "tls_san": list(self.tls_san),
                                  "labels": list(self.labels)}
        if self.data_root is not None:
            record["data_root"] = self.data_root
        if self.engine != EngineOptions():
            record["engine"] = self.engine.to_record()
        if self.engine_name != "machines":
            record["engine_name"] = self.engine_name
        if self.trust_policy is not None:
            record["trust_policy"] = self.trust_policy
        if self.signing_policy is not None:
            record["signing_policy"] = self.signing_policy
        if self.scan_fail_on is not None:
            record["scan_fail_on"], record["scan_db"] = self.scan_fail_on, self.scan_db
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> HostOptions:
        """Read the stored form; records written before options had a version are version 1."""
        record = dict(record or {})
        version = record.pop("version", HOST_OPTIONS_VERSION)
        if not isinstance(version, int) or version > HOST_OPTIONS_VERSION:
            raise StoreError(
                f"host options version {version!r}: this machines understands up to {HOST_OPTIONS_VERSION}: upgrade"
            )
        try:
            return cls(
                api=record.get("api") or "tls",
                tls_san=tuple(record.get("tls_san") or ()),
                labels=tuple(record.get("labels") or ()),
                data_root=record.get("data_root") or None,
                engine=EngineOptions.from_record(record.get("engine")),
                engine_name=record.get("engine_name") or "machines",
                trust_policy=record.get("trust_policy") or None,
                signing_policy=record.get("signing_policy") or None,
                scan_fail_on=record.get("scan_fail_on") or None,
                scan_db=record.get("scan_db") or None,
            )
        except UsageError as error:
            raise StoreError(f"stored host options are invalid: {error}") from None


def plan(recorded: HostOptions, wanted: HostOptions) -> list[str]:
    """What changing ``recorded`` into ``wanted`` changes, one ``field: old -> new`` line each (empty: nothing)."""
    lines = []
    for name, old, new in (
        ("api", recorded.api, wanted.api),
        ("tls-san", list(recorded.tls_san), list(wanted.tls_san)),
        ("engine labels", list(recorded.labels), list(wanted.labels)),
        ("data root", recorded.engine_data_root, wanted.engine_data_root),
        ("insecure registries", list(recorded.engine.insecure_registries), list(wanted.engine.insecure_registries)),
        ("registry mirrors", list(recorded.engine.registry_mirrors), list(wanted.engine.registry_mirrors)),
    ):
        if old != new:
            lines.append(f"{name}: {old} -> {new}")
    for name, old_doc, new_doc in (("trust policy", recorded.trust_policy, wanted.trust_policy),
                                   ("signing policy", recorded.signing_policy, wanted.signing_policy)):
        if old_doc != new_doc:  # a whole document: say that it changes, not how
            lines.append(f"{name}: {'removed' if not new_doc else 'replaced' if old_doc else 'installed'}")
    if wanted.signing_keys and wanted.signing_policy == recorded.signing_policy:
        lines.append("signing keys: installed again")
    old_env, new_env = recorded.engine.environment, wanted.engine.environment
    changed_env = sorted(key for key in {**old_env, **new_env} if old_env.get(key) != new_env.get(key))
    if changed_env:  # values may hold proxy passwords: only the names are shown
        lines.append(f"engine env: {', '.join(changed_env)} change")
    old_opts, new_opts = engine_opts_json(recorded.engine.opts), engine_opts_json(wanted.engine.opts)
    old_opts.pop("data-root", None)
    new_opts.pop("data-root", None)
    for key in sorted(set(old_opts) | set(new_opts)):
        if old_opts.get(key) != new_opts.get(key):
            lines.append(f"engine opt {key}: {old_opts.get(key)} -> {new_opts.get(key)}")
    return lines


def changed(recorded: HostOptions, *, tls_san: Iterable[str] | None = None, labels: Iterable[str] | None = None,
            env: Iterable[str] | None = None, insecure_registries: Iterable[str] | None = None,
            registry_mirrors: Iterable[str] | None = None, opts: Iterable[str] = ()) -> HostOptions:
    """``machines set``: a given list replaces the recorded one; ``opts`` replace the recorded values of their keys
    (``KEY=`` removes the key). Validated as at create."""
    new_keys = {split_pair(item, "--engine-opt")[0].removeprefix("--") for item in opts}
    kept = [item for item in recorded.engine.opts if split_pair(item, "--engine-opt")[0].removeprefix("--")
            not in new_keys]
    engine = EngineOptions(
        env=tuple(env) if env is not None else recorded.engine.env,
        insecure_registries=tuple(insecure_registries) if insecure_registries is not None
        else recorded.engine.insecure_registries,
        registry_mirrors=tuple(registry_mirrors) if registry_mirrors is not None else recorded.engine.registry_mirrors,
        opts=(*kept, *(item for item in opts if split_pair(item, "--engine-opt")[1])),
    )
    return dataclasses.replace(
        recorded, tls_san=tuple(tls_san) if tls_san is not None else recorded.tls_san,
        labels=tuple(labels) if labels is not None else recorded.labels, engine=engine,
    )

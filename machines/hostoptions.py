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
from collections.abc import Mapping
from typing import Any

from machines.errors import StoreError, UsageError

HOST_OPTIONS_VERSION = 1
API_MODES = ("tls", "ssh")
SCAN_LEVELS = ("low", "medium", "high", "critical")
DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


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
    lets the driver (``Driver.runtime_data_root``) or the provisioner choose. ``trust_policy``: the image trust
    policy (containers-policy.json text, keys inlined; see ``machines.trust.policy``) installed on the host.
    ``scan_fail_on``: scan pulled and built images on arrival and refuse those with a vulnerability at or above this
    severity, against the OSV records of the workstation folder ``scan_db`` (uploaded at provisioning).
    """

    api: str = "tls"
    tls_san: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    data_root: str | None = None
    trust_policy: str | None = None
    scan_fail_on: str | None = None
    scan_db: str | None = None

    def __post_init__(self) -> None:
        # Lists from JSON or callers become tuples, so the frozen object is really immutable.
        object.__setattr__(self, "tls_san", tuple(self.tls_san))
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.api not in API_MODES:
            raise UsageError(f"--api must be 'tls' or 'ssh', not {self.api!r}")
        if self.data_root is not None and not self.data_root.startswith("/"):
            raise UsageError(f"--runtime-data-root must be an absolute path, not {self.data_root!r}")
        for value in (*self.tls_san, *self.labels):
            if not isinstance(value, str) or not value:
                raise UsageError(f"host options must be non-empty strings, not {value!r}")
        if self.scan_fail_on not in (None, *SCAN_LEVELS):
            raise UsageError(f"--engine-scan must be one of {', '.join(SCAN_LEVELS)}, not {self.scan_fail_on!r}")
        if (self.scan_fail_on is None) != (self.scan_db is None):
            raise UsageError("--engine-scan and --engine-scan-db go together")
        for name_or_ip in self.tls_san:
            check_san(name_or_ip)

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
        if self.trust_policy is not None:
            record["trust_policy"] = self.trust_policy
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
                trust_policy=record.get("trust_policy") or None,
                scan_fail_on=record.get("scan_fail_on") or None,
                scan_db=record.get("scan_db") or None,
            )
        except UsageError as error:
            raise StoreError(f"stored host options are invalid: {error}") from None

"""Which proxy a registry request goes through, by the rules of Go's ``golang.org/x/net/http/httpproxy``.

dockerd reads ``HTTP_PROXY``, ``HTTPS_PROXY`` and ``NO_PROXY`` (or their lower-case forms, or daemon.json's
``proxies``) and decides with that package, so users' NO_PROXY lists mean the same here: ``*`` matches everything;
``example.com`` matches it and its subdomains, ``.example.com`` and ``*.example.com`` only subdomains; an IP or a
CIDR matches addresses; ``host:port`` only that port. ``localhost`` and loopback addresses never use a proxy.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import urllib.parse
from collections.abc import Mapping

DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclasses.dataclass(frozen=True)
class Proxy:
    """A proxy to send a request through: its address and the ``Proxy-Authorization`` it needs, if any."""

    host: str
    port: int
    authorization: str | None = None


def _split_host_port(text: str) -> tuple[str, str] | None:
    """Go's ``net.SplitHostPort``: None when ``text`` has no port."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        return (host, rest[1:]) if sep and rest.startswith(":") else None
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        return None
    return host, port


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_proxy_url(value: str) -> Proxy | None:
    """``http://[user:pass@]host[:port]`` (a bare ``host:port`` is http, as Go assumes); None when empty."""
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid proxy address {value!r}: expected http://HOST[:PORT]")
    authorization = None
    if parts.username is not None:
        import base64

        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode()
    return Proxy(parts.hostname, parts.port or int(DEFAULT_PORTS[parts.scheme]), authorization)


class ProxyConfig:
    """The proxies of one daemon and its NO_PROXY rules."""

    def __init__(self, http_proxy: str = "", https_proxy: str = "", no_proxy: str = "") -> None:
        self.http = parse_proxy_url(http_proxy)
        self.https = parse_proxy_url(https_proxy)
        self.variables = {"HTTP_PROXY": http_proxy, "HTTPS_PROXY": https_proxy, "NO_PROXY": no_proxy}
        self._all = False
        self._ips: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = []
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._domains: list[tuple[str, str, bool]] = []  # (".suffix", port, whether the bare name matches too)
        for entry in no_proxy.split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self._all = True
                return
            if "/" in entry:
                try:
                    self._networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    pass
                else:
                    continue
            split = _split_host_port(entry)
            host, port = split if split else (entry, "")
            if split and not host:
                continue  # ":80": no host part; Go ignores such an entry
            address = _ip(host)
            if address is not None:
                self._ips.append((address, port))
                continue
            if host.startswith("*."):
                host = host[1:]
            exact = not host.startswith(".")
            self._domains.append((host if not exact else "." + host, port, exact))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], proxies: Mapping[str, str] | None = None) -> ProxyConfig:
        """daemon.json's ``proxies`` win over the environment, as in dockerd; upper case before lower case."""
        proxies = proxies or {}

        def pick(config_key: str, name: str) -> str:
            return proxies.get(config_key) or environ.get(name) or environ.get(name.lower()) or ""

        return cls(pick("http-proxy", "HTTP_PROXY"), pick("https-proxy", "HTTPS_PROXY"),
                   pick("no-proxy", "NO_PROXY"))

    def for_url(self, url: str) -> Proxy | None:
        """The proxy for ``url`` (http or https), or None to connect directly."""
        parts = urllib.parse.urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http if parts.scheme == "http" else None
        if proxy is None or not self.use_proxy(parts.netloc, parts.scheme):
            return None
        return proxy

    def use_proxy(self, netloc: str, scheme: str = "http") -> bool:
        """Go's ``useProxy`` on the canonical ``host:port`` of a request."""
        split = _split_host_port(netloc.rpartition("@")[2])
        host, port = split if split else (netloc.rpartition("@")[2].strip("[]"), DEFAULT_PORTS.get(scheme, ""))
        host = host.strip().lower()
        if host == "localhost":
            return False
        address = _ip(host)
        if address is not None and address.is_loopback:
            return False
        if self._all:
            return False
        if address is not None:
            if any(address in network for network in self._networks):
                return False
            if any(address == ip and (not rule_port or rule_port == port) for ip, rule_port in self._ips):
                return False
        for suffix, rule_port, exact in self._domains:
            if host.endswith(suffix) or (exact and host == suffix[1:]):
                if not rule_port or rule_port == port:
                    return False
        return True

    def build_args(self) -> dict[str, str]:
        """The proxy variables a build gets by default (Docker's predefined ARGs), both cases as Docker has them."""
        return {name: value for key, value in self.variables.items() if value for name in (key, key.lower())}

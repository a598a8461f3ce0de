"""Issue 14 in the registry client: NO_PROXY as Go's httpproxy reads it, registry mirrors with fallback, plain-HTTP
requests through a proxy, and the daemon's directives (daemon.json) refused as dockerd refuses them."""

from __future__ import annotations

import http.server
import io
import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest

from machines.runtime import daemonconfig
from machines.runtime.images import registry as registry_mod
from machines.runtime.images.service import ImageService
from machines.runtime.proxy import ProxyConfig
from tests.support.registry import Registry, start_registry

NO_PROXY = ".example.com, foo.org, 10.0.0.0/8, 192.168.1.5:5000, bar.net:443, [::1]:1, *.star.io"


@pytest.mark.parametrize(
    ("url", "proxied"),
    [
        ("https://a.example.com/v2/", False),  # ".example.com": subdomains
        ("https://example.com/v2/", True),  # ...but not the domain itself
        ("https://foo.org/v2/", False),  # "foo.org": the domain...
        ("https://x.foo.org/v2/", False),  # ...and its subdomains
        ("https://notfoo.org/v2/", True),  # a suffix that is not a label boundary does not match
        ("https://10.1.2.3/v2/", False),  # CIDR
        ("http://192.168.1.5:5000/v2/", False),  # IP with its port
        ("http://192.168.1.5:5001/v2/", True),  # ...another port is proxied
        ("https://bar.net/v2/", False),  # host:443 matches the https default port
        ("http://bar.net/v2/", True),  # ...not port 80
        ("https://a.star.io/v2/", False),  # "*.star.io"
        ("http://127.0.0.1:5000/v2/", False),  # loopback never goes through a proxy
        ("http://localhost:5000/v2/", False),
        ("https://registry-1.docker.io/v2/", True),
    ],
)
def test_no_proxy_follows_go_httpproxy(url: str, proxied: bool) -> None:
    config = ProxyConfig("http://user:pw@proxy.test:3128", "proxy.test:8080", NO_PROXY)
    proxy = config.for_url(url)
    assert (proxy is not None) == proxied
    if proxy is not None and url.startswith("https"):
        assert (proxy.host, proxy.port, proxy.authorization) == ("proxy.test", 8080, None)  # bare host:port is http
    elif proxy is not None:
        assert proxy.authorization == "Basic dXNlcjpwdw=="


def test_star_disables_proxies_and_daemon_json_wins_over_the_environment() -> None:
    assert ProxyConfig("http://p:1", "http://p:1", "*").for_url("https://anything/") is None
    config = ProxyConfig.from_environment({"HTTPS_PROXY": "http://env:1", "https_proxy": "http://lower:1"},
                                          {"https-proxy": "http://file:2"})
    assert config.for_url("https://r.test/").host == "file"  # type: ignore[union-attr]
    assert ProxyConfig.from_environment({"https_proxy": "http://lower:1"}).for_url("https://r.test/").host == "lower"  # type: ignore[union-attr]


@pytest.fixture
def upstream(tmp_path) -> Iterator[Registry]:
    server = start_registry(str(tmp_path / "upstream"))
    yield server
    server.stop()


@pytest.fixture
def mirror(tmp_path, upstream: Registry) -> Iterator[Registry]:
    server = start_registry(str(tmp_path / "mirror"), proxy_for=f"http://{upstream.host}")
    yield server
    server.stop()


def _push_busybox(service: ImageService, store, busybox_tar: bytes, name: str) -> str:
    image = store.resolve(store.import_tar(io.BytesIO(busybox_tar)))
    store.tag(image.id, name)
    list(service.push(name))
    store.remove(name)
    return image.id


def test_docker_hub_pulls_try_each_mirror_in_turn(store, busybox_tar, upstream: Registry, mirror: Registry) -> None:
    """A dead mirror is skipped; the next one serves the image; it is recorded under Docker Hub's name."""
    pushing = ImageService(store)
    image_id = _push_busybox(pushing, store, busybox_tar, f"{upstream.host}/library/busybox:mirrored")
    assert store.list(all=True) == []  # removing the tag removed the image
    service = ImageService(store, mirrors=["http://127.0.0.1:9/", f"http://{mirror.host}/"])
    messages = list(service.pull("busybox", "mirrored"))
    assert messages[-1] == {"status": "Status: Downloaded newer image for busybox:mirrored"}
    assert store.resolve("docker.io/library/busybox:mirrored").id == image_id


def test_mirrors_are_only_for_docker_hub_images(store, busybox_tar, upstream: Registry) -> None:
    options = registry_mod.RegistryOptions(mirrors=["http://127.0.0.1:9/"])
    assert options.mirrors_for(registry_mod.reference.parse("busybox")) == ["http://127.0.0.1:9"]
    assert options.mirrors_for(registry_mod.reference.parse(f"{upstream.host}/a/b")) == []


class _ForwardProxy(http.server.ThreadingHTTPServer):
    """A plain-HTTP forward proxy that records the request lines it was sent (absolute-form URLs)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.seen.append(f"{self.command} {self.path} {self.headers.get('Proxy-Authorization')}")
                with urllib.request.urlopen(urllib.request.Request(self.path, headers={
                        "Accept": self.headers.get("Accept", "*/*")}), timeout=10) as upstream:
                    body = upstream.read()
                    self.send_response(upstream.status)
                    for name in ("Content-Type", "Docker-Content-Digest"):
                        if upstream.headers.get(name):
                            self.send_header(name, upstream.headers[name])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_plain_http_requests_go_to_the_proxy_in_absolute_form_with_its_credentials(upstream: Registry) -> None:
    proxy = _ForwardProxy()
    try:
        # 127.0.0.2 is not "localhost" for the proxy rules, but loopback: only NO_PROXY-free names are proxied, so
        # ask through a Session whose rules are forced to use the proxy.
        config = ProxyConfig(f"http://u:p@127.0.0.1:{proxy.server_address[1]}", "", "")
        session = registry_mod.Session(registry_mod.reference.parse(f"{upstream.host}/x/y"), {},
                                       registry_mod.RegistryOptions(proxies=config))
        target = f"http://{upstream.host}/v2/"
        assert config.for_url(target) is None  # loopback targets are never proxied...
        config.use_proxy = lambda netloc, scheme="http": True  # type: ignore[method-assign]
        response = session._send("GET", target, {})  # ...so force it to see the wire form
        assert response.status == 200
        response.close()
        assert proxy.seen == [f"GET {target} Basic dTpw"]
    finally:
        proxy.shutdown()


@pytest.mark.parametrize(
    ("config", "flags", "message"),
    [
        ({"frobnicate": 1}, {}, "the following directives don't match any configuration option: frobnicate"),
        ({"fixed-cidr": "10.1.0.0/24"}, {}, "not supported by the machines runtime: fixed-cidr"),
        ({"log-driver": "syslog"}, {}, "no log driver named 'syslog' is registered"),
        ({"log-opts": {"max-size": "5m", "colour": "red"}}, {}, "unknown log opt 'colour'"),
        ({"dns": ["not-an-ip"]}, {}, "dns: 'not-an-ip' is not an IP address"),
        ({"labels": ["a=b"]}, {"labels": ["c=d"]}, "specified both as a flag and in the configuration file: labels"),
        ({"mtu": "1400"}, {}, "mtu: expected a JSON int"),
        ({"mtu": 20}, {}, "mtu: 20 is not between 68 and 65535"),
        ({"insecure-registries": ["http://x"]}, {}, "should not contain '://'"),
        ({"default-address-pools": [{"base": "10.0.0.0/8", "size": 24}] * 2}, {}, "takes one pool"),
    ],
)
def test_daemon_directives_are_refused_as_dockerd_refuses_them(config: dict, flags: dict, message: str) -> None:
    with pytest.raises(daemonconfig.ConfigError, match=message):
        daemonconfig.options(daemonconfig.merge(config, flags), {})


def test_daemon_options_from_file_flags_and_environment(tmp_path) -> None:
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"labels": ["a=b"], "bip": "172.31.0.1/24", "proxies": {"no-proxy": ".corp"},
                                "default-address-pools": [{"base": "10.99.0.0/16", "size": 24}]}))
    options = daemonconfig.load(str(path), {"registry-mirrors": ["http://m:5000/"], "mtu": None},
                                {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "ignored"})
    assert options.labels == ("a=b",) and options.registry_mirrors == ("http://m:5000/",)
    assert options.address_pool == ("10.99.0.0/16", 24) and options.mtu == 1500
    assert options.proxies.variables == {"HTTP_PROXY": "", "HTTPS_PROXY": "http://p:1", "NO_PROXY": ".corp"}

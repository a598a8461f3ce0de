"""Malformed requests: every one gets an answer with a 4xx status and a message, never a 500 or a dropped connection.

Raw bytes over the daemon's unix socket, so nothing in a client library tidies the request up first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from machines.runtime.api import validate
from tests.api.test_protocol import raw
from tests.support.daemon import Daemon
from tests.support.tarballs import files_tar

WRONG_VALUES = [1.5, "x", [1], {"a": [1]}, True, -1]
DEEP = 100000  # far beyond Python's recursion limit


def exchange(daemon: Daemon, data: bytes) -> bytes:
    """Raw bytes on a fresh unix connection; everything answered until the daemon closes."""
    return raw(daemon, data, timeout=30)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer at all: {answer[:200]!r}"
    return int(answer.split(b" ", 2)[1])


def call(daemon: Daemon, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    lines = [f"{method} {path} HTTP/1.1", "Host: docker", "Connection: close"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += ["{}: {}".format(*item) for item in (headers or {}).items()]
    answer = exchange(daemon, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b""))
    return status_of(answer), answer.partition(b"\r\n\r\n")[2]


def assert_client_error(status: int, body: bytes, what: str) -> None:
    assert 400 <= status < 500, f"{what} -> {status} {body[:300]!r}"


@pytest.mark.parametrize("value", ["\u0661\u0662", "\uff11", "1_0", "+5", "5 5", "0x10", "-1", "9" * 40])
def test_content_length_must_be_ascii_digits(daemon: Daemon, value: str) -> None:
    head = f"POST /v1.47/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: {value}\r\n\r\n"
    answer = exchange(daemon, head.encode("utf-8") + b"{}")
    assert status_of(answer) == 400, answer
    assert b"invalid Content-Length" in answer


@pytest.mark.parametrize("size", [b"-1", b"0x10", b"1_0", b"+a", b"\xd9\xa1", b"fffffffffffffffffff"])
def test_chunk_sizes_must_be_plain_hex(daemon: Daemon, size: bytes) -> None:
    head = b"POST /v1.47/volumes/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = exchange(daemon, head + size + b"\r\n{}\r\n0\r\n\r\n")
    assert status_of(answer) == 400, answer


@pytest.mark.parametrize("body", [b"[" * DEEP + b"]" * DEEP, b'{"a":' * DEEP + b"1" + b"}" * DEEP,
                                  b"[" * DEEP])
@pytest.mark.parametrize("path", ["/v1.47/containers/create", "/v1.47/networks/create", "/v1.47/volumes/create"])
def test_deeply_nested_json_bodies_are_refused(daemon: Daemon, path: str, body: bytes) -> None:
    status, answer = call(daemon, "POST", path, body)
    assert status == 400, answer[:300]
    assert "invalid JSON" in json.loads(answer)["message"]


@pytest.mark.parametrize("path", ["/v1.47/containers/json", "/v1.47/images/json", "/v1.47/networks",
                                  "/v1.47/volumes", "/v1.47/volumes/prune", "/v1.47/events"])
@pytest.mark.parametrize("filters", ["[" * DEEP, '{"label":' * 2000 + "1" + "}" * 2000, '{"label": 5}',
                                     '{"label": [1]}', '"x"', "{", '{"label": {"a": "yes"}}'])
def test_malformed_filters_are_refused(daemon: Daemon, path: str, filters: str) -> None:
    from urllib.parse import quote

    method = "POST" if path.endswith("prune") else "GET"
    query = "filters=" + quote(filters) + ("&until=1" if path.endswith("events") else "")
    status, answer = call(daemon, method, path + "?" + query)
    assert_client_error(status, answer, f"{path} ?filters={filters[:40]}")


@pytest.mark.parametrize("path", ["/v1.47/build?buildargs=%5B%5B%5B", "/v1.47/build?labels=5",
                                  "/v1.47/build?buildargs=" + "%5B" * 5000])
def test_malformed_build_query_json_is_refused(daemon: Daemon, path: str) -> None:
    status, answer = call(daemon, "POST", path, b"")
    text = answer.decode(errors="replace")
    assert status == 400 or (status == 200 and '"errorDetail"' in text), text[:300]


@pytest.mark.parametrize("payload", [b"[" * DEEP, b'{"a":' * DEEP, b"\xff", b"{"])
def test_malformed_registry_auth_header_is_refused(payload: bytes) -> None:
    """Decoded before any registry is contacted (checked here directly: the test must not reach a registry)."""
    import base64

    from machines.runtime.errors import InvalidParameter
    from machines.runtime.images.registry import decode_auth

    with pytest.raises(InvalidParameter, match="invalid X-Registry-Auth header"):
        decode_auth(base64.urlsafe_b64encode(payload).decode())


@pytest.fixture
def targets(daemon: Daemon, image: str, name: str) -> Iterator[dict[str, str]]:
    """A running container, an exec in it and a network: path parameters that exist, so bodies get parsed."""
    daemon.out("run", "-d", "--name", name, image, "sleep", "600")
    daemon.out("network", "create", name)
    status, answer = call(daemon, "POST", f"/v1.47/containers/{name}/exec", json.dumps({"Cmd": ["true"]}).encode())
    assert status == 201, answer
    try:
        yield {"container": name, "network": name, "exec": json.loads(answer)["Id"]}
    finally:
        daemon.docker("rm", "-f", name)
        daemon.docker("network", "rm", name)
        daemon.docker("volume", "prune", "-af")


def _bodies(schema: dict[str, str], wrap=lambda inner: inner) -> Iterator[bytes]:
    yield from (b"[]", b'"x"', b"1", b"{", b"\xff\xfe")
    for field in schema:
        for value in WRONG_VALUES:
            yield json.dumps(wrap({field: value})).encode()


def test_wrong_json_types_in_request_bodies_are_4xx(daemon: Daemon, targets: dict[str, str]) -> None:
    ref, net, exec_id = targets["container"], targets["network"], targets["exec"]
    cases: list[tuple[str, bytes]] = []
    cases += [("/containers/create", body) for body in _bodies(validate.CONTAINER_CONFIG)]
    cases += [("/containers/create", body) for body in _bodies(validate.HOST_CONFIG,
                                                               lambda inner: {"HostConfig": inner})]
    cases += [("/containers/create", body) for body in _bodies(
        validate.ENDPOINT_CONFIG, lambda inner: {"NetworkingConfig": {"EndpointsConfig": {net: inner}}})]
    cases += [("/containers/create", body) for body in _bodies(
        validate.RESTART_POLICY, lambda inner: {"HostConfig": {"RestartPolicy": inner}})]
    cases += [(f"/containers/{ref}/exec", body) for body in _bodies(validate.EXEC_CONFIG)]
    cases += [(f"/exec/{exec_id}/start", body) for body in _bodies(validate.EXEC_START) if b"true" not in body]
    cases += [("/volumes/create", body) for body in _bodies(validate.VOLUME_CONFIG) if b'"Name"' not in body]
    network_fields = {"Name": "", "Driver": "", "Internal": "", "Attachable": "", "Labels": "", "Options": "",
                      "IPAM": "", "EnableIPv6": "", "CheckDuplicate": ""}
    cases += [("/networks/create", body) for body in _bodies(network_fields)]
    cases += [(f"/networks/{net}/connect", body) for body in _bodies({"Container": "", "EndpointConfig": ""})]
    cases += [(f"/networks/{net}/disconnect", body) for body in _bodies({"Container": "", "Force": ""})]
    cases += [(f"/commit?container={ref}", body) for body in _bodies(validate.CONTAINER_CONFIG)]
    failures = []
    for path, body in cases:
        status, answer = call(daemon, "POST", "/v1.47" + path, body)
        if status >= 500:
            failures.append(f"{path} {body[:80]!r} -> {status} {answer[:200]!r}")
    assert not failures, "\n".join(failures[:20])
    assert daemon.alive()


def _load_is_refused(daemon: Daemon, files: dict[str, bytes]) -> None:
    """``docker load`` of these files answers a 4xx, or dockerd's 200 whose stream ends in an error; never a 500."""
    status, answer = call(daemon, "POST", "/v1.47/images/load?quiet=1", files_tar(files))
    text = answer.decode(errors="replace")
    assert 400 <= status < 500 or (status == 200 and '"errorDetail"' in text), f"{status} {text[:300]}"


CONFIG = json.dumps({"rootfs": {"type": "layers", "diff_ids": []}, "config": {}}).encode()


@pytest.mark.parametrize("manifest", [
    b"{}", b'"x"', b"[1]", b'[{"Config": 5}]', b'[{"Config": "c.json", "Layers": "l.tar"}]',
    b'[{"Config": "c.json", "Layers": [1]}]', b'[{"Config": "c.json", "RepoTags": [{"a": 1}]}]',
    b'[{"Config": "c.json", "RepoTags": "x:y"}]', b'[{"Config": ["c.json"]}]', b'[{"Layers": []}]',
    b"[" * DEEP, b'[{"Config": "../../etc/passwd"}]', b'[{"Config": "c.json", "RepoTags": ["Not A Tag!"]}]',
])
def test_wrong_json_types_in_a_loaded_manifest_are_4xx(daemon: Daemon, manifest: bytes) -> None:
    _load_is_refused(daemon, {"manifest.json": manifest, "c.json": CONFIG})


@pytest.mark.parametrize("config", [b"[]", b'{"rootfs": []}', b'{"rootfs": {"diff_ids": "x"}}',
                                    b'{"rootfs": {"diff_ids": [5]}}', b'{"rootfs": {"diff_ids": ["../x"]}}',
                                    b"{" * DEEP])
def test_wrong_json_types_in_a_loaded_image_config_are_4xx(daemon: Daemon, config: bytes) -> None:
    manifest = json.dumps([{"Config": "c.json", "Layers": [], "RepoTags": []}]).encode()
    _load_is_refused(daemon, {"manifest.json": manifest, "c.json": config})


@pytest.mark.parametrize("index", [b"[]", b'{"manifests": 5}', b'{"manifests": [5]}',
                                   b'{"manifests": [{"digest": 5}]}', b'{"manifests": [{"digest": "../../x"}]}',
                                   b'{"manifests": [{"digest": "sha256:' + b"0" * 64 + b'", "annotations": 5}]}',
                                   b'{"manifests": [{"digest": "sha256:' + b"0" * 64 + b'", "platform": "x"}]}'])
def test_wrong_json_types_in_a_loaded_oci_index_are_4xx(daemon: Daemon, index: bytes) -> None:
    _load_is_refused(daemon, {"index.json": index, "oci-layout": b'{"imageLayoutVersion": "1.0.0"}'})


def test_a_broken_body_the_handler_did_not_read_still_gets_the_answer(daemon: Daemon) -> None:
    head = b"POST /v1.47/containers/no-such-container-here/start HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = exchange(daemon, head + b"zz\r\nnot a chunk\r\n")
    assert status_of(answer) == 404, answer
    assert b"No such container" in answer

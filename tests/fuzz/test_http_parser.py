"""Property-based fuzzing of the API server's HTTP/1.1 request parser (request line, headers, Content-Length and
chunked bodies, query strings, JSON bodies and ``filters``): whatever bytes arrive, the server answers with a
well-formed status line and never a 5xx, or closes only because the client stopped sending mid-request."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machines.runtime.api.routing import filters_arg
from machines.runtime.api.server import App, Connection, Request, Response, Router, json_response

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

ROUTER = Router()


@ROUTER.add("GET", "/query", "every query helper")
def _query(context: Any, request: Request) -> Response:
    return json_response({"n": request.integer("n", 0), "flag": request.flag("flag"),
                          "filters": dict(filters_arg(request).items())})


@ROUTER.add("POST", "/json", "a JSON object body")
def _json(context: Any, request: Request) -> Response:
    return json_response(sorted(request.json_object(required=False)))


@ROUTER.add("POST", "/raw", "a streamed body")
def _raw(context: Any, request: Request) -> Response:
    return json_response(len(request.body.read()))


APP = App(ROUTER, None)


def _exchange(data: bytes) -> bytes:
    """Serve one connection on a socket pair: send ``data``, half-close, return everything answered."""
    client, server = socket.socketpair()
    crashes: list[BaseException] = []

    def serve() -> None:
        try:
            Connection(server, APP).serve()
        except BaseException as exc:  # noqa: B036 - any escape is the finding
            crashes.append(exc)

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    client.settimeout(20)
    try:
        client.sendall(data)
    except OSError:
        pass  # refused and closed before reading it all
    try:
        client.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    chunks = []
    try:
        while True:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    client.close()
    worker.join(20)
    assert not worker.is_alive(), "the connection thread did not finish"
    assert not crashes, f"the connection thread crashed on {data[:200]!r}: {crashes[0]!r}"
    return b"".join(chunks)


def _statuses(answer: bytes) -> list:
    statuses = []
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            statuses.append(int(line.split(b" ")[1]))
    return statuses


def _check(answer: bytes) -> None:
    if answer:
        assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    assert all(status < 500 for status in _statuses(answer)), answer[:500]


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_get_a_5xx(data: bytes) -> None:
    _check(_exchange(data))


TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters=":"), min_size=1,
                max_size=20)
HEADER_VALUE = st.one_of(st.text(max_size=40), st.sampled_from(["chunked", "100-continue", "close", "keep-alive",
                                                                 "0", "5", "\u0661\u0662", "-1", "0x10", " 7 "]))
HEADER = st.tuples(st.one_of(TOKEN, st.sampled_from(["Content-Length", "Transfer-Encoding", "Expect",
                                                     "Connection", "Host"])), HEADER_VALUE)
QUERY = st.one_of(st.text(max_size=60), st.sampled_from([
    "n=\u0661", "n=1_0", "n=99999999999999999999", "flag=no", "filters=%7B%22a%22%3A%7B%22b%22%3Atrue%7D%7D",
    "filters=" + "%5B" * 3000, "filters=%7B%22a%22%3A5%7D", "filters=%ZZ"]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "G\u00c9T", ""]))
    path = draw(st.sampled_from(["/query", "/json", "/raw", "/v1.47/json", "/v9.99/raw", "/v0.1/query", "*", "/x"]))
    target = path + ("?" + draw(QUERY) if draw(st.booleans()) else "")
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1"]))
    headers = draw(st.lists(HEADER, max_size=6))
    body = draw(st.one_of(st.binary(max_size=300), st.sampled_from([
        b"{}", b'{"a": 1}', b"[" * 5000, b'{"a":' * 3000, b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n", b"fffffffffffffffff\r\nx\r\n"])))
    if draw(st.booleans()):
        headers.append(("Content-Length", str(len(body))))
    head = f"{method} {target} {version}\r\n" + "".join("{}: {}\r\n".format(*h) for h in headers) + "\r\n"
    return head.encode("utf-8", "surrogatepass") + body


@FUZZ
@given(requests())
def test_structured_requests_never_get_a_5xx(data: bytes) -> None:
    _check(_exchange(data))


@FUZZ
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                   max_size=4), max_leaves=20))
def test_any_json_as_filters_is_parsed_or_refused(value: Any) -> None:
    from urllib.parse import quote

    answer = _exchange(b"GET /query?filters=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                       % quote(json.dumps(value)).encode())
    assert _statuses(answer) and _statuses(answer)[0] in (200, 400), answer[:300]

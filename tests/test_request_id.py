"""X-Request-Id: acceptance, rejection of hostile values, trust policy, traceparent, context lifetime."""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import requests
from helpers import LogCapture, call_wsgi, make_environ, wrap

from softfactory_obs import (
    ObservabilityMiddleware,
    add_request_id,
    current_request_id,
    current_trace_id,
    outgoing_headers,
)
from softfactory_obs.request_id import new_request_id, parse_traceparent

TEXT = [("Content-Type", "text/plain")]
HEX32 = re.compile(r"[0-9a-f]{32}")


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    logging.getLogger("app.handler").info("inside the handler")
    start_response("200 OK", TEXT)
    return [str(environ["softfactory_obs.request_id"]).encode()]


def test_generated_ids_are_uuid4_hex_and_unique() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in list(ids)[:200]:
        assert HEX32.fullmatch(rid)
        assert uuid.UUID(rid).version == 4 and uuid.UUID(rid).variant == uuid.RFC_4122


def test_ids_from_one_batch_stay_unique_across_threads_and_batches() -> None:
    # 8 threads drawing 4,000 ids cross several batch refills at once.
    drawn: list[list[str]] = [[] for _ in range(8)]
    threads = [
        threading.Thread(target=lambda out=out: out.extend(new_request_id() for _ in range(500))) for out in drawn
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [rid for out in drawn for rid in out]
    assert len(set(ids)) == len(ids) == 4000


def test_a_forked_worker_never_repeats_its_parents_next_ids() -> None:
    new_request_id()  # the parent is in the middle of a batch when it forks
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, "".join(new_request_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    text = os.read(read_end, 1 << 16).decode()
    os.close(read_end)
    child = {text[i : i + 32] for i in range(0, len(text), 32)}
    parent = {new_request_id() for _ in range(100)}
    assert len(child) == 100 and not child & parent


@pytest.mark.parametrize(
    "incoming",
    [
        pytest.param(str(uuid.uuid4()), id="uuid-dashed"),
        pytest.param(uuid.uuid4().hex, id="uuid-hex-nginx"),
        pytest.param("4bf92f3577b34da6a3ce929d0e0e4736", id="w3c-trace-id"),
        pytest.param("a", id="one-char"),
        pytest.param("x" * 128, id="128-chars"),
        pytest.param("svc.a:b_c-9", id="all-safe-punctuation"),
    ],
)
def test_safe_incoming_id_is_used_and_echoed(logs: LogCapture, incoming: str) -> None:
    resp = call_wsgi(wrap(hello), make_environ(HTTP_X_REQUEST_ID=incoming))
    assert resp.header("X-Request-Id") == [incoming]
    assert resp.body == incoming.encode()
    assert [r["request_id"] for r in logs.lines()] == [incoming, incoming]
    assert "request_id_rejected" not in logs.access()[0]


HOSTILE = [
    pytest.param("abc\r\nSet-Cookie: x=1", id="crlf-splitting"),
    pytest.param("abc\r\n Set-Cookie: x=1", id="obs-fold"),
    pytest.param("abc\x00def", id="nul"),
    pytest.param("has space", id="space"),
    pytest.param('q"uote', id="quote"),
    pytest.param("caf\xc3\xa9", id="non-ascii-utf8-as-latin1"),
    pytest.param("\x1b[31mred", id="ansi-escape"),
    pytest.param("abc\x85def", id="nel"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("y" * 10_000, id="10kB"),
    pytest.param("\n" + "a" * 31, id="uuid-parseable-with-newline"),
    pytest.param("a,b", id="two-headers-joined"),
]


@pytest.mark.parametrize("incoming", HOSTILE)
def test_hostile_id_is_replaced_and_never_echoed_or_logged(logs: LogCapture, incoming: str) -> None:
    resp = call_wsgi(wrap(hello), make_environ(HTTP_X_REQUEST_ID=incoming))
    [echoed] = resp.header("X-Request-Id")
    assert HEX32.fullmatch(echoed)
    access = logs.access()[0]
    assert access["request_id"] == echoed
    assert access["request_id_rejected"] is True
    raw = logs.raw()
    assert incoming not in raw and incoming.encode("unicode_escape").decode() not in raw
    assert "Set-Cookie" not in raw and "\\r" not in raw


def test_whitespace_only_id_counts_as_absent(logs: LogCapture) -> None:
    call_wsgi(wrap(hello), make_environ(HTTP_X_REQUEST_ID="   "))
    [line] = logs.access()
    assert HEX32.fullmatch(line["request_id"])  # the control: an id of ours replaced it
    assert "request_id_rejected" not in line


def test_custom_header_name(logs: LogCapture) -> None:
    resp = call_wsgi(
        wrap(hello, request_id_header="X-Correlation-Id"),
        make_environ(HTTP_X_CORRELATION_ID="corr-1", HTTP_X_REQUEST_ID="other"),
    )
    assert resp.header("X-Correlation-Id") == ["corr-1"]
    assert resp.header("X-Request-Id") == []


@pytest.mark.parametrize(
    ("policy", "proxies", "remote", "accepted"),
    [
        ("always", (), "203.0.113.9", True),
        ("never", (), "127.0.0.1", False),
        ("trusted_proxies", ("10.0.0.0/8", "::1/128"), "10.1.2.3", True),
        ("trusted_proxies", ("10.0.0.0/8", "::1/128"), "::1", True),
        ("trusted_proxies", ("10.0.0.0/8",), "203.0.113.9", False),
        ("trusted_proxies", ("10.0.0.0/8",), "not-an-ip", False),
    ],
)
def test_trust_policy(logs: LogCapture, policy: str, proxies: tuple[str, ...], remote: str, accepted: bool) -> None:
    resp = call_wsgi(
        wrap(hello, trust_request_id=policy, trusted_proxies=proxies),
        make_environ(HTTP_X_REQUEST_ID="client-id", REMOTE_ADDR=remote),
    )
    assert (resp.header("X-Request-Id") == ["client-id"]) is accepted
    assert "request_id_rejected" not in logs.access()[0]  # untrusted is ignored, not an attack


@pytest.mark.parametrize(
    ("header", "trace_id"),
    [
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-future", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_traceparent(header: str, trace_id: str | None) -> None:
    assert parse_traceparent(header) == trace_id


def test_trace_id_reaches_access_line_and_app_records(logs: LogCapture) -> None:
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(current_trace_id())
        return hello(environ, start_response)

    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    call_wsgi(wrap(app), make_environ(HTTP_TRACEPARENT=tp))
    assert seen == ["4bf92f3577b34da6a3ce929d0e0e4736"]
    assert {r["trace_id"] for r in logs.lines()} == {"4bf92f3577b34da6a3ce929d0e0e4736"}


@pytest.mark.parametrize("status", ["200 OK", "404 Not Found", "503 Service Unavailable"])
def test_id_echoed_on_every_status(logs: LogCapture, status: str) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response(status, TEXT)
        return [b""]

    resp = call_wsgi(wrap(app))
    assert resp.header("X-Request-Id") == [logs.access()[0]["request_id"]]


def test_context_lives_through_streaming_and_is_reset_after(logs: LogCapture) -> None:
    seen: list[str | None] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        for _ in range(3):
            seen.append(current_request_id())
            logging.getLogger("app.stream").info("chunk")
            yield b"x"

    assert current_request_id() is None
    call_wsgi(wrap(app), make_environ(HTTP_X_REQUEST_ID="stream-1"))
    assert seen == ["stream-1"] * 3
    assert [r["request_id"] for r in logs.lines()] == ["stream-1"] * 4
    assert current_request_id() is None


def test_failed_request_does_not_leak_its_id_into_the_next(logs: LogCapture) -> None:
    def failing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("A fails")

    call_wsgi(wrap(failing), make_environ(HTTP_X_REQUEST_ID="request-a"))
    assert current_request_id() is None
    logging.getLogger("between").info("no request in flight")
    call_wsgi(wrap(hello), make_environ(HTTP_X_REQUEST_ID="request-b"))
    by_logger = [(r["logger"], r.get("request_id")) for r in logs.lines()]
    assert ("between", None) in by_logger
    assert ("app.handler", "request-b") in by_logger


def test_concurrent_threads_keep_their_own_ids(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(hello, auto_configure_logging=False)
    barrier = threading.Barrier(8)
    mismatches: list[tuple[str, bytes]] = []

    def worker(n: int) -> None:
        for i in range(50):
            rid = f"t{n}-{i}"
            if i == 0:
                barrier.wait()
            resp = call_wsgi(mw, make_environ(HTTP_X_REQUEST_ID=rid))
            if resp.body != rid.encode():
                mismatches.append((rid, resp.body))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []
    handler_lines = [r for r in logs.lines() if r["logger"] == "app.handler"]
    assert len(handler_lines) == 400
    assert len({r["request_id"] for r in handler_lines}) == 400


class Downstream:
    """A real HTTP service on loopback that records the X-Request-Id of each request it gets."""

    def __init__(self) -> None:
        seen: list[str | None] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("X-Request-Id"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Downstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_the_id_travels_to_the_services_a_request_calls() -> None:
    custom: list[dict[str, str]] = []
    with Downstream() as downstream:

        def calls_out(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            custom.append(outgoing_headers("X-Correlation-Id"))
            requests.get(downstream.url, headers=outgoing_headers(), timeout=5)
            with httpx.Client(event_hooks={"request": [add_request_id]}) as client:
                client.get(downstream.url)
                client.get(downstream.url, headers={"x-request-id": "the-callers-own"})  # left as set
            request = urllib.request.Request(downstream.url)
            add_request_id(request)
            urllib.request.urlopen(request, timeout=5).close()
            start_response("200 OK", TEXT)
            return [b"ok"]

        app = wrap(calls_out)
        first = dict(call_wsgi(app, make_environ()).headers)["X-Request-Id"]
        second = dict(call_wsgi(app, make_environ(HTTP_X_REQUEST_ID="from-the-edge-1")).headers)["X-Request-Id"]
        assert second == "from-the-edge-1"
        assert custom == [{"X-Correlation-Id": first}, {"X-Correlation-Id": second}]
        assert downstream.seen == [first, first, "the-callers-own", first, second, second, "the-callers-own", second]
        assert outgoing_headers() == {}  # outside a request: nothing to send
        with httpx.Client(event_hooks={"request": [add_request_id]}) as client:
            client.get(downstream.url)
        assert downstream.seen[-1] is None

"""What a request's own text may never carry into the telemetry: secrets, userinfo, control bytes."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from helpers import LogCapture, call_wsgi, make_environ, samples

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.store.metrics import Registry


def ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def endpoints(registry: Registry) -> set[str]:
    return {
        dict(labels)["endpoint"] for (name, labels), _ in samples(registry).items() if name == "http_requests_total"
    }


def test_more_secret_names_and_semicolon_separated_pairs_are_redacted(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False, metrics=False)
    query = "page=2;password=hunter2&jwt=eyJhbGciOi.x.y;otp=123456&passphrase=open%20sesame&q=shoes"
    call_wsgi(mw, make_environ(PATH_INFO="/search", QUERY_STRING=query))
    [line] = logs.access()
    assert line["path"] == (
        "/search?page=2;password=[REDACTED]&jwt=[REDACTED];otp=[REDACTED]&passphrase=[REDACTED]&q=shoes"
    )
    for secret in ("hunter2", "eyJhbGciOi", "123456", "sesame"):
        assert secret not in logs.raw()


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # wsgiref's own stderr line is not ours to test
        pass


@pytest.fixture
def wsgiref_server() -> Iterator[tuple[int, Registry]]:
    """A real wsgiref server (it passes an absolute-form request target through as the path)."""
    registry = Registry()
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False, registry=registry)
    server = make_server("127.0.0.1", 0, mw, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_port, registry
    finally:
        server.shutdown()
        server.server_close()


def _raw_get(port: int, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: shop.example\r\n\r\n".encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_the_userinfo_of_an_absolute_form_target_never_shows(
    wsgiref_server: tuple[int, Registry], logs: LogCapture
) -> None:
    port, registry = wsgiref_server
    assert _raw_get(port, "http://alice:SECRET@shop.example/orders/7").startswith(b"HTTP/1.0 200")
    [line] = logs.access()
    assert line["path"] == "http://shop.example/orders/7"  # the control: the rest of the target is kept
    assert endpoints(registry) == {"http://shop.example/orders/{id}"}
    assert "SECRET" not in logs.raw() and "alice" not in logs.raw()


def test_control_bytes_in_a_path_never_reach_a_label(registry: Registry) -> None:
    mw = ObservabilityMiddleware(ok, auto_configure_logging=False, registry=registry)
    # As a server hands them over: NUL, ESC, CR, TAB, DEL, and U+2028 as the latin-1 of its UTF-8.
    hostile = "/files/a\x00b/\x1b[31mred/c\rd\te\x7f/line\xe2\x80\xa8sep"
    assert call_wsgi(mw, make_environ(PATH_INFO=hostile)).body == b"ok"
    (endpoint,) = endpoints(registry)
    assert endpoint == "/files/a\ufffdb/\ufffd[31mred/c\ufffdd\ufffde\ufffd/line\ufffdsep"
    for accept in ("text/plain", "application/openmetrics-text"):
        body = call_wsgi(mw, make_environ(PATH_INFO="/metrics", HTTP_ACCEPT=accept)).body.decode()
        assert "/files/a\ufffdb/" in body  # the control: the series is exposed
        assert not any(c in body for c in "\x00\x1b\r\t\x7f\u2028")


@pytest.fixture
def registry() -> Registry:
    return Registry()

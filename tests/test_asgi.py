"""The ASGI front, driven in-process by a strict fake server (message order, more_body,
http.disconnect, a send that fails): the same record, recorders and telemetry as under WSGI."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest
from helpers import AsgiResponse, LogCapture, call_asgi, samples
from starlette.requests import ClientDisconnect

from softfactory_obs import instrument, instrument_asgi
from softfactory_obs.store.metrics import Registry


@pytest.fixture
def shop(tmp_path: Path, logs: LogCapture) -> Any:
    import asgi_app  # noqa: PLC0415 - imported once the log capture is in place

    registry = Registry(str(tmp_path / "store"))
    return instrument_asgi(asgi_app.starlette_app, registry=registry, service_name="asgi-shop")


def run(app: Any, path: str, **kwargs: Any) -> AsgiResponse:
    return asyncio.run(call_asgi(app, path, **kwargs))


def _requests(app: Any) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["endpoint"], dict(labels)["status"]): value
        for (name, labels), value in samples(app.registry).items()
        if name == "http_requests_total"
    }


def test_route_templates_ids_and_access_lines(shop: Any, logs: LogCapture) -> None:
    responses = [run(shop, p) for p in ("/users/7", "/users/8", "/api/items/3", "/nowhere", "/users/x")]
    assert [r.status for r in responses] == [200, 200, 200, 404, 404]
    ids = [r.header("X-Request-Id") for r in responses]
    assert all(len(i) == 1 and len(i[0]) == 32 for i in ids) and len({i[0] for i in ids}) == 5
    assert json.loads(responses[0].body)["id"] == ids[0][0]  # the app saw the same id in its context
    assert _requests(shop) == {
        ("/users/{user_id}", "200"): 2,
        ("/api/items/{item_id}", "200"): 1,
        ("__unmatched__", "404"): 2,  # a scanner's paths never become endpoints
    }
    access = logs.access()
    assert [(x["path"], x["endpoint"], x["status"]) for x in access] == [
        ("/users/7", "/users/{user_id}", 200),
        ("/users/8", "/users/{user_id}", 200),
        ("/api/items/3", "/api/items/{item_id}", 200),
        ("/nowhere", "__unmatched__", 404),
        ("/users/x", "__unmatched__", 404),
    ]
    assert [x["request_id"] for x in access] == [i[0] for i in ids]
    looked_up = [x for x in logs.lines() if x["message"] == "user looked up"]
    assert [x["request_id"] for x in looked_up] == [ids[0][0], ids[1][0]]  # the app's own lines


def test_incoming_id_is_echoed_and_the_apps_own_header_replaced(shop: Any) -> None:
    sent = run(shop, "/users/1", headers=(("X-Request-Id", "abc-123"),))
    assert sent.header("X-Request-Id") == ["abc-123"]
    own = run(shop, "/own-id")
    assert len(own.header("X-Request-Id")) == 1 and own.header("X-Request-Id") != ["the-app-s-own"]


def test_streaming_is_timed_to_the_last_body_and_sized_by_what_was_sent(shop: Any, logs: LogCapture) -> None:
    response = run(shop, "/stream?chunks=5")
    assert response.body == b"".join(f"chunk {i}\n".encode() for i in range(5))
    more = [m.get("more_body", False) for m in response.messages if m["type"] == "http.response.body"]
    assert more[-1] is False and any(more)  # really streamed
    line = logs.access()[-1]
    assert line["content_length"] == len(response.body)
    assert line["latency_ms"] >= 5 * 20 * 0.9  # five 20 ms chunks: the stream, not the first byte


def test_a_client_gone_mid_stream_is_counted_once_with_what_was_sent(shop: Any, logs: LogCapture) -> None:
    with pytest.raises(ClientDisconnect):  # Starlette's word for the server's OSError
        run(shop, "/stream?chunks=5", fail_send_after=2)
    assert _requests(shop) == {("/stream", "200"): 1}
    (line,) = logs.access()
    assert line["content_length"] == len(b"chunk 0\nchunk 1\n")
    assert "error_type" not in line  # the client left; the app did nothing wrong


def test_sizes_are_what_was_sent_or_declared_when_no_body_went_through_send(tmp_path: Path) -> None:
    served = tmp_path / "file.bin"
    served.write_bytes(b"x" * 1234)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        length = b"1234" if scope["path"] != "/short" else b"10"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
        if scope["method"] == "HEAD":
            await send({"type": "http.response.body", "body": b""})
        elif scope["path"] == "/file":
            await send({"type": "http.response.pathsend", "path": str(served)})
        else:  # declares 10, sends 3: the server would cut the connection; 3 went out
            await send({"type": "http.response.body", "body": b"abc"})

    wrapped = instrument_asgi(app, registry=Registry(str(tmp_path / "store")), routes=["/file", "/short"])
    assert run(wrapped, "/file", method="HEAD").body == b""
    assert run(wrapped, "/file", pathsend=True).body == served.read_bytes()
    assert run(wrapped, "/short").body == b"abc"
    sizes = {
        (dict(labels)["method"], dict(labels)["endpoint"]): value
        for (name, labels), value in samples(wrapped.registry).items()
        if name == "http_response_size_bytes_sum"
    }
    assert sizes == {("HEAD", "/file"): 1234, ("GET", "/file"): 1234, ("GET", "/short"): 3}


def test_an_exception_is_counted_by_type_and_the_500_carries_the_id(shop: Any, logs: LogCapture) -> None:
    # Starlette's ServerErrorMiddleware answers 500 itself, then re-raises for the server.
    with pytest.raises(ValueError, match="deliberate"):
        run(shop, "/boom")
    exceptions = {
        dict(labels)["exception"]: v
        for (name, labels), v in samples(shop.registry).items()
        if name == "http_request_exceptions_total"
    }
    assert exceptions == {"ValueError": 1}
    assert _requests(shop) == {("/boom", "500"): 1}
    assert logs.access()[-1]["error_type"] == "ValueError"


def test_an_exception_before_the_response_gets_our_json_500(tmp_path: Path, logs: LogCapture) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("nothing sent yet")

    app = instrument_asgi(bare, registry=Registry(str(tmp_path / "s")))
    response = run(app, "/x")
    assert response.status == 500
    body = json.loads(response.body)
    assert body["request_id"] == response.header("X-Request-Id")[0]
    assert [x["status"] for x in logs.access()] == [500]


def _in_progress(app: Any) -> float:
    return sum(v for (name, _), v in samples(app.registry).items() if name == "http_requests_in_progress")


def test_a_server_cancelling_our_500_still_ends_the_request_once(tmp_path: Path, logs: LogCapture) -> None:
    # The app fails before answering; while our 500 goes out the server cancels the task (it is
    # shutting down). The request must still end: in progress back to 0, its line, its count.
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise KeyError("nothing sent yet")

    async def cancelling_send(message: dict[str, Any]) -> None:
        raise asyncio.CancelledError

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    app = instrument_asgi(bare, registry=Registry(str(tmp_path / "s")))
    scope = {"type": "http", "method": "GET", "path": "/x", "root_path": "", "query_string": b"", "headers": []}
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(app(scope, receive, cancelling_send))
    assert _in_progress(app) == 0
    assert [x["status"] for x in logs.access()] == [500]  # positive control: the request was seen
    assert _requests(app) == {("/x", "500"): 1}


def test_a_start_with_unreadable_headers_gets_our_500_counted_once(tmp_path: Path, logs: LogCapture) -> None:
    # Headers that are not (name, value) pairs fail in our send before the status is final: the
    # app's start never went out, so the client gets our 500, counted once (not 200 and 500).
    async def bad_headers(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-only-a-name",)]})
        await send({"type": "http.response.body", "body": b"never"})

    app = instrument_asgi(bad_headers, registry=Registry(str(tmp_path / "s")))
    response = run(app, "/x")
    assert response.status == 500
    assert json.loads(response.body)["request_id"] == response.header("X-Request-Id")[0]
    assert _requests(app) == {("/x", "500"): 1}
    assert _in_progress(app) == 0
    assert [x["status"] for x in logs.access()] == [500]


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/x", (), ("", None, "127.0.0.1", None)),
        ("/x?q=1", (("User-Agent", "probe/1.0"),), ("q=1", "probe/1.0", "127.0.0.1", None)),
        # The query as the UTF-8 it is; a header's byte that is not UTF-8 (latin-1 "é") replaced.
        ("/x?q=caf\u00e9", (("User-Agent", "caf\u00e9/1"),), ("q=caf\u00e9", "caf\ufffd/1", "127.0.0.1", None)),
    ],
)
def test_access_details_are_the_four_methods_in_one_call(
    tmp_path: Path, path: str, headers: tuple[tuple[str, str], ...], expected: tuple[Any, ...]
) -> None:
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    seen: list[tuple[Any, Any]] = []
    app = instrument_asgi(ok, registry=Registry(str(tmp_path / "s")), access_log=False)
    app.add_finish_hook(
        lambda r: seen.append(
            (r.access_details(), (r.query_string(), r.user_agent(), r.remote_address(), r.remote_user()))
        )
    )
    run(app, path, headers=headers)
    ((details, methods),) = seen
    assert details == methods == expected


def test_telemetry_routes_are_served_and_never_counted(shop: Any) -> None:
    run(shop, "/users/1")
    for path in ("/metrics", "/live", "/ready", "/health"):
        response = run(shop, path)
        assert response.status == 200, (path, response.body)
        assert response.header("X-Request-Id")
    text = run(shop, "/metrics").body.decode()
    assert 'http_requests_total{endpoint="/users/{user_id}",method="GET",status="200"} 1.0' in text
    assert 'endpoint="/metrics"' not in text
    assert json.loads(run(shop, "/health").body)["status"] == "healthy"


def test_lifespan_and_websocket_scopes_pass_through(shop: Any) -> None:
    import asgi_app  # noqa: PLC0415

    events: list[dict[str, Any]] = []
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def drive() -> None:
        async def receive() -> dict[str, Any]:
            return incoming.pop(0)

        async def send(message: dict[str, Any]) -> None:
            events.append(message)

        await shop({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    before = len(asgi_app.LIFESPAN)
    asyncio.run(drive())
    assert [e["type"] for e in events] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert asgi_app.LIFESPAN[before:] == ["startup", "shutdown"]


def _websocket(
    app: Any,
    path: str,
    incoming: list[dict[str, Any]],
    headers: tuple[tuple[bytes, bytes], ...] = (),
    spec_version: str = "2.4",
) -> list[dict[str, Any]]:
    """Drive one ``websocket`` scope as a strict server would: the connect first, then
    ``incoming`` once the app accepted, then a disconnect; what the app sent, in order (checked:
    nothing before the handshake is decided but an accept, a close or a denial response, and
    nothing after a close)."""
    path_only, _, query = path.partition("?")
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "path": path_only,
        "raw_path": path_only.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"shop"), *headers],
        "client": ("127.0.0.1", 50001),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
    }
    sent: list[dict[str, Any]] = []
    pending = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        kinds = [m["type"] for m in sent]
        assert "websocket.close" not in kinds, f"{message} after a close"
        if not kinds:
            assert message["type"] in ("websocket.accept", "websocket.close", "websocket.http.response.start")
        if message["type"] == "websocket.accept":
            pending.extend(incoming)
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _websocket_samples(app: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: v for key, v in samples(app.registry).items() if key[0].startswith("websocket_")}


def test_a_websocket_is_counted_by_route_and_carries_the_request_id(shop: Any) -> None:
    text = {"type": "websocket.receive", "text": "hi"}
    sent = _websocket(
        shop, "/ws/lobby", [text, {"type": "websocket.receive", "text": "bye"}], ((b"x-request-id", b"ws-1"),)
    )
    accept, echo, close = sent
    assert accept["type"] == "websocket.accept" and (b"x-request-id", b"ws-1") in accept["headers"]
    assert (echo["type"], echo["text"]) == ("websocket.send", "lobby hi ws-1")  # the id in the app's context
    assert close["type"] == "websocket.close"
    got = _websocket_samples(shop)
    endpoint = ("endpoint", "/ws/{room}")
    assert got[("websocket_connections_total", (endpoint, ("outcome", "accepted")))] == 1
    assert got[("websocket_connections_open", (endpoint,))] == 0
    assert got[("websocket_connection_duration_seconds_count", (endpoint,))] == 1
    assert _requests(shop) == {}  # a websocket is not an HTTP request


def test_a_websocket_accept_gets_no_headers_from_a_server_older_than_spec_2_1(shop: Any) -> None:
    old = _websocket(shop, "/ws/lobby", [{"type": "websocket.receive", "text": "bye"}], spec_version="2.0")
    new = _websocket(shop, "/ws/lobby", [{"type": "websocket.receive", "text": "bye"}], spec_version="2.1")
    assert not old[0].get("headers")  # Starlette's own accept: no headers
    assert [name for name, _ in new[0]["headers"]] == [b"x-request-id"]
    accepted = ("websocket_connections_total", (("endpoint", "/ws/{room}"), ("outcome", "accepted")))
    assert _websocket_samples(shop)[accepted] == 2  # counted alike


def test_a_websocket_left_by_its_client_ends_once(shop: Any) -> None:
    sent = _websocket(shop, "/ws/lobby", [{"type": "websocket.receive", "text": "hi"}])  # then a disconnect
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send"]
    got = _websocket_samples(shop)
    endpoint = ("endpoint", "/ws/{room}")
    assert got[("websocket_connection_duration_seconds_count", (endpoint,))] == 1
    assert got[("websocket_connections_open", (endpoint,))] == 0


def test_websockets_denied_or_failed_before_the_handshake_are_counted_so(shop: Any) -> None:
    sent = _websocket(shop, "/ws/lobby?deny=1", [])
    assert [m["type"] for m in sent] == ["websocket.close"]
    with pytest.raises(RuntimeError, match="deliberate"):
        _websocket(shop, "/ws/lobby?fail=1", [])
    got = _websocket_samples(shop)
    endpoint = ("endpoint", "/ws/{room}")
    assert got[("websocket_connections_total", (endpoint, ("outcome", "denied")))] == 1
    assert got[("websocket_connections_total", (endpoint, ("outcome", "failed")))] == 1
    assert ("websocket_connections_total", (endpoint, ("outcome", "accepted"))) not in got
    assert got.get(("websocket_connection_duration_seconds_count", (endpoint,)), 0) == 0


def test_a_websocket_is_in_the_open_gauge_until_it_ends(tmp_path: Path) -> None:
    seen: list[float] = []

    def open_now() -> float:
        return sum(v for (name, _), v in samples(wrapped.registry).items() if name == "websocket_connections_open")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        seen.append(open_now())
        await send({"type": "websocket.accept"})
        seen.append(open_now())
        await send({"type": "websocket.close", "code": 1000})
        seen.append(open_now())

    # A bare app: the endpoint comes from the routes setting, as for its HTTP requests.
    wrapped = instrument_asgi(app, registry=Registry(str(tmp_path / "s")), routes=["/ws/{room}"])
    _websocket(wrapped, "/ws/a", [])
    assert seen == [0, 1, 0]
    assert (
        _websocket_samples(wrapped)[
            ("websocket_connections_total", (("endpoint", "/ws/{room}"), ("outcome", "accepted")))
        ]
        == 1
    )


def test_a_failing_websocket_recorder_changes_nothing_of_the_connection(
    shop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from softfactory_obs._failures import failure_counts  # noqa: PLC0415

    def broken(*_: Any) -> None:
        raise OSError("store gone")

    monkeypatch.setattr(shop.websockets, "decided", broken)
    monkeypatch.setattr(shop.websockets, "ended", broken)
    sent = _websocket(shop, "/ws/lobby", [{"type": "websocket.receive", "text": "bye"}])
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    assert failure_counts().get("websocket metrics") == 2


def test_instrument_refuses_an_asgi_app_and_names_instrument_asgi() -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        return None

    class App:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            return None

    for app in (bare, App()):
        with pytest.raises(TypeError, match=r"instrument_asgi\(app\)"):
            instrument(app)
    with pytest.raises(TypeError, match="expected an ASGI 3 application"):
        instrument_asgi(lambda environ, start_response: [])


def test_django_asgi_names_its_routes_and_counts_its_handled_exceptions(tmp_path: Path, logs: LogCapture) -> None:
    import test_frameworks  # noqa: PLC0415 - its Django settings, with the adapter first in MIDDLEWARE

    test_frameworks.test_django()
    from django.core.asgi import get_asgi_application  # noqa: PLC0415

    app = instrument_asgi(get_asgi_application(), registry=Registry(str(tmp_path / "store")))
    assert [run(app, p).status for p in ("/users/7", "/archive/2024/", "/boom", "/nope")] == [200, 200, 500, 404]
    assert _requests(app) == {
        ("/users/{user_id}", "200"): 1,
        ("/archive/{year}/", "200"): 1,
        ("/boom", "500"): 1,
        ("__unmatched__", "404"): 1,
    }
    assert [x.get("error_type", "-") for x in logs.access()] == ["-", "-", "ValueError", "-"]


def test_quart_names_its_routes_and_counts_its_handled_exceptions(tmp_path: Path, logs: LogCapture) -> None:
    from quart import Quart  # noqa: PLC0415

    from softfactory_obs.contrib.quart import init_app  # noqa: PLC0415

    quart_app = Quart("shop")

    @quart_app.get("/users/<int:user_id>")
    async def user(user_id: int) -> dict[str, int]:
        return {"user": user_id}

    @quart_app.post("/orders")
    async def order() -> str:
        return "ordered"

    @quart_app.get("/boom")
    async def boom() -> str:
        raise ValueError("deliberate")

    init_app(quart_app)
    quart_app.asgi_app = instrument_asgi(  # type: ignore[method-assign]
        quart_app.asgi_app, registry=Registry(str(tmp_path / "store"))
    )
    paths = [("/users/7", "GET"), ("/users/8", "GET"), ("/orders", "GET"), ("/boom", "GET"), ("/nope", "GET")]
    statuses = [run(quart_app, p, method=m).status for p, m in paths]
    assert statuses == [200, 200, 405, 500, 404]
    assert _requests(quart_app.asgi_app) == {
        ("/users/{user_id}", "200"): 2,
        ("/orders", "405"): 1,  # the route it did not allow
        ("/boom", "500"): 1,
        ("__unmatched__", "404"): 1,
    }
    # Quart turned the ValueError into its own 500: counted by type, named on the access line.
    assert [x.get("error_type", "-") for x in logs.access()] == ["-", "-", "-", "ValueError", "-"]
    exceptions = {
        dict(labels)["exception"]: value
        for (name, labels), value in samples(quart_app.asgi_app.registry).items()
        if name == "http_request_exceptions_total"
    }
    assert exceptions == {"ValueError": 1}


def test_fastapi_routes_are_templates(tmp_path: Path) -> None:
    from fastapi import FastAPI  # noqa: PLC0415

    api = FastAPI()

    @api.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @api.get("/files/{file_path:path}")
    async def read_file(file_path: str) -> dict[str, str]:
        return {"file_path": file_path}

    app = instrument_asgi(api, registry=Registry(str(tmp_path / "store")))
    statuses = [run(app, p).status for p in ("/items/1", "/items/2", "/files/a/b/c", "/items/x", "/missing")]
    assert statuses == [200, 200, 200, 422, 404]
    assert _requests(app) == {
        ("/items/{item_id}", "200"): 2,
        ("/items/{item_id}", "422"): 1,  # the route matched; its parameter did not validate
        ("/files/{file_path}", "200"): 1,
        ("__unmatched__", "404"): 1,
    }


def test_async_health_checks_are_awaited_with_their_timeout(tmp_path: Path) -> None:
    async def database() -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"connections": 3}

    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the probes never reach the app")

    app = instrument_asgi(bare, registry=Registry(str(tmp_path / "store")))
    app.add_health_check("database", database)
    app.add_health_check("search", hangs, critical=False, timeout=0.3)
    response = run(app, "/health")
    checks = json.loads(response.body)["checks"]
    assert response.status == 200  # degraded: only the non-critical check failed
    assert checks["database"]["status"] == "pass" and checks["database"]["details"] == {"connections": 3}
    assert checks["search"]["status"] == "fail" and "timed out" in checks["search"]["error"]
    assert run(app, "/ready").status == 200


def test_instrument_asgi_twice_returns_the_same_app_and_refuses_other_settings(tmp_path: Path) -> None:
    async def bare(scope: Any, receive: Any, send: Any) -> None:
        return None

    app = instrument_asgi(bare, registry=Registry(str(tmp_path / "store")), service_name="shop")
    assert instrument_asgi(app) is app and instrument_asgi(app, service_name="shop") is app
    with pytest.raises(ValueError, match=r"pass all options to the first instrument_asgi\(\) call"):
        instrument_asgi(app, service_name="other")


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def test_a_requests_metrics_wait_for_the_store_lock(tmp_path: Path) -> None:
    """ASGI requests interleave and may come from loops in several threads: the hooks write under
    the store's lock. Held elsewhere, a request waits for it; released, the request completes."""
    app = instrument_asgi(_hello, registry=Registry(str(tmp_path / "store")), access_log=False)
    assert run(app, "/hello").status == 200  # every series bound
    entered = threading.Event()

    async def one() -> Any:
        entered.set()
        return await call_asgi(app, "/hello")

    with ThreadPoolExecutor(1) as pool:
        with app.registry.lock:
            pending = pool.submit(asyncio.run, one())
            assert entered.wait(10)
            with pytest.raises(FutureTimeout):  # one request takes a millisecond; it waits for the lock
                pending.result(timeout=0.5)
        assert pending.result(timeout=30).status == 200
    counted = samples(app.registry)[
        ("http_requests_total", (("endpoint", "/hello"), ("method", "GET"), ("status", "200")))
    ]
    assert counted == 2


def test_event_loops_in_several_threads_count_exactly(tmp_path: Path) -> None:
    """Each hook writes its series under the store's lock, held once for all of its writes: event
    loops in several threads serving one app (test clients, a loop per thread) count exactly. A
    switch interval of a microsecond makes the threads interleave inside the hooks."""

    app = instrument_asgi(_hello, registry=Registry(str(tmp_path / "store")), access_log=False)
    per_loop, loops = 300, 4

    async def serve() -> None:
        for i in range(per_loop):
            response = await call_asgi(app, "/hello", method="POST", headers=(("Content-Length", "3"),), body=b"abc")
            assert response.status == 200, i

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(loops) as pool:
            for done in [pool.submit(asyncio.run, serve()) for _ in range(loops)]:
                done.result()
    finally:
        sys.setswitchinterval(switch)
    n = per_loop * loops
    found = samples(app.registry)
    labels = (("endpoint", "/hello"), ("method", "POST"))
    assert found[("http_requests_total", (*labels, ("status", "200")))] == n
    assert found[("http_request_duration_seconds_count", labels)] == n
    assert found[("http_response_size_bytes_sum", labels)] == 2 * n
    assert found[("http_request_size_bytes_sum", labels)] == 3 * n
    assert found[("http_requests_in_progress", (("method", "POST"),))] == 0


def test_route_templates_are_kept_per_route_object() -> None:
    # A route and a mount with the same path (two apps in one process): each keeps its own template,
    # first seen or cached.
    from starlette.routing import Mount, Route  # noqa: PLC0415

    from softfactory_obs.asgi import starlette_route  # noqa: PLC0415

    route = Route("/same/{id}", endpoint=lambda request: None)
    mount = Mount("/same/{id}", routes=[])  # a mount that answered itself (static files)
    for _ in range(2):
        assert starlette_route({"route": route}) == "/same/{id}"
        assert starlette_route({"route": mount}) == "/same/{id}/{path}"
    assert starlette_route({"router": object()}) == "__unmatched__"
    assert starlette_route({}) is None

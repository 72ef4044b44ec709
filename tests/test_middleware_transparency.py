"""Property: whatever a WSGI app does, the server sees through the middleware what it sees without it.

Hypothesis draws an app's behaviour (status and headers, body as a list, generator or closable
iterable, start_response called eagerly or on the first iteration, blocks sent through write(),
a failure before or after start_response, mid-stream or in close(), an app that recovers with
exc_info) and a server's (threaded or not, the client's request id and Content-Length, a client
gone after some blocks), and plays the request to a strict server twice: bare, and wrapped.
With ``propagate_exceptions=True`` the two transcripts must be the same event for event (status,
headers but our X-Request-Id, every block, every exception, one close); with the default, a
failure before the headers went out becomes our JSON 500 and nothing else changes. Every request
also leaves one access line whose status and size follow the transcript, one count in
``http_requests_total``, the in-progress gauge back at 0, no request id in the context, its
request size counted when the client's Content-Length is one, and no failed hook.
Run with ``max_examples=5000`` when the request path changes (about 80 s).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from helpers import LogCapture, make_environ, samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softfactory_obs import ObservabilityMiddleware, current_request_id
from softfactory_obs._failures import failure_counts
from softfactory_obs.store.metrics import Registry


class AppError(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    status: str
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    body: str  # "list", "generator" or "closable"
    lazy_start: bool  # start_response on the first iteration (generator and closable bodies only)
    written: int  # leading chunks sent through write() (eager start only)
    fail: str | None  # "before_start", "after_start", "mid", "close"
    fail_at: int  # for "mid": the block index that raises
    recover: bool  # "after_start": the app catches its error and answers again with exc_info


@dataclass(frozen=True)
class Server:
    multithread: bool  # the locked metric writes, or the single-writer ones
    incoming_id: str | None  # the client's X-Request-Id
    request_length: str | None  # the client's Content-Length
    stop_after: int | None  # the server stops reading the body after this many blocks (client gone)


def _content_length(chunks: tuple[bytes, ...]) -> st.SearchStrategy[tuple[str, str]]:
    size = sum(map(len, chunks))
    names = st.sampled_from(["Content-Length", "content-length", "CONTENT-LENGTH"])
    values = st.sampled_from([str(size), str(size + 7), "0", " 5", "5_0", "\u00b2", "9" * 19, "abc"])
    return st.tuples(names, values)


@st.composite
def plans(draw: Any) -> Plan:
    chunks = tuple(draw(st.lists(st.binary(max_size=40), max_size=5)))
    headers = [("Content-Type", "text/plain")]
    if draw(st.booleans()):
        headers.append(draw(_content_length(chunks)))
    if draw(st.booleans()):
        headers.append((draw(st.sampled_from(["X-Request-Id", "x-request-id"])), "app-made-id"))
    if draw(st.booleans()):
        headers.append(("Set-Cookie", "a=b"))
    body = draw(st.sampled_from(["list", "generator", "closable"]))
    lazy_start = body != "list" and draw(st.booleans())
    written = 0 if lazy_start else draw(st.integers(0, len(chunks)))
    fail = draw(st.sampled_from([None, None, "before_start", "after_start", "mid", "close"]))
    if fail == "mid" and body == "list":
        fail = "after_start"  # a list cannot fail while iterated
    if fail == "after_start" and lazy_start:
        fail = "mid"
    fail_at = draw(st.integers(0, len(chunks))) if fail == "mid" else 0
    status = draw(st.sampled_from(["200 OK", "201 Created", "204 No Content", "404 Not Found", "503 Busy"]))
    recover = fail == "after_start" and written == 0 and draw(st.booleans())
    return Plan(status, tuple(headers), chunks, body, lazy_start, written, fail, fail_at, recover)


servers = st.builds(
    Server,
    multithread=st.booleans(),
    incoming_id=st.sampled_from([None, "client-id-7", "bad id!", ""]),
    request_length=st.sampled_from([None, "12", "0", "abc", "\u00b2", "9" * 30]),
    stop_after=st.one_of(st.none(), st.integers(0, 3)),
)


class Closable:
    def __init__(self, blocks: Iterator[bytes], fail_on_close: bool, closes: list[str]) -> None:
        self.blocks = blocks
        self.fail_on_close = fail_on_close
        self.closes = closes

    def __iter__(self) -> Iterator[bytes]:
        return self.blocks

    def close(self) -> None:
        self.closes.append("close")
        if self.fail_on_close:
            raise AppError("close")


def app_for(plan: Plan, closes: list[str]) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if plan.fail == "before_start":
            raise AppError("before start_response")
        write = None if plan.lazy_start else start_response(plan.status, list(plan.headers))
        if plan.fail == "after_start":
            try:
                raise AppError("after start_response")
            except AppError:
                if not plan.recover:
                    raise
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
                return [b"oops"]
        for chunk in plan.chunks[: plan.written]:
            assert write is not None
            write(chunk)
        rest = plan.chunks[plan.written :]
        if plan.body == "list":
            return list(rest)

        def blocks() -> Iterator[bytes]:
            try:
                if plan.lazy_start:
                    start_response(plan.status, list(plan.headers))
                for i, chunk in enumerate(rest):
                    if plan.fail == "mid" and i == plan.fail_at:
                        raise AppError("mid-stream")
                    yield chunk
                if plan.fail == "mid" and plan.fail_at >= len(rest):
                    raise AppError("at the end")
            finally:
                if plan.body == "generator":
                    closes.append("close")

        return Closable(blocks(), plan.fail == "close", closes) if plan.body == "closable" else blocks()

    return app


def serve(app: Callable[..., Any], environ: dict[str, Any], stop_after: int | None = None) -> list[tuple[Any, ...]]:
    """A strict server's transcript: headers go out with the first byte, close() always; with
    ``stop_after``, it stops reading the body after that many blocks (the client went away)."""
    events: list[tuple[Any, ...]] = []
    state = {"started": False, "sent": False}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and state["sent"]:
            raise exc_info[1].with_traceback(exc_info[2])
        assert exc_info is not None or not state["started"], "start_response twice without exc_info"
        state["started"] = True
        events.append(("start", status, tuple(headers)))

        def write(data: bytes) -> None:
            state["sent"] = True  # headers go out with the first write(), even of b""
            events.append(("write", data))

        return write

    try:
        result = app(environ, start_response)
    except Exception as exc:
        events.append(("raised", type(exc).__name__, str(exc)))
        return events
    try:
        for taken, block in enumerate(result if stop_after != 0 else (), 1):  # 0: closed unread (client gone)
            if block:
                state["sent"] = True
            events.append(("block", block))
            if taken == stop_after:
                break
    except Exception as exc:
        events.append(("raised", type(exc).__name__, str(exc)))
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:
                events.append(("close raised", type(exc).__name__, str(exc)))
    return events


def without_request_id(events: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The transcript with X-Request-Id headers taken out, and the values taken."""
    ids: list[str] = []
    out = []
    for event in events:
        if event[0] == "start":
            ids += [v for k, v in event[2] if k.lower() == "x-request-id"]
            out.append((*event[:2], tuple(h for h in event[2] if h[0].lower() != "x-request-id")))
        else:
            out.append(event)
    return out, ids


def declared_size(headers: tuple[tuple[str, str], ...]) -> int | None:
    values = [v for k, v in headers if k.lower() == "content-length"]
    value = values[-1] if values else ""
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 11 else None


# One registry and one middleware per setting for the whole run: a middleware starts a maintenance
# thread per registry, and thousands of them would be the slowest part of the test.
REGISTRY = Registry()
_plan_app: list[Callable[..., Any]] = []


def _current_app(environ: dict[str, Any], start_response: Any) -> Any:
    return _plan_app[0](environ, start_response)


MIDDLEWARES = {
    propagate: ObservabilityMiddleware(
        _current_app, registry=REGISTRY, auto_configure_logging=False, propagate_exceptions=propagate
    )
    for propagate in (False, True)
}


def _total(name: str) -> float:
    return sum(v for (family, _), v in samples(REGISTRY).items() if family == name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=plans(), server=servers, propagate=st.booleans())
def test_the_server_sees_what_the_bare_app_sends(logs: LogCapture, plan: Plan, server: Server, propagate: bool) -> None:
    closes: list[str] = []
    _plan_app[:] = [app_for(plan, closes)]
    environ = {"wsgi.multithread": server.multithread}
    if server.incoming_id is not None:
        environ["HTTP_X_REQUEST_ID"] = server.incoming_id
    if server.request_length is not None:
        environ["CONTENT_LENGTH"] = server.request_length
    bare_closes: list[str] = []
    bare = serve(app_for(plan, bare_closes), make_environ(**environ), server.stop_after)
    offset = len(logs.stream.getvalue())
    counted = _total("http_requests_total")
    request_sizes = _total("http_request_size_bytes_count")
    ours = serve(MIDDLEWARES[propagate], make_environ(**environ), server.stop_after)
    ours_plain, ids = without_request_id(ours)
    bare_plain, _ = without_request_id(bare)
    headers_out = any(e[0] == "write" or (e[0] == "block" and e[1]) for e in bare)
    if not propagate and "raised" in [e[0] for e in bare] and not headers_out:
        # The app failed before its headers went out: ours answers a JSON 500 that carries the
        # request id where the bare app's server saw the exception.
        starts = [e for e in ours_plain if e[0] == "start"]
        assert starts[-1][1].startswith("500 ")
        body = b"".join(e[1] for e in ours_plain if e[0] == "block")
        if server.stop_after != 0:  # else the server read none of it
            assert json.loads(body)["request_id"] == ids[-1]
        assert not [e for e in ours_plain if e[0] == "raised"]
    else:
        assert ours_plain == bare_plain
    assert closes == bare_closes  # the app's iterable closed as often as without us: once, or never for a list
    started = [e for e in ours if e[0] == "start"]
    assert all([k.lower() for k, _ in e[2]].count("x-request-id") == 1 for e in started)
    assert len(set(ids)) <= 1  # one id per request, in every start_response
    if ids and server.incoming_id == "client-id-7":
        assert ids[0] == "client-id-7"  # a safe incoming id is kept; "bad id!" and "" are replaced
    elif ids:
        assert ids[0] not in ("bad id!", "", "app-made-id")
    assert current_request_id() is None
    lines = [json.loads(line) for line in logs.stream.getvalue()[offset:].splitlines()]
    [line] = [line for line in lines if line["logger"] == "softfactory_obs.access"]
    if ids:
        assert line["request_id"] == ids[0]
    last = started[-1] if started else None
    assert line["status"] == (int(last[1][:3]) if last is not None else 500)
    sent = sum(len(e[1]) for e in ours if e[0] in ("block", "write"))
    if server.stop_after and plan.body == "list" and plan.fail in (None, "close"):  # (a list has no close)
        # A list is counted whole when the server asks for it: what the app answered, however much
        # the client read. (Closed unread, stop_after 0, nothing was sent.)
        sent = sum(len(c) for c in plan.chunks)
    declared = declared_size(last[2]) if last is not None else None
    assert line["content_length"] == (declared if declared is not None else sent)
    has_size = declared_size((("content-length", server.request_length or ""),)) is not None
    assert _total("http_request_size_bytes_count") == request_sizes + has_size
    assert _total("http_requests_total") == counted + 1
    assert _total("http_requests_in_progress") == 0
    assert failure_counts() == {}

"""PEP 3333 behaviour of the middleware, each case run with wsgiref's validator on both sides."""

from __future__ import annotations

import inspect
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.util import FileWrapper
from wsgiref.validate import validator

import pytest
from helpers import LogCapture, call_wsgi, make_environ, wrap

from softfactory_obs import ObservabilityMiddleware, configure_logging, current_request_id, instrument
from softfactory_obs._failures import failure_counts
from softfactory_obs.store.metrics import Registry

TEXT = [("Content-Type", "text/plain")]


class Body:
    """An app iterable that records how it was used."""

    def __init__(self, chunks: list[bytes], *, fail_at: int | None = None, close_raises: bool = False) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.close_raises = close_raises
        self.closed = 0
        self.yielded = 0
        self.ids_seen: list[str | None] = []

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_at:
                raise ValueError("boom mid-stream")
            self.ids_seen.append(current_request_id())
            self.yielded += 1
            yield chunk
        if self.fail_at == len(self.chunks):
            raise ValueError("boom at the end")

    def close(self) -> None:
        self.closed += 1
        if self.close_raises:
            raise OSError("close failed")


def app_returning(body: Any, status: str = "200 OK", headers: list[tuple[str, str]] | None = None) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response(status, list(headers or TEXT))
        return body

    return app


def test_list_body_passes_through_and_logs_one_line(logs: LogCapture) -> None:
    resp = call_wsgi(wrap(app_returning([b"hello ", b"world"])))
    assert resp.status == "200 OK"
    assert resp.body == b"hello world"
    [line] = logs.access()
    assert line["status"] == 200
    assert line["content_length"] == 11
    assert resp.header("X-Request-Id") == [line["request_id"]]


@pytest.mark.parametrize("close_after", [None, 1, 0], ids=["complete", "client-gone-after-1", "closed-before-next"])
def test_app_iterable_closed_exactly_once(logs: LogCapture, close_after: int | None) -> None:
    body = Body([b"a", b"b", b"c"])
    result = wrap(app_returning(body))(make_environ(), lambda s, h, e=None: None)
    if close_after != 0:
        for n, _ in enumerate(result, 1):
            if close_after is not None and n >= close_after:
                break
    result.close()
    result.close()  # a second close (stacked servers) is harmless
    assert body.closed == 1
    assert len(logs.access()) == 1
    assert current_request_id() is None


def test_close_before_first_next_still_closes_generator_app(logs: LogCapture) -> None:
    closed: list[bool] = []

    def gen() -> Iterator[bytes]:
        try:
            yield b"x"
        finally:
            closed.append(True)

    started = gen()

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        return started

    result = wrap(app)(make_environ(), lambda s, h, e=None: None)
    result.close()  # before the first next(): a generator wrapper would never reach its finally
    assert closed == []  # the generator never started, so its finally has nothing to run...
    assert inspect.getgeneratorstate(started) == inspect.GEN_CLOSED  # ...but it was closed
    assert len(logs.access()) == 1


def test_app_close_raising_still_finishes_and_propagates(logs: LogCapture) -> None:
    body = Body([b"a"], close_raises=True)
    with pytest.raises(OSError, match="close failed"):
        call_wsgi(wrap(app_returning(body)))
    assert body.closed == 1
    assert len(logs.access()) == 1
    assert current_request_id() is None


def test_generator_whose_close_raises(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        try:
            yield b"first"
            yield b"second"
        finally:
            raise OSError("cleanup failed")  # runs when the server closes after the first block

    with pytest.raises(OSError, match="cleanup failed"):
        call_wsgi(wrap(app), close_after=1)
    [line] = logs.access()
    assert line["status"] == 200 and line["content_length"] == len(b"first")
    assert current_request_id() is None


def test_minimal_environ_without_optional_keys(logs: LogCapture) -> None:
    # PEP 3333 lets servers omit empty variables; no validator here, it insists on them.
    environ = {"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO()}
    resp = call_wsgi(ObservabilityMiddleware(app_returning([b"ok"]), auto_configure_logging=False), environ)
    assert resp.body == b"ok"
    line = logs.access()[0]
    assert line["path"] == "" and line["remote_addr"] == "" and line["user_agent"] == ""


def test_lazy_start_response_records_status_set_on_first_iteration(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("201 Created", TEXT)
        yield b"made"

    resp = call_wsgi(wrap(app))
    assert resp.status == "201 Created"
    assert resp.header("X-Request-Id")
    assert logs.access()[0]["status"] == 201


def test_exc_info_recall_records_the_last_status(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        try:
            raise KeyError("handled by the framework's error page")
        except KeyError:
            start_response("503 Service Unavailable", TEXT, sys.exc_info())
        return [b"sorry"]

    resp = call_wsgi(wrap(app))
    assert resp.start_calls == [("200 OK", False), ("503 Service Unavailable", True)]
    assert logs.access()[0]["status"] == 503


def test_write_callable_works_and_is_counted(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        write = start_response("200 OK", TEXT)
        write(b"written ")
        return [b"and returned"]

    resp = call_wsgi(wrap(app))
    assert resp.body == b"written and returned"
    assert logs.access()[0]["content_length"] == len(b"written and returned")
    # Without the validators the app's list reaches us as a list (the fast path): same count.
    resp = call_wsgi(ObservabilityMiddleware(app, auto_configure_logging=False))
    assert resp.body == b"written and returned"
    assert logs.access()[1]["content_length"] == len(b"written and returned")


def test_a_server_asking_for_the_iterator_twice_counts_the_body_once(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", TEXT)
        return [b"four", b"more"]

    result = ObservabilityMiddleware(app, auto_configure_logging=False)(make_environ(), lambda s, h, e=None: None)
    assert list(iter(result)) == list(iter(result)) == [b"four", b"more"]
    result.close()  # type: ignore[attr-defined]
    assert logs.access()[0]["content_length"] == 8


def test_blocks_are_not_buffered(logs: LogCapture) -> None:
    produced: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        for i in range(3):
            produced.append(i)
            yield b"%d" % i

    received: list[int] = []
    call_wsgi(wrap(app), on_chunk=lambda chunk: received.append(len(produced)))
    # When the server gets block i, the app has produced exactly i+1 blocks: nothing held back.
    assert received == [1, 2, 3]


def test_duration_covers_the_streamed_body(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        for _ in range(3):
            time.sleep(0.05)
            yield b"tick"

    call_wsgi(wrap(app))
    assert logs.access()[0]["latency_ms"] >= 150


def test_file_wrapper_through_validators(logs: LogCapture, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"y" * 5000)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 1024)

    resp = call_wsgi(wrap(app), make_environ(**{"wsgi.file_wrapper": FileWrapper}))
    assert resp.body == b"y" * 5000
    assert logs.access()[0]["content_length"] == 5000


def test_file_wrapper_is_returned_as_is_and_finishes_on_close(logs: LogCapture, tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10000)
    handle = open(path, "rb")  # noqa: SIM115 - the wrapper closes it

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", "10000")])
        return environ["wsgi.file_wrapper"](handle, 4096)

    environ = make_environ(**{"wsgi.file_wrapper": FileWrapper})
    mw = ObservabilityMiddleware(app, auto_configure_logging=False)
    result = mw(environ, lambda s, h, e=None: None)
    assert type(result) is FileWrapper  # the server's own object: it may still use sendfile
    assert b"".join(result) == b"x" * 10000
    assert logs.access() == []  # not finished until the server closes it
    result.close()
    result.close()
    assert handle.closed
    [line] = logs.access()
    assert line["content_length"] == 10000
    assert current_request_id() is None


def test_app_raising_before_body_gets_json_500_with_request_id(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise RuntimeError("database on fire")

    resp = call_wsgi(wrap(app), make_environ(HTTP_X_REQUEST_ID="req-42"))
    assert resp.status.startswith("500")
    assert resp.header("X-Request-Id") == ["req-42"]
    assert resp.header("Content-Type") == ["application/json"]
    assert json.loads(resp.body) == {"error": "internal server error", "request_id": "req-42"}
    [line] = logs.access()
    assert line["level"] == "ERROR"
    assert line["status"] == 500
    assert line["error_type"] == "RuntimeError"
    assert "database on fire" in line["traceback"]
    assert "\n" not in logs.raw().strip().splitlines()[0][:-1]  # traceback inside one JSON line


def test_app_raising_after_start_response_but_before_body_gets_json_500(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        raise RuntimeError("failed while rendering")
        yield b""  # pragma: no cover - makes this a generator

    resp = call_wsgi(wrap(app))
    assert resp.status.startswith("500")
    assert resp.start_calls == [("200 OK", False), ("500 Internal Server Error", True)]
    assert logs.access()[0]["status"] == 500


def test_propagate_exceptions_reraises_the_same_object(logs: LogCapture) -> None:
    error = RuntimeError("for the debugger")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise error

    with pytest.raises(RuntimeError) as info:
        call_wsgi(wrap(app, propagate_exceptions=True))
    assert info.value is error
    [line] = logs.access()
    assert line["status"] == 500 and line["error_type"] == "RuntimeError"  # as the server answers; metrics agree
    assert current_request_id() is None


def test_app_raising_mid_stream_propagates_and_is_logged(logs: LogCapture) -> None:
    body = Body([b"first", b"second"], fail_at=1)
    with pytest.raises(ValueError, match="boom mid-stream"):
        call_wsgi(wrap(app_returning(body)))
    assert body.closed == 1
    [line] = logs.access()
    assert line["status"] == 200  # headers were out; the status cannot change
    assert line["error_type"] == "ValueError"
    assert line["content_length"] == len(b"first")
    assert current_request_id() is None


def test_generator_close_raising_after_mid_stream_error(logs: LogCapture) -> None:
    body = Body([b"a", b"b"], fail_at=1, close_raises=True)
    with pytest.raises((ValueError, OSError)):
        call_wsgi(wrap(app_returning(body)))
    assert body.closed == 1
    assert len(logs.access()) == 1


def test_system_exit_is_never_swallowed(logs: LogCapture) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise SystemExit(1)  # what gunicorn raises in a worker that timed out

    with pytest.raises(SystemExit):
        call_wsgi(wrap(app))
    assert logs.access()[0]["error_type"] == "SystemExit"
    assert current_request_id() is None


def test_empty_body_and_head(logs: LogCapture) -> None:
    resp = call_wsgi(wrap(app_returning([])), make_environ(REQUEST_METHOD="HEAD"))
    assert resp.body == b""
    line = logs.access()[0]
    assert line["method"] == "HEAD" and line["content_length"] == 0


@pytest.mark.parametrize(
    ("ours", "sent"),
    [("X-Request-Id", "x-request-id"), ("X-Request-Id", "X-Request-Id"), ("Server", "Server"), ("ETag", "etag")],
)
def test_app_set_request_id_header_is_replaced_not_duplicated(logs: LogCapture, ours: str, sent: str) -> None:
    """Also when our header's name is one start_response usually passes over (a common name)."""
    headers = [*TEXT, ("Content-Length", "1"), (sent, "from-app")]
    resp = call_wsgi(
        wrap(app_returning([b"x"], headers=headers), request_id_header=ours),
        make_environ(**{"HTTP_" + ours.upper().replace("-", "_"): "from-client"}),
    )
    assert resp.header(ours) == ["from-client"]
    assert logs.access()[0]["content_length"] == 1


def test_headers_list_of_the_app_is_not_mutated(logs: LogCapture) -> None:
    shared = [("Content-Type", "text/plain")]

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", shared)
        return [b"x"]

    call_wsgi(wrap(app))
    call_wsgi(wrap(app))
    assert shared == [("Content-Type", "text/plain")]


def test_hop_by_hop_and_body_untouched(logs: LogCapture) -> None:
    headers = [*TEXT, ("Content-Length", "10")]
    resp = call_wsgi(wrap(app_returning([b"12345"], headers=headers)))
    assert resp.body == b"12345"  # declared 10, sent 5: not ours to fix
    assert resp.header("Content-Length") == ["10"]
    assert {k.lower() for k, _ in resp.headers} == {"content-type", "content-length", "x-request-id"}


def test_wrapping_twice_is_a_no_op(logs: LogCapture) -> None:
    inner = instrument(app_returning([b"x"]), auto_configure_logging=False)
    assert instrument(inner) is inner
    assert instrument(inner, auto_configure_logging=False) is inner
    with pytest.raises(ValueError, match="already instrumented"):
        instrument(inner, service_name="other")
    nested = ObservabilityMiddleware(inner, auto_configure_logging=False)
    resp = call_wsgi(nested)
    assert len(logs.access()) == 1
    assert len(resp.header("X-Request-Id")) == 1


def test_failing_log_handler_never_fails_the_request(capsys: pytest.CaptureFixture[str]) -> None:
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(28, "No space left on device")

    configure_logging(stream=Broken())
    for _ in range(3):
        resp = call_wsgi(wrap(app_returning([b"ok"])))
        assert resp.body == b"ok"
    assert failure_counts() == {"log stream": 3}
    assert capsys.readouterr().err.count("log stream failed") == 1  # reported once, counted always


def test_failing_finish_hook_never_fails_the_request(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(app_returning([b"ok"]), auto_configure_logging=False)

    def broken_hook(cycle: Any) -> None:
        raise ZeroDivisionError

    broken_hook.component = "metrics"  # type: ignore[attr-defined]
    mw.add_finish_hook(broken_hook)
    assert call_wsgi(mw).body == b"ok"
    assert failure_counts() == {"metrics": 1}
    assert len(logs.access()) == 1  # the other hooks still ran


def test_no_thread_to_spare_never_fails_the_first_request(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> None:
    """A container's pids limit: the maintenance thread cannot start. The request is served, the
    failure reported, and no later request tries again."""
    starts = []

    def refuse(thread: threading.Thread) -> None:
        starts.append(thread.name)
        raise RuntimeError("can't start new thread")

    mw = ObservabilityMiddleware(app_returning([b"ok"]), registry=Registry(), auto_configure_logging=False)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    for _ in range(3):
        assert call_wsgi(mw).body == b"ok"
    assert starts == ["softfactory_obs-maintenance"]
    assert failure_counts() == {"metrics maintenance": 1}
    assert len(logs.access()) == 3


def test_a_lax_servers_bytes_traceparent_is_no_trace(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(app_returning([b"ok"]), auto_configure_logging=False)
    header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert call_wsgi(mw, make_environ(HTTP_TRACEPARENT=header)).body == b"ok"
    assert call_wsgi(mw, make_environ(HTTP_TRACEPARENT=header.decode())).body == b"ok"
    lax, control = logs.access()
    assert control["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # the same header as a str is a trace
    assert "trace_id" not in lax


def test_a_failing_callable_hook_is_reported_under_its_component(logs: LogCapture) -> None:
    """Objects with __call__ are called through their bound method; a failure still names the object's component."""
    calls = []

    class Audit:
        component = "audit trail"

        def __call__(self, cycle: Any) -> None:
            calls.append(cycle.request_id)
            raise LookupError

    mw = ObservabilityMiddleware(app_returning([b"ok"]), auto_configure_logging=False)
    mw.add_finish_hook(Audit())
    mw.add_response_hook(Audit())
    assert call_wsgi(mw, make_environ(HTTP_X_REQUEST_ID="audited")).body == b"ok"
    assert calls == ["audited", "audited"]
    assert failure_counts() == {"audit trail": 2}
    assert len(logs.access()) == 1


def test_non_bytes_chunks_do_not_crash_bookkeeping(logs: LogCapture) -> None:
    mw = ObservabilityMiddleware(app_returning(["not bytes"]), auto_configure_logging=False)
    result = mw(make_environ(), lambda s, h, e=None: None)
    assert list(result) == ["not bytes"]  # refusing str is the server's job, not ours
    result.close()
    assert len(logs.access()) == 1


def test_app_returning_none_gets_500_not_a_crash(logs: LogCapture) -> None:
    resp = call_wsgi(validator(ObservabilityMiddleware(app_returning(None), auto_configure_logging=False)))
    assert resp.status.startswith("500")
    assert logs.access()[0]["error_type"] == "TypeError"

"""One request's life: ``start_response`` capture, body iteration, ``close()`` and the finish hooks.

The object is the iterable the server receives. It is a class with an explicit ``close()``, not a
generator: a generator's ``finally`` never runs when the server closes it before the first
``next()`` (client gone, HEAD shortcut), and then the app's ``close()`` would never be called.

PEP 3333 rules this file follows, and where:
- the app's iterable is closed exactly once, whatever happened (``close``);
- ``start_response`` may come late (first ``next()``) or again with ``exc_info``; the last
  status the server accepted is the one recorded, and ``exc_info`` is passed on positionally
  only when given (``start_response``);
- ``write()`` keeps working (``write``);
- every block is handed on as soon as the app yields it (``__next__``);
- a ``wsgi.file_wrapper`` result is returned as the same object so the server can still use
  ``sendfile`` (``run``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from ._failures import report_failure
from .request_id import new_request_id, parse_traceparent, request_context

if TYPE_CHECKING:
    from .middleware import ObservabilityMiddleware

FinishHook = Callable[["RequestCycle"], None]


@dataclass(frozen=True)
class Hooks:
    """What runs per request, built once. ``response``: once the status is final and before the first
    body byte goes out, so a worker killed mid-send has already counted the request it answered.
    ``finish``: after the body was sent and closed (durations, the access line)."""

    response: tuple[FinishHook, ...] = ()
    finish: tuple[FinishHook, ...] = ()
    start: tuple[FinishHook, ...] = ()


NO_HOOKS = Hooks()


def _hook_failed(hook: FinishHook, exc: Exception) -> None:
    owner = getattr(hook, "__self__", hook)
    report_failure(getattr(owner, "component", "request hook"), exc)


_STATUS_500 = "500 Internal Server Error"
# Content-Length values as ints: apps send a handful, and a lookup costs a tenth of int(). Bounded:
# request lengths are the client's to choose.
LENGTHS: dict[str, int] = {}
MAX_LENGTH_DIGITS = 11
REQUEST_ID_KEY = "softfactory_obs.request_id"
ROUTE_KEY = "softfactory_obs.route"  # where a framework adapter puts the route template


def parse_length(value: object) -> int | None:
    """A Content-Length header's byte count, or None when it is not one. ASCII digits only: int()
    would take ' 5' and '5_0', and str.isdigit() passes '²', on which int() raises. At most 11
    digits (under 100 GB): the size sums are int64, which ten requests claiming an exabyte each
    overflowed (it now takes some 92 million). The hot path looks in ``LENGTHS`` itself first."""
    length = LENGTHS.get(value) if type(value) is str else None
    if length is not None:
        return length
    if type(value) is not str or not (value.isascii() and value.isdigit()) or len(value) > MAX_LENGTH_DIGITS:
        return None
    length = int(value)
    if len(LENGTHS) < 4096:
        LENGTHS[value] = length
    return length


def serve(
    mw: ObservabilityMiddleware,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    hooks: Hooks,
    app: Callable[..., Iterable[bytes]],
) -> Iterable[bytes]:
    """Run one request through ``app``: what the server gets back is the ``RequestCycle`` (or the
    app's own file wrapper, whose ``close`` we hooked).

    A function, not ``__init__`` + a method: on this path a Python frame costs as much as a
    dozen attribute stores. Set here is only what a reader may need before anything else sets
    it; ``duration`` and ``size`` are set by ``finish`` before any hook reads them,
    ``_server_write`` by ``start_response``, ``wrote`` by ``write``.
    """
    cycle = RequestCycle()  # no __init__: type() allocates it, cheaper than object.__new__(RequestCycle)
    cycle._started = perf_counter()
    cycle._mw = mw
    cycle._hooks = hooks
    cycle.environ = environ
    cycle._server_start_response = start_response
    if mw.id_key in environ:  # an empty one is resolved as absent
        request_id, cycle.id_rejected = mw.request_ids.resolve(environ)
    else:
        request_id = new_request_id()
        cycle.id_rejected = False
    cycle.request_id = environ[REQUEST_ID_KEY] = request_id
    trace_id = cycle.trace_id = (
        parse_traceparent(environ["HTTP_TRACEPARENT"]) if "HTTP_TRACEPARENT" in environ else None
    )
    cycle._token = request_context.set((request_id, trace_id))
    cycle.status = cycle.content_length = cycle.exc = cycle._result = cycle._iterator = None
    cycle.http = cycle.http_series = cycle.endpoint = None  # set by the HTTP metrics hooks
    cycle.sent = 0
    cycle._closed = cycle._finished = cycle._recorded = False
    for hook in hooks.start:  # the hook loops are inlined: a helper call per stage is measurable here
        try:
            hook(cycle)
        except Exception as exc:
            _hook_failed(hook, exc)
    try:
        result = cycle._result = app(environ, cycle.start_response)
        if type(result) is list:  # the common case: __iter__ hands the server the list's own iterator
            return cycle
        file_wrapper = environ.get("wsgi.file_wrapper")
        if type(file_wrapper) is type and isinstance(result, file_wrapper) and cycle._hook_close(result):
            cycle._record()
            return result
        cycle._iterator = iter(result)
    except Exception as exc:
        cycle.exc = exc
        if mw.settings.propagate_exceptions or getattr(cycle, "wrote", False):
            cycle.finish()
            raise
        try:
            cycle._answer_500()
        except BaseException:  # the server refused the late 500: its error stands
            cycle.finish()
            raise
    except BaseException as exc:  # SystemExit from gunicorn's timeout, KeyboardInterrupt: record, never keep
        cycle.exc = exc
        cycle.finish()
        raise
    return cycle


class RequestCycle:
    """Per-request state, made by ``serve``; the middleware instance holds configuration only."""

    __slots__ = (
        "__weakref__",
        "_closed",
        "_finished",
        "_hooks",
        "_iterator",
        "_mw",
        "_recorded",
        "_result",
        "_server_start_response",
        "_server_write",
        "_started",
        "_token",
        "content_length",
        "duration",
        "endpoint",
        "environ",
        "exc",
        "http",
        "http_locked",
        "http_series",
        "id_rejected",
        "request_id",
        "sent",
        "size",
        "status",
        "trace_id",
        "wrote",
    )

    _closed: bool
    _finished: bool
    _hooks: Hooks
    _iterator: Iterator[bytes] | None  # what the body is read through; for a list, once the server asked
    _mw: ObservabilityMiddleware
    _recorded: bool
    _result: Any
    _server_start_response: Callable[..., Any]
    _server_write: Callable[[bytes], Any]
    _started: float
    _token: Any
    content_length: str | None
    duration: float
    endpoint: str | None
    environ: dict[str, Any]
    exc: BaseException | None
    http: Any  # the method's in-progress state; None when the request is not measured
    http_locked: bool  # set by the HTTP metrics' start hook: the server may run requests in threads
    http_series: Any
    id_rejected: bool
    request_id: str
    sent: int
    size: int
    status: str | None
    trace_id: str | None
    wrote: bool

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        """The ``start_response`` the app calls: records the status and declared size, replaces any
        request-id header of the app's with ours, passes ``exc_info`` on."""
        mw = self._mw
        content_length = None
        ours_sent = False
        ours_size = mw.header_size
        others = mw.other_headers
        for name, value in headers:
            if name in others:  # the usual names, as apps spell them: neither ours nor Content-Length
                continue
            if name == "Content-Length":
                content_length = value
                continue
            # Other spellings. Compare lengths first: lower() on every header is most of this loop's cost.
            size = len(name)
            if size == 14 and name.lower() == "content-length":
                content_length = value
            elif size == ours_size and name.lower() == mw.header_lower:
                ours_sent = True
        if ours_sent:
            # Logs carry our id, so the response must too; the app's value would be a second truth.
            headers = [h for h in headers if h[0].lower() != mw.header_lower]
        # A new list: the app's may be a shared constant.
        headers = [*headers, (mw.header_name, self.request_id)]
        if exc_info is None:
            self._server_write = self._server_start_response(status, headers)
        else:
            try:
                self._server_write = self._server_start_response(status, headers, exc_info)
            finally:
                exc_info = None  # no reference cycle through the traceback
        self.status = status
        self.content_length = content_length if type(content_length) is str else None  # a lax server's int
        return self.write

    def write(self, data: bytes) -> Any:
        """PEP 3333's ``write()``: counts the bytes and hands them to the server's own."""
        if not self._recorded:
            self._record()
        self.wrote = True
        self.sent += len(data)
        return self._server_write(data)  # AttributeError: write() before start_response(), an app bug

    # -- the server side ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        result = self._result
        if type(result) is list:  # (a failed app's 500 is never a list: _result stays None)
            if self._iterator is not None:  # a server that asks twice: the body was counted once
                return iter(result)
            iterator = self._iterator = iter(result)
            # The common case needs no per-block work: the size is known now, nothing can raise.
            declared = self.content_length
            if declared is None or (declared not in LENGTHS and parse_length(declared) is None):
                try:
                    self.sent += sum(map(len, result))  # after what write() sent, if the app used it
                except TypeError:
                    pass  # not bytes: the server will say so
            if not self._recorded:
                self._recorded = True
                for hook in self._hooks.response:  # _record, inlined
                    try:
                        hook(self)
                    except Exception as exc:
                        _hook_failed(hook, exc)
            return iterator
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        if iterator is None:  # a list body, and a server that calls next() without iter() first
            iterator = self._iterator = iter(self._result)
        try:
            block = next(iterator)
        except StopIteration:
            raise
        except Exception as exc:
            self.exc = exc
            if self._mw.settings.propagate_exceptions or self.sent or getattr(self, "wrote", False):
                raise  # headers may be out: PEP 3333 says let it propagate
            self._answer_500()
            block = next(self._iterator)  # type: ignore[arg-type]  # _answer_500 set it
        except BaseException as exc:
            self.exc = exc
            self.finish()
            raise
        if block and not self._recorded:
            self._record()
        self.sent += len(block)
        return block

    def close(self) -> None:
        """Close the app's iterable (once), then run the finish hooks."""
        if self._closed:
            return
        self._closed = True
        result = self._result
        if type(result) is list:  # nothing to close; getattr's miss would cost a caught AttributeError
            self.finish()
            return
        try:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        finally:
            self.finish()

    def _hook_close(self, result: Any) -> bool:
        """Finish when the server closes its own file wrapper, keeping the object (and sendfile)."""
        original = getattr(result, "close", None)

        def close() -> None:
            if self._closed:
                return
            self._closed = True
            try:
                if original is not None:
                    original()
            finally:
                self.finish()

        try:
            result.close = close
        except AttributeError:  # a wrapper with __slots__: fall back to iterating it ourselves
            return False
        return True

    def _answer_500(self) -> None:
        """The app failed before any body byte: answer a JSON 500 that still carries the request id."""
        body = json.dumps({"error": "internal server error", "request_id": self.request_id}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        if self.status is None:
            self.start_response(_STATUS_500, headers)
        else:
            self.start_response(_STATUS_500, headers, sys.exc_info())
        self._iterator = iter((body,))

    # -- the end ------------------------------------------------------------------------------

    def _record(self) -> None:
        self._recorded = True
        for hook in self._hooks.response:
            try:
                hook(self)
            except Exception as exc:
                _hook_failed(hook, exc)

    def finish(self) -> None:
        """Run once, after the body was sent and closed (or the request failed): hooks, then reset."""
        if self._finished:
            return
        self._finished = True
        self.duration = perf_counter() - self._started
        # Body bytes: the declared Content-Length when the app gave a valid one, else what was sent.
        declared = self.content_length
        if declared is None:
            self.size = self.sent
        else:
            size = LENGTHS.get(declared)
            if size is None:
                size = parse_length(declared)
            self.size = self.sent if size is None else size
        try:
            if not self._recorded:  # no body byte ever went out: errors, empty bodies, early closes
                self._record()
            for hook in self._hooks.finish:
                try:
                    hook(self)
                except Exception as exc:
                    _hook_failed(hook, exc)
        finally:
            self.exc = None
            try:
                request_context.reset(self._token)
            except ValueError:  # closed from another context (a different greenlet or thread)
                request_context.set(None)

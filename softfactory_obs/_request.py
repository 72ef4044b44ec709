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
from .request_id import _current, new_request_id, parse_traceparent

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


class RequestCycle:
    """Per-request state; the middleware instance itself holds configuration only."""

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
        "http_children",
        "http_exemplar",
        "http_gauge",
        "http_labels",
        "http_method",
        "id_rejected",
        "request_id",
        "sent",
        "status",
        "trace_id",
        "wrote",
    )

    def __init__(
        self,
        mw: ObservabilityMiddleware,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        hooks: Hooks,
    ) -> None:
        self._started = perf_counter()
        self._mw = mw
        self._hooks = hooks
        self.environ = environ
        self._server_start_response = start_response
        sent_id = environ.get(mw.request_ids.environ_key)
        if sent_id:
            self.request_id, self.id_rejected = mw.request_ids.resolve(environ)
        else:
            self.request_id, self.id_rejected = new_request_id(), False
        traceparent = environ.get("HTTP_TRACEPARENT")
        self.trace_id = parse_traceparent(traceparent) if traceparent else None
        environ["softfactory_obs.request_id"] = self.request_id
        self._token = _current.set((self.request_id, self.trace_id))
        self.status: str | None = None
        self.content_length: str | None = None
        self.sent = 0
        self.wrote = False
        self.exc: BaseException | None = None
        self.duration = 0.0
        # Set by the HTTP metrics hooks for each other and for the access line.
        self.http_children: Any = None
        self.http_gauge: Any = None
        self.http_exemplar: bytes | None = None
        self.http_method: str | None = None
        self.http_labels: tuple[str, ...] = ()
        self.endpoint: str | None = None
        self._server_write: Callable[[bytes], Any] | None = None
        self._result: Any = None
        self._iterator: Iterator[bytes] | None = None
        self._closed = False
        self._finished = False
        self._recorded = False
        for hook in hooks.start:  # the hook loops are inlined: a helper call per stage is measurable here
            try:
                hook(self)
            except Exception as exc:
                _hook_failed(hook, exc)

    # -- the app side -------------------------------------------------------------------------

    def run(self, app: Callable[..., Iterable[bytes]]) -> Iterable[bytes]:
        try:
            result = self._result = app(self.environ, self.start_response)
            if type(result) is list:  # the common case: __iter__ hands the server the list's own iterator
                return self
            file_wrapper = self.environ.get("wsgi.file_wrapper")
            if type(file_wrapper) is type and isinstance(result, file_wrapper) and self._hook_close(result):
                self._record()
                return result
            self._iterator = iter(result)
        except Exception as exc:
            self.exc = exc
            if self._mw.settings.propagate_exceptions or self.wrote:
                self.finish()
                raise
            try:
                self._answer_500()
            except BaseException:  # the server refused the late 500: its error stands
                self.finish()
                raise
        except BaseException as exc:  # SystemExit from gunicorn's timeout, KeyboardInterrupt: record, never keep
            self.exc = exc
            self.finish()
            raise
        return self

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        mw = self._mw
        content_length = None
        ours_sent = False
        for name, value in headers:
            # Compare lengths first: lower() on every header is most of this loop's cost.
            size = len(name)
            if size == 14 and name.lower() == "content-length":
                content_length = value
            elif size == mw.header_size and name.lower() == mw.header_lower:
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
        self.content_length = content_length
        return self.write

    def write(self, data: bytes) -> Any:
        if not self._recorded:
            self._record()
        self.wrote = True
        self.sent += len(data)
        assert self._server_write is not None, "write() called before start_response()"
        return self._server_write(data)

    # -- the server side ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        result = self._result
        if type(result) is list and self._iterator is None:
            # The common case needs no per-block work: the size is known now, nothing can raise.
            declared = self.content_length
            if declared is None or not declared.isdigit():
                try:
                    self.sent = sum(map(len, result))
                except TypeError:
                    pass  # not bytes: the server will say so
            if not self._recorded:  # a server may ask twice; the request is counted once
                self._record()
            return iter(result)
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:  # a server that calls next() without iter() first
            self._iterator = iter(self._result)
        try:
            block = next(self._iterator)
        except StopIteration:
            raise
        except Exception as exc:
            self.exc = exc
            if self._mw.settings.propagate_exceptions or self.sent or self.wrote:
                raise  # headers may be out: PEP 3333 says let it propagate
            self._answer_500()
            block = next(self._iterator)
        except BaseException as exc:
            self.exc = exc
            self.finish()
            raise
        if block and not self._recorded:
            self._record()
        self.sent += len(block)
        return block

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._result, "close", None)
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

    def response_size(self) -> int:
        """Body bytes: the declared Content-Length when the app gave a valid one, else what was sent."""
        declared = self.content_length
        if declared is not None and declared.isdigit():
            return int(declared)
        return self.sent

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
                _current.reset(self._token)
            except ValueError:  # closed from another context (a different greenlet or thread)
                _current.set(None)

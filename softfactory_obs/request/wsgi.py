"""The WSGI driver: one request's life as the server sees it, recorded in a ``RequestRecord``.

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
  ``sendfile`` (``serve``; uWSGI's wrapper returns the file itself: ``_hand_file_back``);
- environ strings are latin-1 code points standing for bytes: the record holds the text they
  spell (``wsgi_to_text``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any

from ..request_id import new_request_id, parse_traceparent, request_context
from .record import LENGTHS, STATUS_CODES, Hooks, RequestRecord, hook_failed, parse_length, status_code
from .wsgi_environ import Driver, environ_text, header_key

REQUEST_ID_KEY = "softfactory_obs.request_id"
ROUTE_KEY = "softfactory_obs.route"  # where a framework adapter puts the route template
# Where an adapter puts an exception its framework turned into a response of its own (Flask's or
# Django's 500 page): the request record carries it as if it had escaped the app. Read only when
# the route is set too (every adapter sets it first), so a plain app pays one test for it.
EXCEPTION_KEY = "softfactory_obs.exception"
_STATUS_500 = "500 Internal Server Error"


def serve(  # noqa: PLR0915, PLR0917 - the record's fields, one statement each; no keywords on the hot path
    driver: Driver,
    hooks: Hooks,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    app: Callable[..., Iterable[bytes]],
    path: object,
) -> Iterable[bytes]:
    """Run one request through ``app``: what the server gets back is the ``RequestCycle`` (or the
    app's own file wrapper, whose ``close`` we hooked).

    The record is built here, every slot set before any hook sees it: a function rather than
    ``__init__`` plus a method, since on this path a Python frame costs as much as a dozen stores.
    """
    cycle = RequestCycle()  # no __init__: every slot is set below

    cycle.started = perf_counter()
    cycle.environ = environ
    if driver.id_key in environ:  # an empty one is resolved as absent
        request_id, cycle.id_rejected = driver.request_ids.resolve(environ)
    else:
        request_id = new_request_id()
        cycle.id_rejected = False
    cycle.request_id = environ[REQUEST_ID_KEY] = request_id
    trace_id = cycle.trace_id = (
        parse_traceparent(environ["HTTP_TRACEPARENT"]) if "HTTP_TRACEPARENT" in environ else None
    )
    try:  # what PEP 3333 requires every server to set
        cycle.method = environ["REQUEST_METHOD"]
        cycle.threaded = environ["wsgi.multithread"] is not False
    except KeyError:  # a server (or a test) that left them out
        cycle.method = environ.get("REQUEST_METHOD", "")
        cycle.threaded = environ.get("wsgi.multithread", True) is not False
    cycle.path = path if type(path) is str and path.isascii() else environ_text(path or "")  # path: PATH_INFO
    script = environ.get("SCRIPT_NAME")
    cycle.script_name = environ_text(script) if script else ""
    length = environ["CONTENT_LENGTH"] if "CONTENT_LENGTH" in environ else None  # noqa: SIM401 - cheaper than get()
    cycle.request_bytes = (LENGTHS.get(length) or parse_length(length)) if length else None
    cycle.status = cycle.route = cycle.endpoint = cycle.exc = cycle.span_id = None
    cycle.duration = 0.0
    cycle.state = hooks.state.copy()
    cycle.response_bytes = 0
    cycle._driver = driver
    cycle._hooks = hooks
    cycle._server_start_response = start_response
    cycle._server_write = _no_write
    cycle._token = request_context.set((request_id, trace_id, None))
    cycle._declared = cycle._result = cycle._iterator = None
    cycle._sent = 0
    cycle._wrote = cycle._closed = cycle._finished = cycle._recorded = False
    for hook in hooks.start:  # the hook loops are written out: a helper call per stage is measurable here
        try:
            hook(cycle)
        except Exception as exc:
            hook_failed(hook, exc)
    try:
        result = cycle._result = app(environ, cycle.start_response)
        if type(result) is list:  # the common case: __iter__ hands the server the list's own iterator
            return cycle
        file_wrapper = environ.get("wsgi.file_wrapper")
        if type(file_wrapper) is type and isinstance(result, file_wrapper) and cycle._hook_close(result):
            cycle._record()
            return result
        if file_wrapper is not None and type(file_wrapper) is not type and hasattr(result, "fileno"):
            return cycle._hand_file_back(result)
        cycle._iterator = iter(result)
    except Exception as exc:
        cycle.exc = exc
        if driver.propagate or cycle._wrote:
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


def _no_write(data: bytes) -> Any:
    raise AssertionError("write() called before start_response()")  # an app bug, as PEP 3333 says


class RequestCycle(RequestRecord):
    """The record of one WSGI request and the iterable the server receives; made by ``serve``."""

    __slots__ = (
        "_closed",
        "_declared",
        "_driver",
        "_finished",
        "_hooks",
        "_iterator",
        "_recorded",
        "_result",
        "_sent",
        "_server_start_response",
        "_server_write",
        "_token",
        "_wrote",
    )

    _closed: bool
    _declared: int | None  # the response's Content-Length as the app sent it, when valid
    _driver: Driver
    _finished: bool
    _hooks: Hooks
    _iterator: Iterator[bytes] | None  # what the body is read through; for a list, once the server asked
    _recorded: bool
    _result: Any
    _sent: int
    _server_start_response: Callable[..., Any]
    _server_write: Callable[[bytes], Any]
    _token: Any
    _wrote: bool

    def query_string(self) -> str:
        """``QUERY_STRING``, as text."""
        query = self.environ.get("QUERY_STRING")
        if not query:
            return ""
        return query if type(query) is str and query.isascii() else environ_text(query)

    def header(self, name: str) -> str | None:
        """A request header from the environ (``HTTP_*``, or ``CONTENT_TYPE``/``CONTENT_LENGTH``), as text."""
        value = self.environ.get(header_key(name))
        if value is None or (type(value) is str and value.isascii()):
            return value
        return environ_text(value)

    def user_agent(self) -> str | None:
        """``HTTP_USER_AGENT``, as text."""
        value = self.environ.get("HTTP_USER_AGENT")
        if value is None or (type(value) is str and value.isascii()):
            return value
        return environ_text(value)

    def remote_address(self) -> str:
        """``REMOTE_ADDR`` as the server gave it."""
        return str(self.environ.get("REMOTE_ADDR", ""))

    def remote_user(self) -> str | None:
        """``REMOTE_USER``, as text."""
        user = self.environ.get("REMOTE_USER")
        return environ_text(user) if user else None

    def access_details(self) -> tuple[str, str | None, str, str | None]:
        """The four methods above, in one call (the access line asks for them on every request)."""
        environ = self.environ
        query = environ.get("QUERY_STRING")
        if query and not (type(query) is str and query.isascii()):
            query = environ_text(query)
        agent = environ.get("HTTP_USER_AGENT")
        if agent is not None and not (type(agent) is str and agent.isascii()):
            agent = environ_text(agent)
        user = environ.get("REMOTE_USER")
        return query or "", agent, str(environ.get("REMOTE_ADDR", "")), environ_text(user) if user else None

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        """The ``start_response`` the app calls: records the status and declared size, replaces any
        request-id header of the app's with ours, passes ``exc_info`` on."""
        driver = self._driver
        content_length = None
        ours_sent = False
        ours_size = driver.header_size
        others = driver.other_headers
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
            elif size == ours_size and name.lower() == driver.header_lower:
                ours_sent = True
        if ours_sent:
            # Logs carry our id, so the response must too; the app's value would be a second truth.
            headers = [h for h in headers if h[0].lower() != driver.header_lower]
        # A new list: the app's may be a shared constant.
        headers = [*headers, (driver.header_name, self.request_id)]
        if exc_info is None:
            self._server_write = self._server_start_response(status, headers)
        else:
            try:
                self._server_write = self._server_start_response(status, headers, exc_info)
            finally:
                exc_info = None  # no reference cycle through the traceback
        try:
            self.status = STATUS_CODES[status]
        except (KeyError, TypeError):  # a first or unhashable status
            self.status = status_code(status)
        # The declared body size, when valid (a lax server's int is not a header value).
        if content_length is None:
            self._declared = None
        else:
            try:
                self._declared = LENGTHS[content_length]
            except (KeyError, TypeError):  # a first, invalid or unhashable length
                self._declared = parse_length(content_length)
        return self.write

    def write(self, data: bytes) -> Any:
        """PEP 3333's ``write()``: counts the bytes and hands them to the server's own."""
        if not self._recorded:
            self._record()
        self._wrote = True
        self._sent += len(data)
        return self._server_write(data)

    # -- the server side ----------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        result = self._result
        if type(result) is list:  # (a failed app's 500 is never a list: _result stays None)
            if self._iterator is not None:  # a server that asks twice: the body was counted once
                return iter(result)
            iterator = self._iterator = iter(result)
            # The common case needs no per-block work: the size is known now, nothing can raise.
            if self._declared is None:
                try:
                    self._sent += sum(map(len, result))  # after what write() sent, if the app used it
                except TypeError:
                    pass  # not bytes: the server will say so
            if not self._recorded:
                self._recorded = True
                environ = self.environ  # _record, written out: the common case
                route = self.route = environ[ROUTE_KEY] if ROUTE_KEY in environ else None  # noqa: SIM401 - get() costs more
                if route is not None and EXCEPTION_KEY in environ:  # only an adapter (it sets the route) reports one
                    self.exc = environ[EXCEPTION_KEY]
                if self.status is None:  # a list without start_response: the server will answer 500
                    self.status = 500
                for hook in self._hooks.response:
                    try:
                        hook(self)
                    except Exception as exc:
                        hook_failed(hook, exc)
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
            if self._driver.propagate or self._sent or self._wrote:
                raise  # headers may be out: PEP 3333 says let it propagate
            self._answer_500()
            block = next(self._iterator)  # type: ignore[arg-type]  # _answer_500 set it
        except BaseException as exc:
            self.exc = exc
            self.finish()
            raise
        if block and not self._recorded:
            self._record()
        self._sent += len(block)
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

    def _hand_file_back(self, result: Any) -> Iterable[bytes]:
        """uWSGI's ``wsgi.file_wrapper`` is a function that returns the file itself, and uWSGI sends
        it with sendfile only when the app returns that very object; iterated, it would go through
        Python line by line. So the file goes back as it is. The record ends when the server closes
        it or, where a C file object cannot be hooked, now: timed to the hand-over, sized by its
        Content-Length."""
        self._record()
        if not self._hook_close(result):
            self.finish()
        returned: Iterable[bytes] = result
        return returned

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
        """The status is final: the response hooks run (once), before any body byte goes out."""
        self._recorded = True
        environ = self.environ
        # An adapter sets it while the app runs. (Not get(): a method call costs more than both.)
        route = self.route = environ[ROUTE_KEY] if ROUTE_KEY in environ else None  # noqa: SIM401
        # Handled by the framework (none escaped); only an adapter, which sets the route, reports one.
        if route is not None and self.exc is None and EXCEPTION_KEY in environ:
            self.exc = environ[EXCEPTION_KEY]
        if self.status is None:  # no status at all: the app raised (or died) before start_response
            self.status = 500
        for hook in self._hooks.response:
            try:
                hook(self)
            except Exception as exc:
                hook_failed(hook, exc)

    def finish(self) -> None:
        """Run once, after the body was sent and closed (or the request failed): hooks, then reset."""
        if self._finished:
            return
        self._finished = True
        self.duration = perf_counter() - self.started
        # Body bytes: the declared Content-Length when the app gave a valid one, else what was sent.
        declared = self._declared
        self.response_bytes = self._sent if declared is None else declared
        try:
            if not self._recorded:  # no body byte ever went out: errors, empty bodies, early closes
                self._record()
            for hook in self._hooks.finish:
                try:
                    hook(self)
                except Exception as exc:
                    hook_failed(hook, exc)
        finally:
            self.exc = None
            try:
                request_context.reset(self._token)
            except ValueError:  # closed from another context (a different greenlet or thread)
                request_context.set(None)

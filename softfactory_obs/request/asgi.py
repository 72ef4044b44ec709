"""The ASGI driver: one ``http`` connection scope's life as the server sees it, recorded in a
``RequestRecord`` that the same hooks read as under WSGI.

ASGI rules this file follows (the HTTP connection scope of the ASGI spec), and where:
- ``receive`` is handed to the app untouched: the body, ``http.disconnect``, everything;
- ``http.response.start`` fixes the status, so the response hooks run there, before any body
  byte; our request-id header replaces any the app set (``send``);
- the response ends with the last ``http.response.body`` (``more_body`` false), or with the last
  ``http.response.trailers`` when the start announced trailers, or with ``http.response.pathsend``;
  duration and size are taken there, after the server accepted the message (``send``); the finish
  hooks run when the app returns (``finish``);
- an exception before ``http.response.start``: a JSON 500 that still carries the id, unless
  ``propagate_exceptions``; after it the response is broken, so the exception goes on to the
  server, which closes the connection (``AsgiFront.__call__``);
- a server ``send`` that fails (client gone) or an app that stops early ends the record once,
  with what was sent, and what the app raises about it is not counted as its error;
- the request context (id and trace id) is set in the task that serves the request, so the app's
  logs and the tasks it starts see it; it is reset in that task, after the app returned (a
  Starlette streaming body sends from a child task, where a reset would fail).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from time import perf_counter
from typing import Any

from ..request_id import new_request_id, parse_traceparent, request_context
from .record import LENGTHS, Hooks, RequestRecord, hook_failed, parse_length

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Where something in front of the app (a framework adapter, a router we know) puts the route
# template, as under WSGI.
ROUTE_KEY = "softfactory_obs.route"
EXCEPTION_KEY = "softfactory_obs.exception"
_HEADER_NAMES: dict[str, bytes] = {}  # header name -> its lower-case bytes, as in the scope


def _header_text(value: bytes) -> str:
    """A request header's value as text: the UTF-8 clients send (ASCII, mostly); bytes that are
    not UTF-8 replaced."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return value.decode("utf-8", "replace")


def _length(value: bytes) -> int | None:
    """A Content-Length header's byte count (see ``parse_length``), or None."""
    text = value.decode("latin-1")
    return LENGTHS.get(text) or parse_length(text)


class AsgiDriver:
    """What the ASGI driver needs of the front's configuration, decided once: the request-id policy
    and header, whether app exceptions propagate, and how a route template is read from the scope."""

    __slots__ = ("header", "propagate", "read", "request_ids", "route_of")

    def __init__(
        self, request_ids: Any, header_name: str, *, propagate: bool, route_of: Callable[[Scope], str | None]
    ) -> None:
        self.request_ids = request_ids
        self.header = header_name.lower().encode("latin-1")
        self.propagate = propagate
        self.route_of = route_of
        # The request headers read on every request, by name -> position in the front's pass. Our id
        # header last: a name configured to equal another one's is read as the id.
        self.read = {b"traceparent": 1, b"content-length": 2, b"user-agent": 3, self.header: 0}


class AsgiFront:
    """The coroutine an ASGI server calls, for a front that wraps an app (``asgi.AsgiMiddleware``):
    each ``http`` scope the front chooses to serve (``serving``) runs through a recorded
    ``AsgiCycle``; every other scope goes to ``passing`` (by default ``app``, untouched).

    The front's choice is a plain call from here, not a coroutine of its own awaiting this one:
    one coroutine per request fewer.
    """

    app: ASGIApp
    driver: AsgiDriver

    def serving(self, scope: Scope) -> tuple[Hooks, ASGIApp] | None:
        """The hooks and app that serve this ``http`` scope, or None to hand it to ``passing``."""
        raise NotImplementedError

    async def passing(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a scope not recorded as an HTTP request (lifespan, websocket, one an outer front
        records): ``app``'s, untouched, unless a front records it otherwise."""
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: PLR0915 - as WSGI's serve
        """Serve one connection scope; an ``http`` one is recorded (see the module doc)."""
        served = self.serving(scope) if scope["type"] == "http" else None
        if served is None:
            await self.passing(scope, receive, send)
            return
        hooks, app = served
        driver = self.driver
        cycle = AsgiCycle()
        cycle.started = perf_counter()
        cycle.environ = scope  # type: ignore[assignment]  # the protocol's own mapping
        found: list[bytes | None] = [None, None, None, None]
        read = driver.read
        for name, value in scope["headers"]:  # one pass for the headers read on every request
            if name in read:  # the last, if repeated
                found[read[name]] = value
        raw_id, traceparent, length, cycle._agent = found
        if raw_id is not None:
            client = scope.get("client")
            request_id, cycle.id_rejected = driver.request_ids.resolve_value(
                raw_id.decode("latin-1"), client[0] if client else None
            )
        else:
            request_id = new_request_id()
            cycle.id_rejected = False
        cycle.request_id = request_id
        trace_id = cycle.trace_id = parse_traceparent(traceparent.decode("latin-1")) if traceparent else None
        cycle.method = scope["method"]
        cycle.threaded = True  # event loops in other threads may serve requests too: hooks take locks
        cycle.path = scope["path"]
        cycle.script_name = scope.get("root_path", "")
        cycle.request_bytes = _length(length) if length else None
        cycle.status = cycle.route = cycle.endpoint = cycle.exc = cycle.span_id = None
        cycle.duration = 0.0
        cycle.state = hooks.state.copy()
        cycle.response_bytes = 0
        cycle._driver = driver
        cycle._hooks = hooks
        cycle._send = send
        cycle._app_headers = ()
        cycle._sent = 0
        cycle._trailers = cycle._ended = cycle._gone = False
        token = request_context.set((request_id, trace_id, None))
        try:
            for hook in hooks.start:
                try:
                    hook(cycle)
                except Exception as exc:
                    hook_failed(hook, exc)
            try:
                await app(scope, receive, cycle.send)
            except Exception as exc:
                if not cycle._gone:  # what an app makes of a client gone (ClientDisconnect) is not its error
                    cycle.exc = exc
                if driver.propagate or cycle.status is not None:  # the status went out: the response is broken
                    raise
                await cycle.answer_500()
            except BaseException as exc:  # cancelled (the server shutting down), KeyboardInterrupt
                cycle.exc = exc
                raise
        finally:  # once, however the app (or our 500, cancelled while it is sent) ended
            cycle.finish()
            request_context.reset(token)


class ScopeRecord(RequestRecord):
    """A record whose ``environ`` is an ASGI connection scope (``http`` or ``websocket``): what the
    recorders ask of the request, read from the scope."""

    __slots__ = ()

    def query_string(self) -> str:
        """``query_string`` of the scope, as text."""
        query = self.environ.get("query_string", b"")
        return query.decode("utf-8", "replace") if query else ""

    def header(self, name: str) -> str | None:
        """A request header from the scope's ``headers``, as text (the first, if repeated)."""
        wanted = _HEADER_NAMES.get(name)
        if wanted is None:
            wanted = name.lower().encode("latin-1")
            if len(_HEADER_NAMES) < 256:  # a program asks for a handful
                _HEADER_NAMES[name] = wanted
        for key, value in self.environ.get("headers", ()):
            if key == wanted:
                return _header_text(value)
        return None

    def remote_address(self) -> str:
        """The scope's ``client`` host."""
        client = self.environ.get("client")
        return str(client[0]) if client else ""

    def remote_user(self) -> str | None:
        """None: ASGI has no authenticated user of the server's."""
        return None


class AsgiCycle(ScopeRecord):
    """The record of one ASGI request, and the ``send`` the app calls; made by ``AsgiFront``."""

    __slots__ = (
        "_agent",
        "_app_headers",
        "_driver",
        "_ended",
        "_gone",
        "_hooks",
        "_send",
        "_sent",
        "_trailers",
    )

    _agent: bytes | None  # the User-Agent header, read in the front's pass over the headers
    _app_headers: Sequence[Sequence[bytes]]  # the response headers as the app sent them
    _driver: AsgiDriver
    _ended: bool  # duration and size are taken
    _gone: bool  # the server's send failed: the client left
    _hooks: Hooks
    _send: Send
    _sent: int
    _trailers: bool  # the start announced trailers: they, not the last body, end the response

    def user_agent(self) -> str | None:
        """The User-Agent header, as text (read with the headers every request reads)."""
        return None if self._agent is None else _header_text(self._agent)

    def access_details(self) -> tuple[str, str | None, str, str | None]:
        """The four methods above, in one call (the access line asks for them on every request)."""
        scope = self.environ
        query = scope.get("query_string")
        client = scope.get("client")
        return (
            query.decode("utf-8", "replace") if query else "",
            None if self._agent is None else _header_text(self._agent),
            str(client[0]) if client else "",
            None,
        )

    async def send(self, message: Message) -> None:
        """The ``send`` the app calls: records the response as it goes to the server."""
        kind = message["type"]
        if kind == "http.response.body":
            try:
                await self._send(message)
            except BaseException:
                self._client_gone()
                raise
            self._sent += len(message.get("body", b""))
            if not message.get("more_body", False) and not self._trailers:
                self._end(complete=True)
        elif kind == "http.response.start":
            # Our id header goes in the message in place of any the app set (as Starlette's own
            # middleware do, the message is changed in place; header names are lower case, as the
            # spec requires of the app). Then the status is final: recorded, the response hooks run.
            # A status set means the response started: the app's headers were read without error.
            ours = self._driver.header
            headers = message.get("headers", ())
            if type(headers) is not list:  # any iterable, read more than once below
                headers = list(headers)
            for name, _ in headers:
                if name == ours:  # the app set its own: ours replaces it
                    headers = [header for header in headers if header[0] != ours]
                    break
            self._app_headers = headers
            message["headers"] = [*headers, (ours, self.request_id.encode())]  # ids are ASCII (request_id.py)
            if "trailers" in message:
                self._trailers = bool(message["trailers"])
            self.status = message["status"]
            self._record()
            try:
                await self._send(message)
            except BaseException:
                self._client_gone()
                raise
        elif kind == "http.response.trailers":
            await self._send(message)
            if not message.get("more_trailers", False):
                self._end(complete=True)
        else:  # extensions: pathsend ends the response; others pass through
            await self._send(message)
            if kind == "http.response.pathsend":
                self._end(complete=True)

    def _record(self) -> None:
        scope = self.environ
        route = scope[ROUTE_KEY] if ROUTE_KEY in scope else self._driver.route_of(scope)
        self.route = route
        if route is not None and self.exc is None and EXCEPTION_KEY in scope:
            self.exc = scope[EXCEPTION_KEY]
        for hook in self._hooks.response:
            try:
                hook(self)
            except Exception as exc:
                hook_failed(hook, exc)

    async def answer_500(self) -> None:
        """The app failed before ``http.response.start``: a JSON 500 that still carries the request id."""
        body = json.dumps({"error": "internal server error", "request_id": self.request_id}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        try:
            await self.send({"type": "http.response.start", "status": 500, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
        except Exception:  # the client is gone (send said so): nothing to answer
            return

    def _client_gone(self) -> None:
        self._gone = True
        self._end(complete=False)

    def _end(self, complete: bool) -> None:
        """The response ended (``complete``) or was cut: its duration and size, taken once. The size
        is what went through ``send``; for a complete response with no body through it (a HEAD's,
        a file the server sent itself), its declared Content-Length."""
        if self._ended:
            return
        self._ended = True
        self.duration = perf_counter() - self.started
        sent = self._sent
        if complete and not sent and self._app_headers:  # a HEAD's, or a file the server sent itself
            declared = self._declared_length()
            self.response_bytes = sent if declared is None else declared
        else:
            self.response_bytes = sent

    def _declared_length(self) -> int | None:
        """The response's Content-Length as the app declared it, when valid."""
        for name, value in self._app_headers:
            if name == b"content-length":
                return _length(value)
        return None

    def finish(self) -> None:
        """Run once (``AsgiFront.__call__``), when the app returned or raised: the finish hooks.
        They wait for the app, not for the last body message, so an exception the app raises
        after answering (Starlette's 500 page re-raises) is on the record; duration and size were
        taken when the response ended (``_end``), so background work after it is not timed."""
        if not self._ended:
            self._end(complete=False)
        if self.status is None:  # nothing was answered: the app raised or the client left first
            self.status = 500
            self._record()
        for hook in self._hooks.finish:
            try:
                hook(self)
            except Exception as exc:
                hook_failed(hook, exc)

"""The ASGI driver of a ``websocket`` connection scope: the request id in the context the app's
logs read and in the handshake's response, and a recorder told when the handshake was decided
and when an accepted connection ended.

ASGI rules this file follows (the WebSocket connection scope of the ASGI spec), and where:
- every message passes through unchanged both ways, except that ``websocket.accept`` carries our
  id header in place of any the app set, where the server's ``spec_version`` (2.0 when absent)
  is 2.1 or later, the version that gave the accept its headers (``WebsocketConnection.send``);
- the handshake is decided by the app's first ``websocket.accept`` (accepted, once the server
  took it), or by a ``websocket.close`` or ``websocket.http.response.start`` before it (denied);
  an app that returns or raises before either, or whose accept the server refused, failed
  (``finish``);
- an accepted connection ends at the first ``websocket.close`` the app sends or
  ``websocket.disconnect`` it receives, or when the app returns or raises, whichever comes first;
- the app's exceptions go on to the server untouched; a recorder that fails is reported and
  changes nothing of the connection.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from .._failures import report_failure
from ..request_id import new_request_id, parse_traceparent, request_context
from .asgi import ROUTE_KEY, ASGIApp, AsgiDriver, Message, Receive, Scope, ScopeRecord, Send

if TYPE_CHECKING:
    from ..metrics.websocket import WebsocketMetrics
    from ..routes import Endpoints

# status, as the endpoint policy (``routes.resolve``) and the record read it, per outcome
_STATUS = {"accepted": 101, "denied": 403, "failed": 500}


def _accept_has_headers(scope: Scope) -> bool:
    """The server speaks ASGI spec 2.1 or later, where ``websocket.accept`` has ``headers``."""
    version = (scope.get("asgi") or {}).get("spec_version", "2.0")
    try:
        return tuple(int(part) for part in str(version).split(".")[:2]) >= (2, 1)
    except ValueError:
        return False


class WebsocketConnection(ScopeRecord):
    """One websocket connection, served by ``serve``: the record the endpoint policy and the
    recorder read (``status`` 101 once accepted, 403 denied, 500 failed; ``duration`` from the
    accept to the end), and the ``receive`` and ``send`` the app calls."""

    __slots__ = ("_driver", "_echo", "_endpoints", "_metrics", "_opened", "_phase", "_receive", "_send")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        driver: AsgiDriver,
        endpoints: Endpoints,
        metrics: WebsocketMetrics,
    ) -> None:
        raw_id = traceparent = None
        for name, value in scope.get("headers", ()):
            if name == driver.header:
                raw_id = value
            elif name == b"traceparent":
                traceparent = value
        if raw_id is not None:  # the same policy as an HTTP request's (RequestIdPolicy)
            client = scope.get("client")
            self.request_id, self.id_rejected = driver.request_ids.resolve_value(
                raw_id.decode("latin-1"), client[0] if client else None
            )
        else:
            self.request_id, self.id_rejected = new_request_id(), False
        self.trace_id = parse_traceparent(traceparent.decode("latin-1")) if traceparent else None
        self.span_id = None
        self.environ = scope  # type: ignore[assignment]  # the protocol's own mapping
        self.method = "GET"  # the handshake's
        self.path = scope.get("path", "")
        self.script_name = scope.get("root_path", "")
        self.started = perf_counter()
        self.threaded = True
        self.state = []
        self.status = self.route = self.endpoint = self.exc = self.request_bytes = None
        self.duration = 0.0
        self.response_bytes = 0
        self._receive = receive
        self._send = send
        self._driver = driver
        self._endpoints = endpoints
        self._metrics = metrics
        self._opened = 0.0
        self._echo = _accept_has_headers(scope)  # our id header goes in the accept
        self._phase = "pending"  # -> "open" -> "ended", or -> "ended" (denied, failed)

    async def serve(self, app: ASGIApp) -> None:
        """Run ``app`` on this connection, recorded (see the module doc), with the request id and
        trace id in the context its logs and tasks read."""
        token = request_context.set((self.request_id, self.trace_id, None))
        try:
            await app(self.environ, self.receive, self.send)
        except BaseException as exc:
            self.exc = exc
            raise
        finally:
            self.finish()
            request_context.reset(token)

    async def send(self, message: Message) -> None:
        """The ``send`` the app calls: decides the handshake, ends the connection at a close."""
        kind = message["type"]
        if self._phase == "pending":
            if kind == "websocket.accept":
                if self._echo:
                    ours = self._driver.header
                    headers = [header for header in message.get("headers") or () if header[0] != ours]
                    message["headers"] = [*headers, (ours, self.request_id.encode())]  # ids are ASCII
                try:
                    await self._send(message)
                except BaseException:
                    self._decide("failed")
                    raise
                self._decide("accepted")
                return
            if kind in ("websocket.close", "websocket.http.response.start"):
                self._decide("denied")
        elif kind == "websocket.close":
            self._end()
        await self._send(message)

    async def receive(self) -> Message:
        """The ``receive`` the app calls: a disconnect ends the connection."""
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self._end()
        return message

    def finish(self) -> None:
        """The app returned or raised: a handshake still undecided failed; an open connection ended."""
        if self._phase == "pending":
            self._decide("failed")
        self._end()

    def _decide(self, outcome: str) -> None:
        self._phase = "open" if outcome == "accepted" else "ended"
        self._opened = perf_counter()
        self.status = _STATUS[outcome]
        scope = self.environ
        self.route = scope[ROUTE_KEY] if ROUTE_KEY in scope else self._driver.route_of(scope)
        try:
            self._endpoints.of(self)
            self._metrics.decided(self, outcome)
        except Exception as exc:
            report_failure(self._metrics.component, exc)

    def _end(self) -> None:
        if self._phase != "open":
            return
        self._phase = "ended"
        self.duration = perf_counter() - self._opened
        try:
            self._metrics.ended(self)
        except Exception as exc:
            report_failure(self._metrics.component, exc)

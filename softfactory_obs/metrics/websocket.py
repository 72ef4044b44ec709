"""WebSocket connections under ASGI, by endpoint: how each handshake was decided, how many
connections are open, and how long they stayed open.

- ``websocket_connections_total{outcome}``: counted once per connection, when its handshake is
  decided: ``accepted``, ``denied`` (the app closed, or answered with an HTTP response, before
  accepting) or ``failed`` (the app returned or raised without deciding, or the server could not
  send its accept);
- ``websocket_connections_open``: accepted and not yet ended (a live gauge: a killed worker's
  connections vanish with it);
- ``websocket_connection_duration_seconds``: from the accept to the end (a close either side
  sent, or the app returning).

Per connection, not per message: a stream of messages costs nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings import Settings
from ..store.metrics import Counter, Gauge, Histogram, Registry
from .http import DefaultLabels

if TYPE_CHECKING:
    from ..request.record import RequestRecord

OUTCOMES = ("accepted", "denied", "failed")
# From a second to half a day: connections live as long as a page stays open.
DURATION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0)


class WebsocketMetrics:
    """The recorder of websocket connections (see the module doc). The driver
    (``request.asgi_websocket``) calls ``decided`` once per connection and ``ended`` once per
    accepted one, with the connection's record: its ``endpoint``, ``environ`` (the scope) and
    ``duration`` set."""

    component = "websocket metrics"

    def __init__(self, registry: Registry, settings: Settings) -> None:
        p = f"{settings.namespace}_" if settings.namespace else ""
        extra = list(settings.default_labels)
        self.default_labels = DefaultLabels(settings)
        self.connections = Counter(
            f"{p}websocket_connections_total",
            "WebSocket handshakes, by how the app decided them",
            ["endpoint", "outcome", *extra],
            registry=registry,
        )
        self.open = Gauge(
            f"{p}websocket_connections_open",
            "WebSocket connections accepted and not yet ended, all workers",
            ["endpoint", *extra],
            mode="livesum",
            registry=registry,
        )
        self.duration = Histogram(
            f"{p}websocket_connection_duration_seconds",
            "Time from a WebSocket's accept until it ended",
            ["endpoint", *extra],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def decided(self, record: RequestRecord, outcome: str) -> None:
        """The handshake of ``record``'s connection was decided (one of ``OUTCOMES``)."""
        extra = self.default_labels.of(record.environ)
        endpoint = record.endpoint or ""
        self.connections.labels(endpoint, outcome, *extra).inc()
        if outcome == "accepted":
            self.open.labels(endpoint, *extra).inc()

    def ended(self, record: RequestRecord) -> None:
        """An accepted connection ended, ``record.duration`` seconds after its accept."""
        extra = self.default_labels.of(record.environ)
        endpoint = record.endpoint or ""
        self.open.labels(endpoint, *extra).dec()
        self.duration.labels(endpoint, *extra).observe(record.duration)

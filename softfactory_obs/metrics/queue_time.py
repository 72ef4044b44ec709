"""``http_request_queue_seconds``: how long a request waited between the proxy in front and a worker.

The proxy stamps each request with when it arrived (nginx: ``proxy_set_header X-Request-Start
"t=${msec}"``; Heroku's router sends milliseconds) and a start hook subtracts that from the
worker's clock. It is the one signal of too few workers: a request waiting in the listen backlog
is invisible to every timer inside the worker, so latency looks flat while clients wait.
Off unless ``queue_time_header`` names the header.
"""

from __future__ import annotations

import re
from time import time
from typing import TYPE_CHECKING, Any

from ..request.record import RequestRecord
from ..settings import Settings
from ..store.metrics import Histogram, Registry
from .http import HttpMetrics

if TYPE_CHECKING:
    from ..components import Host

_STAMP = re.compile(r"(?:t=)?(\d{1,19}(?:\.\d{1,9})?)", re.ASCII)  # without ASCII, \d takes any script's digits
# A stamp's unit is the largest that puts it after 2000-01-01, as New Relic's agents tell them apart:
# seconds are 10 digits now, milliseconds 13, microseconds 16, nanoseconds 19.
_UNITS = (1e9, 1e6, 1e3, 1.0)
_EARLIEST = 946_684_800.0
# Outside these the stamp is not this request's arrival (a stale or made-up header): not observed.
# A little ahead is the proxy's clock running ahead of ours: observed as no wait.
MAX_AHEAD_SECONDS = 1.0
MAX_WAIT_SECONDS = 3600.0


def request_start(value: object) -> float | None:
    """The epoch seconds an ``X-Request-Start`` value stands for (``t=`` optional; seconds,
    milliseconds, microseconds or nanoseconds, with or without a fraction), or None."""
    if type(value) is not str:
        return None
    match = _STAMP.fullmatch(value.strip())
    if match is None:
        return None
    number = float(match[1])
    for unit in _UNITS:
        seconds = number / unit
        if seconds > _EARLIEST:
            return seconds
    return None


class QueueTime:
    """Start hook: observes the wait of the requests the HTTP metrics measure (their skip rules and
    default labels, asked of ``http`` itself: it does not matter which hook runs first)."""

    component = "queue time"

    def __init__(self, registry: Registry, settings: Settings, http: HttpMetrics) -> None:
        p = f"{settings.namespace}_" if settings.namespace else ""
        self.header = settings.queue_time_header
        self.http = http
        self.histogram = Histogram(
            f"{p}http_request_queue_seconds",
            f"Time from the proxy's {settings.queue_time_header} stamp until a worker took the request",
            list(settings.default_labels),
            buckets=settings.duration_buckets,
            registry=registry,
        )
        self._children: dict[tuple[str, ...], Any] = {}  # by default label values: bounded by their allow-lists

    def install(self, host: Host) -> None:
        """A start hook: the stamp is read before the app runs."""
        host.add_start_hook(self)

    def __call__(self, record: RequestRecord) -> None:
        value = record.header(self.header)
        if value is None:
            return
        live = self.http.live_for(record)
        if live is None:
            return
        started = request_start(value)
        if started is None:
            return
        waited = time() - started
        if not -MAX_AHEAD_SECONDS <= waited <= MAX_WAIT_SECONDS:
            return
        child = self._children.get(live.labels)
        if child is None:
            child = self._children[live.labels] = self.histogram.labels(*live.labels)
        child.observe(max(waited, 0.0))

"""Per-request HTTP metrics, fed by three hooks of the ``RequestCycle``.

- start: ``http_requests_in_progress`` goes up (a live gauge: a killed worker's +1 vanishes);
- response (status final, before the first body byte): the endpoint is resolved and capped, and
  ``http_requests_total`` counted, so a worker killed mid-send has already counted what it answered;
- finish (body sent and closed): duration, slow requests, sizes, exceptions; in-progress goes down.

Label values are bounded: methods outside the standard set are ``_OTHER``, endpoints are route
templates under a cross-worker cap, statuses are 3-digit codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .routes import OVERFLOW, EndpointCap, RouteTable, resolve
from .settings import Settings
from .store.metrics import Counter, Gauge, Histogram, Registry

if TYPE_CHECKING:
    from ._request import RequestCycle

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0)
SKIPPED: tuple[Any, ...] = ("skipped",)  # a unique object: marks requests skip_paths/skip_methods exclude
MAX_ENDPOINT_LENGTH = 256  # a longer "template" is a path no route table or normaliser tamed


def _exemplar_id(cycle: RequestCycle) -> bytes | None:
    """``trace_id=<32 hex>`` when the client sent a traceparent, else ``request_id=<id>`` (ids are ASCII)."""
    if cycle.trace_id is not None:
        return b"trace_id=" + cycle.trace_id.encode()
    if len(cycle.request_id) <= 60:  # what fits the slot; longer client ids are not cut into false ones
        return b"request_id=" + cycle.request_id.encode()
    return None


class HttpMetrics:
    component = "http metrics"

    def __init__(self, registry: Registry, settings: Settings, directory: Callable[[], str | None]) -> None:
        p = f"{settings.namespace}_" if settings.namespace else ""
        extra = list(settings.default_labels)
        endpoint_labels = ["method", "endpoint", *extra]
        ex = settings.exemplars
        self.requests = Counter(f"{p}http_requests_total", "HTTP requests answered",
                                ["method", "endpoint", "status", *extra], exemplars=ex, registry=registry)
        self.duration = Histogram(f"{p}http_request_duration_seconds",
                                  "Time from the request's arrival until its body was sent and closed",
                                  endpoint_labels, buckets=settings.duration_buckets, exemplars=ex, registry=registry)
        self.exemplars = ex
        self.in_progress = Gauge(f"{p}http_requests_in_progress", "Requests being served now, all workers",
                                 ["method", *extra], mode="livesum", registry=registry)
        self.slow = Counter(f"{p}http_slow_requests_total",
                            "Requests slower than the slow_request_seconds setting (1 s by default)", endpoint_labels,
                            registry=registry)
        self.exceptions = Counter(f"{p}http_request_exceptions_total", "Exceptions that escaped the app",
                                  ["method", "endpoint", "exception", *extra], registry=registry)
        self.request_size = Histogram(f"{p}http_request_size_bytes", "Request body sizes (Content-Length)",
                                      endpoint_labels, buckets=SIZE_BUCKETS, registry=registry)
        self.response_size = Histogram(f"{p}http_response_size_bytes", "Response body sizes, as sent",
                                       endpoint_labels, buckets=SIZE_BUCKETS, registry=registry)
        self.overflow = Counter("softfactory_obs_endpoint_overflow_total",
                                "Requests whose endpoint was folded into __overflow__ by the max_endpoints cap",
                                registry=registry)
        self.table = RouteTable(settings.routes)
        self.cap = EndpointCap(settings.max_endpoints, directory)
        self.slow_seconds = settings.slow_request_seconds
        self.skip_exact, self.skip_patterns = settings.skip
        self.skip_methods = frozenset(settings.skip_methods)
        self._by_method: dict[tuple[str, ...], Any] = {}
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        static = {k: v for k, v in settings.default_labels.items() if isinstance(v, str)}
        self._dynamic = [(i, spec) for i, (k, spec) in enumerate(settings.default_labels.items()) if k not in static]
        self._static = tuple(static.get(k, "") for k in settings.default_labels)

    def _labels_for(self, environ: dict[str, Any]) -> tuple[str, ...]:
        """Default label values for one request: static ones as given, computed ones from their allow-list."""
        if not self._dynamic:
            return self._static
        values = list(self._static)
        for i, (compute, allowed) in self._dynamic:
            try:
                value = compute(environ)
            except Exception:
                value = None
            values[i] = value if value in allowed else "other"
        return tuple(values)

    def _skipped(self, method: str, path: str) -> bool:
        return (method in self.skip_methods or path in self.skip_exact
                or any(p.match(path) for p in self.skip_patterns))

    def start(self, cycle: RequestCycle) -> None:
        environ = cycle.environ
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            method = "_OTHER"
        if (self.skip_methods or self.skip_exact or self.skip_patterns) and self._skipped(
                method, environ.get("PATH_INFO", "")):
            cycle.http_children = SKIPPED
            return
        extra = cycle.http_labels = self._labels_for(environ)
        key = (method, *extra) if extra else (method,)
        gauge = self._by_method.get(key)
        if gauge is None:
            gauge = self._by_method[key] = self.in_progress.labels(*key)
        gauge.inc()
        cycle.http_method = method

    def count(self, cycle: RequestCycle) -> None:
        if cycle.http_children is SKIPPED:
            return
        method = cycle.http_method or "_OTHER"
        status = cycle.status[:3] if cycle.status else "500"  # no status at all: the app raised first
        endpoint = resolve(cycle.environ, self.table, cycle.status)
        if len(endpoint) > MAX_ENDPOINT_LENGTH or not self.cap.admit(endpoint):
            endpoint = OVERFLOW
            self.overflow.inc()
        cycle.endpoint = endpoint
        extra = cycle.http_labels
        key = (method, endpoint, status, *extra) if extra else (method, endpoint, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, endpoint, status, *extra),
                self.duration.labels(method, endpoint, *extra),
                self.slow.labels(method, endpoint, *extra),
                self.request_size.labels(method, endpoint, *extra),
                self.response_size.labels(method, endpoint, *extra),
            )
        cycle.http_children = children
        children[0].inc(1, _exemplar_id(cycle) if self.exemplars else None)

    def observe(self, cycle: RequestCycle) -> None:
        children = cycle.http_children
        if children is SKIPPED:
            return
        if cycle.http_method is not None:
            extra = cycle.http_labels
            self._by_method[(cycle.http_method, *extra) if extra else (cycle.http_method,)].dec()
        if not children:  # the response hook failed: nothing more to attribute
            return
        duration = cycle.duration
        children[1].observe(duration, _exemplar_id(cycle) if self.exemplars else None)
        if duration > self.slow_seconds:
            children[2].inc()
        length = cycle.environ.get("CONTENT_LENGTH")
        if length and length.isdigit():  # never int() an unchecked header
            children[3].observe(int(length))
        declared = cycle.content_length
        children[4].observe(int(declared) if declared and declared.isdigit() else cycle.sent)
        if cycle.exc is not None and isinstance(cycle.exc, Exception):
            method, endpoint = cycle.http_method or "_OTHER", cycle.endpoint or ""
            self.exceptions.labels(method, endpoint, type(cycle.exc).__name__, *cycle.http_labels).inc()

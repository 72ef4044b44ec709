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
        self.skipping = bool(self.skip_methods or self.skip_exact or self.skip_patterns)
        self._by_method: dict[tuple[str, ...], Any] = {}
        self._children: dict[tuple[str, ...], tuple[Any, ...]] = {}
        static = {k: v for k, v in settings.default_labels.items() if isinstance(v, str)}
        self._dynamic = [(i, spec) for i, (k, spec) in enumerate(settings.default_labels.items()) if k not in static]
        self._static = tuple(static.get(k, "") for k in settings.default_labels)

    def _labels_for(self, environ: dict[str, Any]) -> tuple[str, ...]:
        """Default label values for one request: static ones as given, computed ones from their allow-list."""
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

    # Under a server that says wsgi.multithread is false (gunicorn's sync and gevent workers), only
    # the thread serving requests writes these children: the store's lock (a third of a write's
    # cost) is skipped. Threaded servers take it on every write.

    def start(self, cycle: RequestCycle) -> None:
        environ = cycle.environ
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            method = "_OTHER"
        if self.skipping and self._skipped(method, environ.get("PATH_INFO", "")):
            cycle.http_children = SKIPPED
            return
        extra = cycle.http_labels = self._labels_for(environ) if self._dynamic else self._static
        key = (method, *extra)
        gauge = self._by_method.get(key)
        if gauge is None:
            gauge = self._by_method[key] = self.in_progress.labels(*key)
        if environ.get("wsgi.multithread", True):
            gauge.inc()
        else:
            gauge.add_unlocked(1.0)
        cycle.http_gauge = gauge
        cycle.http_method = method

    def count(self, cycle: RequestCycle) -> None:
        if cycle.http_children is SKIPPED:
            return
        method = cycle.http_method or "_OTHER"
        status = cycle.status[:3] if cycle.status else "500"  # no status at all: the app raised first
        endpoint = resolve(cycle.environ, self.table, cycle.status)
        if endpoint not in self.cap.admitted and (
                len(endpoint) > MAX_ENDPOINT_LENGTH or not self.cap.admit(endpoint)):
            endpoint = OVERFLOW
            self.overflow.inc()
        cycle.endpoint = endpoint
        extra = cycle.http_labels
        key = (method, endpoint, status, *extra)
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
        exemplar = cycle.http_exemplar = _exemplar_id(cycle) if self.exemplars else None
        if cycle.environ.get("wsgi.multithread", True):
            children[0].inc(1, exemplar)
        else:
            children[0].inc_unlocked(exemplar)

    def observe(self, cycle: RequestCycle) -> None:
        children = cycle.http_children
        if children is SKIPPED:
            return
        environ = cycle.environ
        threaded = environ.get("wsgi.multithread", True)
        gauge = cycle.http_gauge
        if gauge is not None:
            if threaded:
                gauge.dec()
            else:
                gauge.add_unlocked(-1.0)
        if not children:  # the response hook failed: nothing more to attribute
            return
        duration = cycle.duration
        length = environ.get("CONTENT_LENGTH")
        size = cycle.response_size()
        if threaded:
            children[1].observe(duration, cycle.http_exemplar)
            if length and length.isdigit():  # never int() an unchecked header
                children[3].observe(int(length))
            children[4].observe(size)
            if duration > self.slow_seconds:
                children[2].inc()
        else:
            children[1].observe_unlocked(duration, cycle.http_exemplar)
            if length and length.isdigit():
                children[3].observe_unlocked(int(length))
            children[4].observe_unlocked(size)
            if duration > self.slow_seconds:
                children[2].inc_unlocked()
        if cycle.exc is not None and isinstance(cycle.exc, Exception):
            method, endpoint = cycle.http_method or "_OTHER", cycle.endpoint or ""
            self.exceptions.labels(method, endpoint, type(cycle.exc).__name__, *cycle.http_labels).inc()

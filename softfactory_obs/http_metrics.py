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
from math import inf
from typing import TYPE_CHECKING, Any

from ._request import parse_length
from .access_log import MAX_CACHED_TEXT
from .process_state import on_new_process
from .routes import OVERFLOW, ROUTE_KEY, EndpointCap, RouteTable, resolve
from .settings import Settings
from .store.metrics import (
    MAX_EXEMPLAR_BYTES,
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Registry,
)

if TYPE_CHECKING:
    from ._request import RequestCycle

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0)
MAX_ENDPOINT_LENGTH = 256  # a longer "template" is a path no route table or normaliser tamed


class HttpMetrics:
    """The HTTP metrics recorder: its families, the label policy, and three request hooks."""

    component = "http metrics"

    def __init__(self, registry: Registry, settings: Settings, directory: Callable[[], str | None]) -> None:
        p = f"{settings.namespace}_" if settings.namespace else ""
        extra = list(settings.default_labels)
        endpoint_labels = ["method", "endpoint", *extra]
        ex = settings.exemplars
        self.requests = Counter(
            f"{p}http_requests_total",
            "HTTP requests answered",
            ["method", "endpoint", "status", *extra],
            exemplars=ex,
            registry=registry,
        )
        self.duration = Histogram(
            f"{p}http_request_duration_seconds",
            "Time from the request's arrival until its body was sent and closed",
            endpoint_labels,
            buckets=settings.duration_buckets,
            exemplars=ex,
            registry=registry,
        )
        self.exemplar_interval = float(settings.exemplar_interval_seconds)
        # A new series' exemplar due times (the counter's, each latency bucket's): now, or never.
        first = 0.0 if ex else inf
        self._no_exemplar_yet = (first, [first] * len(self.duration.bounds))
        self.in_progress = Gauge(
            f"{p}http_requests_in_progress",
            "Requests being served now, all workers",
            ["method", *extra],
            mode="livesum",
            registry=registry,
        )
        self.slow = Counter(
            f"{p}http_slow_requests_total",
            "Requests slower than the slow_request_seconds setting (1 s by default)",
            endpoint_labels,
            registry=registry,
        )
        self.exceptions = Counter(
            f"{p}http_request_exceptions_total",
            "Exceptions that escaped the app",
            ["method", "endpoint", "exception", *extra],
            registry=registry,
        )
        self.request_size = Histogram(
            f"{p}http_request_size_bytes",
            "Request body sizes (Content-Length)",
            endpoint_labels,
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.response_size = Histogram(
            f"{p}http_response_size_bytes",
            "Response body sizes, as sent",
            endpoint_labels,
            buckets=SIZE_BUCKETS,
            registry=registry,
        )
        self.overflow = Counter(
            "softfactory_obs_endpoint_overflow_total",
            "Requests whose endpoint was folded into __overflow__ by the max_endpoints cap",
            registry=registry,
        )
        self.table = RouteTable(settings.routes)
        self.cap = EndpointCap(settings.max_endpoints, directory)
        self.slow_seconds = float(settings.slow_request_seconds)
        self.skip_exact, self.skip_patterns = settings.skip
        self.skip_methods = frozenset(settings.skip_methods)
        self.skipping = bool(self.skip_methods or self.skip_exact or self.skip_patterns)
        self._live: dict[str, _Live] = {}  # by REQUEST_METHOD, when no label is computed per request
        self._by_labels: dict[tuple[str, ...], _Live] = {}
        on_new_process(self._forget_due_times, component="http metrics after fork")
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
        return method in self.skip_methods or path in self.skip_exact or any(p.match(path) for p in self.skip_patterns)

    # Under a server that says wsgi.multithread is false (gunicorn's sync and gevent workers), only
    # the thread serving requests writes these series: the store's lock is skipped and each hook
    # writes its slots inline (_Series). Threaded servers go through the children's locked writes.

    def start(self, cycle: RequestCycle) -> None:
        """Start hook: the in-progress gauge goes up for a request that is measured."""
        environ = cycle.environ
        live = self._live.get(environ.get("REQUEST_METHOD"))  # type: ignore[arg-type]
        if live is None or self.skipping:
            live = self._live_for(environ)
            if live is None:
                return
        if environ.get("wsgi.multithread", True):  # read once: the other hooks go by cycle.http_locked
            cycle.http_locked = True
            live.gauge.inc()
        else:
            cycle.http_locked = False
            live.gauge.inc_unlocked()
        cycle.http = live

    def _live_for(self, environ: dict[str, Any]) -> _Live | None:
        """The request's method and default labels (None when skipped), cached when they are static."""
        method = environ.get("REQUEST_METHOD", "")
        if method not in METHODS:
            method = "_OTHER"
        if self.skipping and self._skipped(method, environ.get("PATH_INFO", "")):
            return None
        labels = self._labels_for(environ) if self._dynamic else self._static
        key = (method, *labels)
        live = self._by_labels.get(key)
        if live is None:
            live = self._by_labels[key] = _Live(self.in_progress.labels(*key), method, labels)
            if not self._dynamic and method == environ.get("REQUEST_METHOD"):
                self._live[method] = live
        return live

    def count(self, cycle: RequestCycle) -> None:
        """Response hook: the request counted under its endpoint and status, before the body goes
        out."""
        live = cycle.http
        if live is None:
            return
        environ = cycle.environ
        status = cycle.status or _STATUS_500  # no status at all: the app raised first
        # The series by what the server sent, when no mount point or adapter route is involved:
        # the common case skips endpoint resolution (bounded: paths are the client's to choose).
        by_path = None if environ.get("SCRIPT_NAME") or ROUTE_KEY in environ else (environ.get("PATH_INFO"), status)
        series = live.by_path.get(by_path) if by_path is not None else None
        if series is None:
            series = self._series_for(cycle, live, status, by_path)
        if series.overflow:
            self.overflow.inc()
        cycle.endpoint = series.endpoint
        cycle.http_series = series
        if cycle.http_locked:
            series.requests.inc()
        else:
            series.requests.inc_unlocked()
        if cycle._started >= series.r_due:  # an exemplar is kept at least exemplar_interval_seconds
            exemplar = _exemplar(cycle)
            if exemplar is not None:
                series.r_due = cycle._started + self.exemplar_interval
                series.requests.set_exemplar(1.0, exemplar)

    def _series_for(self, cycle: RequestCycle, live: _Live, status: str, by_path: tuple[Any, str] | None) -> _Series:
        endpoint = resolve(cycle.environ, self.table, status)
        overflow = endpoint not in self.cap.admitted and (
            len(endpoint) > MAX_ENDPOINT_LENGTH or not self.cap.admit(endpoint)
        )
        if overflow:
            endpoint = OVERFLOW
        series = live.series.get((endpoint, status))
        if series is None:
            method, extra, code = live.method, live.labels, status[:3]
            series = _Series(
                endpoint,
                self.requests.labels(method, endpoint, code, *extra),
                self.duration.labels(method, endpoint, *extra),
                self.response_size.labels(method, endpoint, *extra),
                self.request_size.labels(method, endpoint, *extra),
                due=self._no_exemplar_yet,
            )
            if len(live.series) < _CACHED:  # bounded by the endpoint cap, unless an app makes up reason phrases
                live.series[(endpoint, status)] = series
        if overflow:
            series = series.folded()  # the overflow counter counts each request it folds
        if by_path is not None and len(live.by_path) < _CACHED and len(str(by_path[0])) <= MAX_CACHED_TEXT:
            live.by_path[by_path] = series
        return series

    def observe(self, cycle: RequestCycle) -> None:
        """Finish hook: duration, sizes, slow requests and exceptions; the in-progress gauge goes
        down."""
        live = cycle.http
        if live is None:
            return
        series = cycle.http_series
        duration = cycle.duration
        length = cycle.environ.get("CONTENT_LENGTH")  # the client's: never int() an unchecked header
        request_size = parse_length(length) if length else None
        if cycle.http_locked:
            live.gauge.dec()
            if series is None:  # the response hook failed: nothing more to attribute
                return
            n = series.duration.observe(duration)
            series.response_size.observe(cycle.size)
            if request_size is not None:
                series.request_size.observe(request_size)
        else:
            live.gauge.inc_unlocked(-1.0)
            if series is None:
                return
            n = series.duration.observe_unlocked(duration)
            series.response_size.observe_unlocked(cycle.size)
            if request_size is not None:
                series.request_size.observe_unlocked(request_size)
        if cycle._started >= series.d_due[n]:  # at most one exemplar per bucket and interval
            exemplar = _exemplar(cycle)
            if exemplar is not None:
                series.d_due[n] = cycle._started + self.exemplar_interval
                series.duration.set_exemplar(n, duration, exemplar)
        # The rare ones, through the family:
        if duration > self.slow_seconds:
            self.slow.labels(live.method, series.endpoint, *live.labels).inc()
        if cycle.exc is not None and isinstance(cycle.exc, Exception):
            self.exceptions.labels(live.method, series.endpoint, type(cycle.exc).__name__, *live.labels).inc()

    def _forget_due_times(self) -> None:
        """In a new process: exemplar due times are the parent's; a worker's first requests must
        replace the exemplars at once (the caches hold nothing else that is per process)."""
        self._live.clear()
        self._by_labels.clear()


def _exemplar(cycle: RequestCycle) -> bytes | None:
    """The request's exemplar labels: its trace id, else its id when that fits the slot (a longer
    client id is not cut into a false one)."""
    if cycle.trace_id is not None:
        return b"trace_id=" + cycle.trace_id.encode()
    if len(cycle.request_id) <= _ID_ROOM:
        return b"request_id=" + cycle.request_id.encode()
    return None


_ID_ROOM = MAX_EXEMPLAR_BYTES - len(b"request_id=")  # 60: the longest client id an exemplar keeps whole
_STATUS_500 = "500 Internal Server Error"
_CACHED = 4096


class _Live:
    """One method and default-label set: its in-progress gauge and the series answered under it."""

    __slots__ = ("by_path", "gauge", "labels", "method", "series")

    def __init__(self, gauge: GaugeChild, method: str, labels: tuple[str, ...]) -> None:
        self.gauge = gauge
        self.method = method
        self.labels = labels
        self.series: dict[tuple[str, str], _Series] = {}  # (endpoint, status line) -> series
        self.by_path: dict[tuple[Any, str], _Series] = {}  # (PATH_INFO, status line) -> series


class _Series:
    """One label set's children: the request counter and three histograms, with when this process
    may next replace their exemplars. Slow requests and exceptions, rare, go through their family."""

    __slots__ = ("d_due", "duration", "endpoint", "overflow", "r_due", "request_size", "requests", "response_size")

    def __init__(
        self,
        endpoint: str,
        requests: CounterChild,
        duration: HistogramChild,
        response_size: HistogramChild,
        request_size: HistogramChild,
        *,
        due: tuple[float, list[float]],
    ) -> None:
        self.endpoint = endpoint
        self.requests = requests
        self.duration = duration
        self.response_size = response_size
        self.request_size = request_size
        self.overflow = False
        self.r_due, self.d_due = due[0], list(due[1])

    def folded(self) -> _Series:
        copy = _Series(
            self.endpoint,
            self.requests,
            self.duration,
            self.response_size,
            self.request_size,
            due=(self.r_due, self.d_due),
        )
        copy.overflow = True
        return copy

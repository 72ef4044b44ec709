"""Per-request HTTP metrics, a recorder with three hooks on the ``RequestRecord``.

- start: ``http_requests_in_progress`` goes up (a live gauge: a killed worker's +1 vanishes);
- response (status final, before the first body byte): the endpoint is resolved and capped, and
  ``http_requests_total`` counted, so a worker killed mid-send has already counted what it answered;
- finish (body sent and closed): duration, slow requests, sizes, exceptions; in-progress goes down.

Label values are bounded: methods outside the standard set are ``_OTHER``, endpoints are route
templates under a cross-worker cap, statuses are 3-digit codes.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import inf
from typing import TYPE_CHECKING, Any

from ..process_state import on_new_process
from ..request.record import MAX_CACHED_TEXT, RequestRecord
from ..routes import OVERFLOW, Endpoints
from ..settings import Settings
from ..store.metrics import (
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
    from ..components import Host

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0)


class HttpMetrics:
    """The HTTP metrics recorder: its families, the label policy, and three request hooks.

    Per request it keeps, at ``record.state[live_at]``, the method and default-label set it counts
    under (None: not measured) and, at ``series_at``, the series answered (None until the response
    hook counted it): the ``STATE_SIZE`` positions ``install`` reserved.
    """

    component = "http metrics"
    STATE_SIZE = 2

    def __init__(self, registry: Registry, settings: Settings, endpoints: Endpoints) -> None:
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
        self.endpoints = endpoints
        self.live_at, self.series_at = 0, 1  # positions in record.state: install() reserves its own
        self.slow_seconds = float(settings.slow_request_seconds)
        self.skip_exact, self.skip_patterns = settings.skip
        self.skip_methods = frozenset(settings.skip_methods)
        self.skipping = bool(self.skip_methods or self.skip_exact or self.skip_patterns)
        self._live: dict[str, _Live] = {}  # by method, when nothing else decides it (see live_for)
        self._by_labels: dict[tuple[str, ...], _Live] = {}
        on_new_process(self._forget_due_times, component="http metrics after fork")
        self.default_labels = DefaultLabels(settings)

    def _skipped(self, method: str, path: str) -> bool:
        return method in self.skip_methods or path in self.skip_exact or any(p.match(path) for p in self.skip_patterns)

    # The hooks write through the children's unlocked writers. Under a server that says it runs no
    # requests in other threads (gunicorn's sync and gevent workers) only the thread serving
    # requests writes these series; otherwise (threaded servers, ASGI) a hook holds the store's
    # lock around all of its writes: one acquisition for the finish hook's three or four.

    def install(self, host: Host) -> None:
        """Reserve the per-request positions and add the three hooks."""
        self.live_at = host.reserve_state(self.STATE_SIZE)
        self.series_at = self.live_at + 1
        host.add_start_hook(self.start)
        host.add_response_hook(self.count)
        host.add_finish_hook(self.observe)

    def start(self, record: RequestRecord) -> None:
        """Start hook: the in-progress gauge goes up for a request that is measured."""
        live: _Live | None
        try:  # the common case: a standard method, nothing skipped, static labels
            live = self._live[record.method]
        except KeyError:
            live = self.live_for(record)
            if live is None:
                return
        if record.threaded:
            lock = live.lock
            lock.acquire()  # acquire/release: cheaper than ``with`` on this path
            try:
                live.gauge.inc_unlocked()
            finally:
                lock.release()
        else:
            live.gauge.inc_unlocked()
        record.state[self.live_at] = live

    def live_for(self, record: RequestRecord) -> _Live | None:
        """The request's method and default labels (None when skipped); kept in ``_live`` by method
        when that decides them (no skip rules, no computed labels)."""
        method = record.method
        if method not in METHODS:
            method = "_OTHER"
        if self.skipping and self._skipped(method, record.path):
            return None
        labels = self.default_labels.of(record.environ)
        key = (method, *labels)
        live = self._by_labels.get(key)
        if live is None:
            # The store's lock as it is in this process (ensure_current ran before any hook; a
            # new process clears _by_labels).
            lock = self.in_progress.registry.lock
            live = self._by_labels[key] = _Live(self.in_progress.labels(*key), method, labels, lock)
            if self.default_labels.fixed and not self.skipping and method == record.method:
                self._live[method] = live
        return live

    def count(self, record: RequestRecord) -> None:
        """Response hook: the request counted under its endpoint and status, before the body goes
        out."""
        state = record.state
        live = state[self.live_at]
        if live is None:
            return
        # By path and status, or by an adapter's route and status, when no mount point is involved:
        # the common case skips endpoint resolution (bounded: paths are the client's to choose,
        # routes the app's).
        route = record.route
        by_path: tuple[Any, ...] | None
        if record.script_name:
            by_path = None
        elif route is None:
            by_path = (record.path, record.status)
        else:
            by_path = (route, record.status, None)  # a template: never mistaken for a path's key
        series = live.by_path.get(by_path) if by_path is not None else None
        if series is None:
            series = self._series_for(record, live, by_path)
        else:
            record.endpoint = series.endpoint  # what Endpoints would answer: it answered it before
        state[self.series_at] = series
        if series.overflow:
            self.overflow.inc()
        if record.threaded:
            lock = live.lock
            lock.acquire()
            try:
                series.requests.inc_unlocked()
            finally:
                lock.release()
        else:
            series.requests.inc_unlocked()
        if record.started >= series.r_due:  # an exemplar is kept at least exemplar_interval_seconds
            exemplar = _exemplar(record)
            if exemplar is not None:
                series.r_due = record.started + self.exemplar_interval
                series.requests.set_exemplar(1.0, exemplar)

    def _series_for(self, record: RequestRecord, live: _Live, by_path: tuple[Any, ...] | None) -> _Series:
        endpoint = self.endpoints.of(record)
        status = str(record.status)
        series = live.series.get((endpoint, status))
        if series is None:
            method, extra = live.method, live.labels
            series = _Series(
                endpoint,
                self.requests.labels(method, endpoint, status, *extra),
                self.duration.labels(method, endpoint, *extra),
                self.response_size.labels(method, endpoint, *extra),
                self.request_size.labels(method, endpoint, *extra),
                due=self._no_exemplar_yet,
            )
            if len(live.series) < _CACHED:  # bounded by the endpoint cap (and the few statuses)
                live.series[(endpoint, status)] = series
        if by_path is not None and len(live.by_path) < _CACHED and len(by_path[0]) <= MAX_CACHED_TEXT:
            live.by_path[by_path] = series
        return series

    def observe(self, record: RequestRecord) -> None:
        """Finish hook: duration, sizes, slow requests and exceptions; the in-progress gauge goes
        down."""
        state = record.state
        live = state[self.live_at]
        if live is None:
            return
        series = state[self.series_at]
        duration = record.duration
        request_size = record.request_bytes
        if record.threaded:  # the same writes as below, under one acquisition of the store's lock
            lock = live.lock
            lock.acquire()
            try:
                live.gauge.inc_unlocked(-1.0)
                if series is None:  # the response hook failed: nothing more to attribute
                    return
                n = series.duration.observe_unlocked(duration)
                series.response_size.observe_unlocked(record.response_bytes)
                if request_size is not None:
                    series.request_size.observe_unlocked(request_size)
            finally:
                lock.release()
        else:
            live.gauge.inc_unlocked(-1.0)
            if series is None:
                return
            n = series.duration.observe_unlocked(duration)
            series.response_size.observe_unlocked(record.response_bytes)
            if request_size is not None:
                series.request_size.observe_unlocked(request_size)
        if record.started >= series.d_due[n]:  # at most one exemplar per bucket and interval
            exemplar = _exemplar(record)
            if exemplar is not None:
                series.d_due[n] = record.started + self.exemplar_interval
                series.duration.set_exemplar(n, duration, exemplar)
        # The rare ones, through the family:
        if duration > self.slow_seconds:
            self.slow.labels(live.method, series.endpoint, *live.labels).inc()
        exc = record.exc
        if exc is not None and isinstance(exc, Exception):
            self.exceptions.labels(live.method, series.endpoint, type(exc).__name__, *live.labels).inc()

    def _forget_due_times(self) -> None:
        """In a new process: exemplar due times are the parent's; a worker's first requests must
        replace the exemplars at once (the caches hold nothing else that is per process)."""
        self._live.clear()
        self._by_labels.clear()


class DefaultLabels:
    """The values of the ``default_labels`` setting for one request (or connection): static ones
    as given, computed ones from the request's mapping, kept to their allow-list ("other" outside
    it, or when the computation fails)."""

    def __init__(self, settings: Settings) -> None:
        static = {k: v for k, v in settings.default_labels.items() if isinstance(v, str)}
        self._dynamic = [(i, spec) for i, (k, spec) in enumerate(settings.default_labels.items()) if k not in static]
        self._static = tuple(static.get(k, "") for k in settings.default_labels)
        self.fixed = not self._dynamic  # the same values for every request

    def of(self, environ: Mapping[str, Any]) -> tuple[str, ...]:
        """The values, in the setting's order, for a request's environ (an ASGI scope under ASGI)."""
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


def _exemplar(record: RequestRecord) -> dict[str, str] | None:
    """The request's exemplar labels: its trace id, else its id when that fits the slot (a longer
    client id is not cut into a false one)."""
    if record.trace_id is not None:
        if record.span_id is not None:
            return {"trace_id": record.trace_id, "span_id": record.span_id}
        return {"trace_id": record.trace_id}
    if len(record.request_id) <= _ID_ROOM:
        return {"request_id": record.request_id}
    return None


_ID_ROOM = MAX_EXEMPLAR_BYTES - len("request_id=")  # 60: the longest client id an exemplar keeps whole
_CACHED = 4096


class _Live:
    """One method and default-label set: its in-progress gauge and the series answered under it."""

    __slots__ = ("by_path", "gauge", "labels", "lock", "method", "series")

    def __init__(self, gauge: GaugeChild, method: str, labels: tuple[str, ...], lock: Any) -> None:
        self.gauge = gauge
        self.lock = lock  # the store's: a threaded request's writes hold it (see HttpMetrics.install)
        self.method = method
        self.labels = labels
        self.series: dict[tuple[str, str], _Series] = {}  # (endpoint, status) -> series
        # (path, status) or (route, status, None) -> series
        self.by_path: dict[tuple[Any, ...], _Series] = {}


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
        self.overflow = endpoint == OVERFLOW  # counted in softfactory_obs_endpoint_overflow_total
        self.r_due, self.d_due = due[0], list(due[1])

"""Per-request HTTP metrics, fed by three hooks of the ``RequestCycle``.

- start: ``http_requests_in_progress`` goes up (a live gauge: a killed worker's +1 vanishes);
- response (status final, before the first body byte): the endpoint is resolved and capped, and
  ``http_requests_total`` counted, so a worker killed mid-send has already counted what it answered;
- finish (body sent and closed): duration, slow requests, sizes, exceptions; in-progress goes down.

Label values are bounded: methods outside the standard set are ``_OTHER``, endpoints are route
templates under a cross-worker cap, statuses are 3-digit codes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from math import inf
from time import time_ns
from typing import TYPE_CHECKING, Any

from ._request import parse_length
from .access_log import MAX_CACHED_TEXT
from .routes import OVERFLOW, ROUTE_KEY, EndpointCap, RouteTable, resolve
from .settings import Settings
from .store.metrics import COUNTER_SCALE, SUM_SCALE, Counter, Gauge, Histogram, Registry, pack_exemplar
from .store.shard import EXEMPLAR_ID_MAX, next_odd

if TYPE_CHECKING:
    from ._request import RequestCycle

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))
SIZE_BUCKETS = (100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0, 100_000_000.0)
# Sizes are ints: bisecting them against int bounds skips float-int comparisons, three times dearer.
_SIZE_BOUNDS = tuple(int(bound) for bound in SIZE_BUCKETS)
_SIZE_TOP, _SIZE_INF = _SIZE_BOUNDS[-1], len(SIZE_BUCKETS)
_SUM_SCALE = float(SUM_SCALE)  # and durations are floats: a float * int converts the int every time
MAX_ENDPOINT_LENGTH = 256  # a longer "template" is a path no route table or normaliser tamed


class HttpMetrics:
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
        registry.on_fork(self._forget)
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
            floats = live.floats
            if floats is None:
                floats = live.bind()
            floats[live.slot] += 1.0
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
        due = cycle._started >= series.r_due  # an exemplar is kept at least exemplar_interval_seconds
        if cycle.http_locked:
            exemplar = _exemplar(cycle) if due else None
            if exemplar is not None:
                series.r_due = cycle._started + self.exemplar_interval
            series.requests.inc(1, exemplar, time_ns() if exemplar is not None else 0)
            return
        ints = series.r_ints  # the single-writer path, inlined: see _Series
        if ints is None:
            ints = series.bind()
        ints[series.r_slot] += COUNTER_SCALE
        if due:
            exemplar = _exemplar(cycle)
            if exemplar is not None:
                series.r_due = cycle._started + self.exemplar_interval
                slot = series.r_ex
                odd = ints[slot] = next_odd()  # the seqlock of store.shard.write_exemplar
                pack_exemplar(series.r_view, slot * 8 + 8, 1.0, time_ns(), len(exemplar), exemplar)
                ints[slot] = odd + 1

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
            )
            if len(live.series) < _CACHED:  # bounded by the endpoint cap, unless an app makes up reason phrases
                live.series[(endpoint, status)] = series
        if overflow:
            series = series.folded()  # the overflow counter counts each request it folds
        if by_path is not None and len(live.by_path) < _CACHED and len(str(by_path[0])) <= MAX_CACHED_TEXT:
            live.by_path[by_path] = series
        return series

    def observe(self, cycle: RequestCycle) -> None:
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
            n = bisect_left(series.d_bounds, duration) if duration <= series.d_top else series.d_inf
            exemplar = _exemplar(cycle) if cycle._started >= series.d_due[n] else None
            if exemplar is not None:
                series.d_due[n] = cycle._started + self.exemplar_interval
            series.duration.observe(duration, exemplar, time_ns() if exemplar is not None else 0)
            series.response_size.observe(cycle.size)
            if request_size is not None:
                series.request_size.observe(request_size)
        else:
            floats = live.floats
            if floats is None:
                floats = live.bind()
            floats[live.slot] -= 1.0
            if series is None:
                return
            ints = series.d_ints  # the single-writer path, inlined: see _Series
            if ints is None:
                series.bind()
                ints = series.d_ints
            n = bisect_left(series.d_bounds, duration) if duration <= series.d_top else series.d_inf
            ints[series.d_slots[n]] += 1
            ints[series.d_sum] += round(duration * _SUM_SCALE)
            if cycle._started >= series.d_due[n]:
                exemplar = _exemplar(cycle)
                if exemplar is not None:
                    series.d_due[n] = cycle._started + self.exemplar_interval
                    slot = series.d_ex[n]
                    odd = ints[slot] = next_odd()
                    pack_exemplar(series.d_view, slot * 8 + 8, duration, time_ns(), len(exemplar), exemplar)
                    ints[slot] = odd + 1
            size = cycle.size
            n = bisect_left(_SIZE_BOUNDS, size) if size <= _SIZE_TOP else _SIZE_INF
            ints = series.s_ints  # each child's slots share a view; two children's may not
            ints[series.s_slots[n]] += 1
            ints[series.s_sum] += size  # _bytes sums are whole bytes
            if request_size is not None:
                series.request_size.observe_unlocked(request_size)
        # The rare ones, through the family:
        if duration > self.slow_seconds:
            self.slow.labels(live.method, series.endpoint, *live.labels).inc()
        if cycle.exc is not None and isinstance(cycle.exc, Exception):
            self.exceptions.labels(live.method, series.endpoint, type(cycle.exc).__name__, *live.labels).inc()

    def _forget(self) -> None:
        """After a fork: every cached slot points into the parent's shard."""
        for live in self._by_labels.values():
            live.floats = None
            for series in (*live.series.values(), *live.by_path.values()):
                series.unbind()
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


_ID_ROOM = EXEMPLAR_ID_MAX - len(b"request_id=")  # 60: the longest client id an exemplar keeps whole
_STATUS_500 = "500 Internal Server Error"
_CACHED = 4096


class _Live:
    """One method and default-label set: its in-progress gauge and the series answered under it."""

    __slots__ = ("by_path", "floats", "gauge", "labels", "method", "series", "slot")

    def __init__(self, gauge: Any, method: str, labels: tuple[str, ...]) -> None:
        self.gauge = gauge
        self.method = method
        self.labels = labels
        self.series: dict[tuple[str, str], _Series] = {}  # (endpoint, status line) -> series
        self.by_path: dict[tuple[Any, str], _Series] = {}  # (PATH_INFO, status line) -> series
        self.floats: Any = None
        self.slot = 0

    def bind(self) -> Any:
        _, floats, _, idx, _ = self.gauge.bound()
        self.slot = idx[0]
        self.floats = floats
        return floats


class _Series:
    """One label set's counter and two histograms, and where their slots are in this process: the
    single-writer hooks write them inline (a call per child costs more than the write). Request
    sizes (only for requests with a body) go through their child; slow requests and exceptions,
    rare, through their family."""

    __slots__ = (
        "d_bounds",
        "d_due",
        "d_ex",
        "d_inf",
        "d_ints",
        "d_slots",
        "d_sum",
        "d_top",
        "d_view",
        "duration",
        "endpoint",
        "overflow",
        "r_due",
        "r_ex",
        "r_ints",
        "r_slot",
        "r_view",
        "request_size",
        "requests",
        "response_size",
        "s_ints",
        "s_slots",
        "s_sum",
    )

    def __init__(self, endpoint: str, requests: Any, duration: Any, response_size: Any, request_size: Any) -> None:
        self.endpoint = endpoint
        self.requests = requests
        self.duration = duration
        self.response_size = response_size
        self.request_size = request_size
        self.overflow = False
        family = duration._family
        self.d_bounds = family.bounds
        self.d_top = family.bounds[-2] if len(family.bounds) > 1 else -1.0  # the last finite bound
        self.d_inf = len(family.bounds) - 1
        self.unbind()

    def folded(self) -> _Series:
        copy = _Series(self.endpoint, self.requests, self.duration, self.response_size, self.request_size)
        copy.overflow = True
        return copy

    def unbind(self) -> None:
        self.r_ints: Any = None
        self.d_ints: Any = None
        # When this process may next replace the exemplar of the counter, and of each latency bucket.
        self.r_due = 0.0 if self.requests._family.exemplars else inf
        self.d_due = [0.0 if self.duration._family.exemplars else inf] * (self.d_inf + 1)

    def bind(self) -> Any:
        """Bind the three children (each child's slots share a view; two children's may not)."""
        ints, _, self.r_view, idx, ex = self.requests.bound()
        self.r_slot, self.r_ex = idx[0], ex[0] if ex else -1
        self.s_ints, _, _, idx, _ = self.response_size.bound()
        self.s_slots, self.s_sum = idx, idx[-1]
        d_ints, _, self.d_view, idx, ex = self.duration.bound()
        self.d_slots, self.d_sum, self.d_ex = idx, idx[-1], ex or None
        self.r_ints = ints
        self.d_ints = d_ints  # last: the "bound" flag the finish hook checks
        return ints

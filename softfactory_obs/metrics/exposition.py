"""``/metrics``: the merged store as families, encoded in the format the scraper asked for
(``metrics.formats``).

A worker never imports prometheus_client to answer a scrape: that import costs every worker about
2.3 MB of resident memory. An app that keeps its own metrics in prometheus_client's multiprocess
mode gets them exposed beside ours, and only then is prometheus_client imported.
"""

from __future__ import annotations

import gzip
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from .._failures import report_failure
from ..extras import require
from ..store.directory import Snapshot, StoreBusyError
from ..store.metrics import COUNTER_SCALE, Registry, sum_scale
from ..store.shard import decode_exemplar
from .families import Exemplar, Family, Sample, gauge
from .formats import OPENMETRICS, encode_openmetrics, encode_text, gzip_accepted, negotiate
from .prometheus_bridge import app_metric_names

PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def families_from(snap: Snapshot) -> Iterable[Family]:
    """Each family exactly once, in name order, samples in label order: a deterministic body."""
    samples: dict[str, dict[tuple[str, ...], dict[str, Any]]] = {}
    for (name, suffix, labels), value in snap.counts.items():
        samples.setdefault(name, {}).setdefault(labels, {})[suffix] = value
    for (name, _suffix, labels), entries in snap.gauges.items():
        samples.setdefault(name, {}).setdefault(labels, {})["gauge"] = entries
    for (name, suffix, labels), exemplar in snap.exemplars.items():
        samples.setdefault(name, {}).setdefault(labels, {})["exemplar " + suffix] = _exemplar(exemplar)
    for name in sorted(snap.metas):
        meta = snap.metas[name]
        kind = meta.get("type")
        by_labels = samples.get(name, {})
        labelnames = list(meta.get("labels", []))
        if kind == "counter":
            yield _counter(name, meta, labelnames, by_labels)
        elif kind == "gauge":
            yield _gauge(name, meta, labelnames, by_labels)
        elif kind == "histogram":
            yield _histogram(name, meta, labelnames, by_labels)


def _valid(labelnames: list[str], by_labels: dict[tuple[str, ...], dict[str, Any]]) -> list[tuple[str, ...]]:
    return sorted(lv for lv in by_labels if len(lv) == len(labelnames))


def _counter(name: str, meta: dict[str, Any], labelnames: list[str], by_labels: dict[Any, Any]) -> Family:
    family = Family(name, meta.get("help", ""), "counter", labelnames)
    if not labelnames and () not in by_labels:
        family.add((), 0.0)
    scale = meta.get("scale", COUNTER_SCALE)
    for labels in _valid(labelnames, by_labels):
        parts = by_labels[labels]
        if "" in parts:
            family.add(labels, parts[""] / scale, parts.get("exemplar x"))
    return family


def _gauge(name: str, meta: dict[str, Any], labelnames: list[str], by_labels: dict[Any, Any]) -> Family:
    family = Family(name, meta.get("help", ""), "gauge", labelnames)
    mode = meta.get("mode", "livesum")
    for labels in _valid(labelnames, by_labels):
        entries = by_labels[labels].get("gauge")
        if not entries:
            continue
        values = [v for v, _, _ in entries]
        if mode == "livemax":
            value = max(values)
        elif mode == "livemin":
            value = min(values)
        elif mode == "livemostrecent":
            value = max(entries, key=lambda e: e[1])[0]
        else:
            value = math.fsum(values)
        family.add(labels, value)
    return family


def _histogram(name: str, meta: dict[str, Any], labelnames: list[str], by_labels: dict[Any, Any]) -> Family:
    family = Family(name, meta.get("help", ""), "histogram", labelnames)
    declared = [float(b) for b in meta.get("buckets", ["inf"])]
    if not labelnames and () not in by_labels:
        by_labels = {(): {}}
    for labels in _valid(labelnames, by_labels):
        parts = by_labels[labels]
        # The union of bucket bounds ever used (a layout may have changed between deploys), cumulated.
        counts: dict[float, int] = dict.fromkeys(declared, 0)
        for suffix, value in parts.items():
            if suffix.startswith("b"):
                bound = float(suffix[1:])
                counts[bound] = counts.get(bound, 0) + value
        counts.setdefault(math.inf, 0)
        cumulative: list[tuple[str, float, Exemplar | None]] = []
        running = 0
        for bound in sorted(counts):
            running += counts[bound]
            cumulative.append((_le(bound), float(running), parts.get("exemplar x" + repr(bound))))
        total = sum(v / sum_scale(k) for k, v in parts.items() if k.startswith("sum"))
        family.add_histogram(labels, cumulative, total)
    return family


def _exemplar(stored: tuple[float, int, str]) -> Exemplar | None:
    value, stamp, ident = stored
    labels = decode_exemplar(ident)
    return Exemplar(labels, value, stamp / 1e9) if labels else None


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(bound)


def _base_name(name: str) -> str:
    # prometheus_client names a counter family without _total; compare on the common stem.
    return name[:-6] if name.endswith("_total") else name


def prometheus_client_families() -> list[Family]:
    """Metrics an app keeps in prometheus_client's own multiprocess mode, to expose beside ours."""
    path = os.environ.get(PROMETHEUS_MULTIPROC_ENV)
    if not path:
        return []
    # Only here: an app that uses prometheus_client's multiprocess mode has it imported anyway.
    needed_by = f"exposing prometheus_client's multiprocess directory (${PROMETHEUS_MULTIPROC_ENV})"
    collector_registry = require("prometheus_client", needed_by).CollectorRegistry
    multiprocess = require("prometheus_client.multiprocess", needed_by)

    registry = collector_registry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=path)
    families = []
    for metric in registry.collect():
        family = Family(metric.name, metric.documentation, metric.type)
        family.samples = [Sample(s.name, dict(s.labels), s.value, _exemplar_of(s.exemplar)) for s in metric.samples]
        families.append(family)
    return families


def _exemplar_of(theirs: Any) -> Exemplar | None:
    if theirs is None:
        return None
    stamp = theirs.timestamp
    return Exemplar(dict(theirs.labels), theirs.value, None if stamp is None else float(stamp))


def check_no_clash(ours: Iterable[str], theirs: Iterable[str]) -> None:
    """Refuse family names that both this store and prometheus_client's multiprocess directory
    expose."""
    clash = sorted({_base_name(n) for n in ours} & {_base_name(n) for n in theirs})
    if clash:
        raise ValueError(
            f"metric name(s) {', '.join(clash)} exist both in softfactory_obs and in prometheus_client's "
            f"multiprocess directory (${PROMETHEUS_MULTIPROC_ENV}); rename one side, a family can be exposed once"
        )


def check_prometheus_client_registry(registry: Registry) -> None:
    """At start-up: the app's prometheus_client metrics (multiprocess mode) must not reuse our names."""
    if not os.environ.get(PROMETHEUS_MULTIPROC_ENV):
        return
    needed_by = f"prometheus_client's multiprocess mode (${PROMETHEUS_MULTIPROC_ENV} is set)"
    # Only metrics the app defined (not prometheus_client's own process and GC collectors, which
    # multiprocess mode does not expose anyway).
    check_no_clash(registry.families, app_metric_names(require("prometheus_client", needed_by)))


def self_metrics(snap: Snapshot, scrape_seconds: float) -> list[Family]:
    """The store's own health for a scrape: shards by state, files read, the previous scrape's
    duration, and whether new series can be written there now."""
    shards = Family("softfactory_obs_store_shards", "Shard files in the metrics store by state", "gauge", ["state"])
    shards.add(["live"], snap.live_shards)
    shards.add(["dead"], snap.dead_shards)
    duration = gauge(
        "softfactory_obs_scrape_duration_seconds",
        "Time the previous scrape took to merge and render the store",
        scrape_seconds,
    )
    files = gauge(
        "softfactory_obs_scrape_files_read",
        "Shard files this scrape read (stays near the number of live workers under churn)",
        snap.files_opened,
    )
    generation = Family("softfactory_obs_store_compactions", "Compactions published to the store", "counter")
    generation.add((), snap.archive_generation)
    families = [shards, duration, files, generation]
    if snap.writable is not None:
        families.append(
            gauge(
                "softfactory_obs_store_writable",
                "1 if workers can make new series in the metrics store now, 0 if it is read-only or gone",
                int(snap.writable),
            )
        )
    if snap.free_bytes is not None:
        families.append(
            gauge("softfactory_obs_store_free_bytes", "Space left on the metrics store's file system", snap.free_bytes)
        )
    return families


class ScrapeLimitError(Exception):
    """Too many scrapes at once, or one waited too long: answer 503 (Prometheus records up=0)."""


class _Flight:
    __slots__ = ("done", "error", "metrics")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.metrics: list[Family] = []
        self.error: BaseException | None = None


class MetricsApp:
    """The WSGI app mounted at ``/metrics``."""

    def __init__(
        self,
        registry: Registry,
        on_dead_shards: Callable[[], None] | None = None,
        *,
        max_concurrent: int = 16,
        timeout: float = 10.0,
    ) -> None:
        self.registry = registry
        self.on_dead_shards = on_dead_shards
        # As Go's promhttp: a bounded number of scrapes at once per worker, each waiting a bounded time.
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.timeout = timeout
        self._last_duration = 0.0
        self._flight_cond = threading.Condition()
        self._pending: _Flight | None = None  # the next merge: requests that arrive now share it
        self._running: _Flight | None = None  # the merge being computed
        self.merges = 0  # how many merges ran (scrapes that arrived together share one)

    def render(
        self, accept: str = "", names: frozenset[str] | None = None, timeout: float | None = None
    ) -> tuple[bytes, str]:
        """Encode the merged store (only the families or samples ``names`` names, when given).
        Scrapes arriving while a merge runs in this process wait for it and share its result
        (single flight): a gthread worker under a scrape storm merges once. ``timeout``: the
        longest this scrape waits for another's merge (at most the app's own timeout)."""
        if not self._slots.acquire(blocking=False):
            raise ScrapeLimitError("too many concurrent scrapes in this worker")
        try:
            return self._render(accept, names, self.timeout if timeout is None else min(timeout, self.timeout))
        finally:
            self._slots.release()

    def _render(self, accept: str, names: frozenset[str] | None, timeout: float) -> tuple[bytes, str]:
        # Join the *pending* merge, never one already running: a running merge may have read the
        # store before this request arrived, and a scraper whose previous scrape (answered by
        # another worker) saw newer data would then watch counters go backwards.
        deadline = time.monotonic() + timeout
        with self._flight_cond:
            flight = self._pending
            if flight is None:
                flight = self._pending = _Flight()
            while self._running is not None and not flight.done.is_set():
                if not self._flight_cond.wait(max(0.0, deadline - time.monotonic())):
                    raise ScrapeLimitError(f"the scrape in progress took longer than {timeout:g} s")
            leader = not flight.done.is_set() and self._running is None and self._pending is flight
            if leader:
                self._running, self._pending = flight, None
        if leader:
            try:
                flight.metrics = self._collect()
            except BaseException as exc:
                flight.error = exc
            finally:
                with self._flight_cond:
                    self._running = None
                    flight.done.set()
                    self._flight_cond.notify_all()
        elif not flight.done.wait(max(0.0, deadline - time.monotonic())):
            raise ScrapeLimitError(f"the scrape in progress took longer than {timeout:g} s")
        if flight.error is not None:
            raise flight.error
        content_type = negotiate(accept)
        encode = encode_openmetrics if content_type == OPENMETRICS else encode_text
        return encode(flight.metrics if names is None else restricted(flight.metrics, names)), content_type

    def _collect(self) -> list[Family]:
        self.merges += 1
        started = time.perf_counter()
        for prepare in self.registry.before_scrape:
            try:
                prepare()
            except Exception as exc:  # what it would have added is stale, the scrape goes on
                report_failure("metrics callback", exc)
        snap = self.registry.snapshot()
        metrics = list(families_from(snap))
        names = {m.name for m in metrics}
        metrics += [m for m in self_metrics(snap, self._last_duration) if m.name not in names]
        foreign = prometheus_client_families()
        check_no_clash([m.name for m in metrics], [m.name for m in foreign])
        metrics.extend(foreign)
        extra: dict[str, Family] = {}
        for callback in self.registry.callbacks:
            try:
                for family in callback():
                    if family.name in names:
                        continue
                    if family.name in extra:  # two Redis clients, say: one family, both sets of samples
                        extra[family.name].samples.extend(family.samples)
                    else:
                        extra[family.name] = family
            except Exception as exc:  # a broken callback loses its own families, not the scrape
                report_failure("metrics callback", exc)
        metrics.extend(extra.values())
        self._last_duration = time.perf_counter() - started
        if snap.dead_shards and self.on_dead_shards is not None:
            self.on_dead_shards()
        return metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response(
                "405 Method Not Allowed",
                [("Allow", "GET, HEAD"), ("Content-Type", "text/plain"), ("Content-Length", "0")],
            )
            return []
        query = environ.get("QUERY_STRING")
        names = frozenset(parse_qs(query).get("name[]", ())) if query and "name" in query else None
        try:
            body, content_type = self.render(
                environ.get("HTTP_ACCEPT", ""),
                names,
                scrape_budget(environ.get("HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS")),
            )
        except (StoreBusyError, ScrapeLimitError) as exc:
            return _error(start_response, "503 Service Unavailable", f"metrics unavailable: {exc}\n")
        except Exception as exc:  # never a partial or wrong scrape: fail it loudly, Prometheus records up=0
            report_failure("metrics scrape", exc)
            return _error(
                start_response, "500 Internal Server Error", f"metrics scrape failed: {type(exc).__name__}: {exc}\n"
            )
        headers = [("Content-Type", content_type), ("Cache-Control", "no-store"), ("Vary", "Accept, Accept-Encoding")]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")):
            body = gzip.compress(body, compresslevel=5)
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [] if method == "HEAD" else [body]


def scrape_budget(header: object) -> float | None:
    """Prometheus says how long it waits for this scrape (``X-Prometheus-Scrape-Timeout-Seconds``):
    waiting for another scrape's merge beyond that holds a worker for an answer nobody reads."""
    try:
        seconds = float(header)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return seconds if 0 < seconds < math.inf else None


def restricted(families: Iterable[Family], names: frozenset[str]) -> list[Family]:
    """``/metrics?name[]=a&name[]=b``, as prometheus_client answers it, and friendlier: a name
    keeps its whole family (``http_request_duration_seconds``) or the samples of that name
    (``http_requests_total``, ``..._count``). The merged families are shared: copied, never cut."""
    out = []
    for family in families:
        if family.name in names:
            out.append(family)
            continue
        samples = [s for s in family.samples if s.name in names]
        if samples:
            copy = Family(family.name, family.documentation, family.type, family.labels)
            copy.samples = samples
            out.append(copy)
    return out


def _error(start_response: Callable[..., Any], status: str, message: str) -> list[bytes]:
    body = message.encode("utf-8", "replace")
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("Content-Length", str(len(body))),
        ],
    )
    return [body]

"""JSON for humans: ``/api/metrics/summary`` and ``/api/metrics/errors``, from the same store as /metrics.

Every number is computed from the merged store (all workers, living and dead), so the summary and
``/metrics`` always agree. Recent windows (last 1 and 5 minutes) come from totals this worker
samples every maintenance interval while its summary is being read, else once a minute
(``History``); a window this worker has not observed whole says how many seconds it covers.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..health import json_body
from ..health.routes import answer
from ..json_text import iso_utc
from ..settings import Settings
from ..store.metrics import Registry
from .exposition import families_from
from .families import Family

WINDOWS = (("1m", 60.0), ("5m", 300.0))
Totals = dict[tuple[str, str], float]  # (endpoint, status) -> requests


def _families(registry: Registry) -> dict[str, Family]:
    return {f.name: f for f in families_from(registry.snapshot())}


def _request_totals(families: dict[str, Family], prefix: str) -> Totals:
    totals: Totals = collections.defaultdict(float)
    family = families.get(f"{prefix}http_requests")
    for sample in family.samples if family else ():
        totals[(sample.labels["endpoint"], sample.labels["status"])] += sample.value
    return dict(totals)


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """histogram_quantile's estimate: linear interpolation inside the bucket holding the rank."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # Prometheus answers the highest finite bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 0)
        lower_bound, lower_count = bound, count
    return None


def human(seconds: float) -> str:
    """``seconds`` as ``1d 02h 03m 04s``."""
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return (f"{days}d " if days else "") + f"{h:02d}h {m:02d}m {s:02d}s"


# How long after the last read of the summary this worker samples every interval: two of its longest
# windows. Otherwise once a minute, so a first read (in an incident) still has its windows.
WATCHED_SECONDS = 600.0
UNWATCHED_SECONDS = 60.0


class History:
    """Merged request totals sampled over time in this worker, for the recent windows.

    A sample merges the whole store, a scrape's work, and every worker keeps its own history: so
    the background samples (``sample_in_background``) come every interval only while the summary
    is read; N workers merging N shards every 5 s for a summary nobody reads would be a cost that
    grows as N squared.
    """

    def __init__(self, registry: Registry, prefix: str) -> None:
        self.registry = registry
        self.prefix = prefix
        self._samples: collections.deque[tuple[float, Totals]] = collections.deque(maxlen=400)
        self._lock = threading.Lock()
        self._read_at = -math.inf  # time.monotonic() of the last read (``sample``)

    def sample(self, families: dict[str, Family] | None = None) -> Totals:
        """The request totals now (all workers), kept at most once a second for the 1- and 5-minute
        rates; a read of the summary (see ``sample_in_background``)."""
        self._read_at = time.monotonic()
        return self._take(families)

    def sample_in_background(self) -> None:
        """The maintenance thread's task: a sample within ``WATCHED_SECONDS`` of the last read,
        else one every ``UNWATCHED_SECONDS``."""
        now = time.monotonic()
        with self._lock:
            last = self._samples[-1][0] if self._samples else -math.inf
        if now - self._read_at < WATCHED_SECONDS or now - last >= UNWATCHED_SECONDS:
            self._take(None)

    def _take(self, families: dict[str, Family] | None) -> Totals:
        totals = _request_totals(families if families is not None else _families(self.registry), self.prefix)
        now = time.monotonic()
        with self._lock:
            if not self._samples or now - self._samples[-1][0] >= 1.0:
                self._samples.append((now, totals))
        return totals

    def window(self, seconds: float, current: Totals) -> tuple[Totals, float]:
        """Requests in the last ``seconds`` and how many seconds that actually covers."""
        now = time.monotonic()
        with self._lock:
            older = [(t, totals) for t, totals in self._samples if now - t <= seconds]
        if not older:
            return {}, 0.0
        start, base = older[0]
        return {k: v - base.get(k, 0.0) for k, v in current.items() if v - base.get(k, 0.0) > 0}, now - start


def _errors(totals: Totals) -> tuple[float, float]:
    requests = sum(totals.values())
    errors = sum(v for (_, status), v in totals.items() if status.startswith("5"))
    return requests, errors


def _rate(part: float, whole: float) -> float:
    return round(part / whole * 100, 3) if whole else 0.0


class SummaryApp:
    """The JSON endpoints for humans: /api/metrics/summary and /api/metrics/errors."""

    def __init__(self, settings: Settings, registry: Registry, history: History, started_at: float) -> None:
        self.settings = settings
        self.registry = registry
        self.history = history
        self.started_at = started_at
        self.prefix = f"{settings.namespace}_" if settings.namespace else ""

    def summary(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """/api/metrics/summary: uptime, workers, requests, errors, endpoints, caches."""
        families = _families(self.registry)
        totals = self.history.sample(families)
        uptime = time.time() - self.started_at
        requests, errors = _errors(totals)
        data = {
            "service": self.settings.service_name,
            "version": self.settings.service_version,
            "timestamp": iso_utc(time.time()),
            "uptime": {"seconds": round(uptime, 3), "human": human(uptime)},
            "system": self._system(families),
            "application": {
                "requests_total": requests,
                "errors_total": errors,
                "error_rate_percent": _rate(errors, requests),
            },
            "queue_wait": self._queue_wait(families),
            "endpoints": self._endpoints(families, totals, uptime),
            "cache": self._cache(families),
            "gauges": self._business_gauges(families),
        }
        return answer(environ, start_response, "200 OK", json_body(data))

    def errors(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """/api/metrics/errors: errors by status and endpoint, lifetime and recent."""
        totals = self.history.sample()
        data: dict[str, Any] = {"timestamp": iso_utc(time.time()), "lifetime": self._error_view(totals)}
        for name, seconds in WINDOWS:
            window, covered = self.history.window(seconds, totals)
            data[f"last_{name}"] = {**self._error_view(window), "covered_seconds": round(covered, 1)}
        return answer(environ, start_response, "200 OK", json_body(data))

    @staticmethod
    def _error_view(totals: Totals) -> dict[str, Any]:
        requests, errors = _errors(totals)
        by_status: dict[str, float] = collections.defaultdict(float)
        by_endpoint: dict[str, float] = collections.defaultdict(float)
        for (endpoint, status), v in totals.items():
            if status[:1] in ("4", "5"):
                by_status[status] += v
                by_endpoint[endpoint] += v
        return {
            "requests": requests,
            "errors_5xx": errors,
            "error_rate_percent": _rate(errors, requests),
            "by_status": dict(sorted(by_status.items())),
            "by_endpoint": dict(sorted(by_endpoint.items())),
        }

    def _system(self, families: dict[str, Family]) -> dict[str, Any]:
        workers: dict[str, dict[str, float]] = collections.defaultdict(dict)
        fields = {
            "process_resident_memory_bytes": "rss_mb",
            "process_virtual_memory_bytes": "vms_mb",
            "softfactory_obs_worker_cpu_percent": "cpu_percent",
            "softfactory_obs_worker_memory_percent": "memory_percent",
            "softfactory_obs_worker_pid": "pid",
        }
        for name, key in fields.items():
            for sample in families[name].samples if name in families else ():
                value = sample.value / 1e6 if key.endswith("_mb") else sample.value
                workers[sample.labels["worker"]][key] = round(value, 3) if key != "pid" else int(value)
        total = {
            key: round(sum(w.get(key, 0.0) for w in workers.values()), 3)
            for key in ("rss_mb", "vms_mb", "cpu_percent", "memory_percent")
        }
        return {"workers": dict(sorted(workers.items())), "total": total}

    def _endpoints(self, families: dict[str, Family], totals: Totals, uptime: float) -> dict[str, Any]:
        hist = families.get(f"{self.prefix}http_request_duration_seconds")
        latency: dict[str, dict[str, Any]] = collections.defaultdict(lambda: {"buckets": {}, "sum": 0.0, "count": 0.0})
        for sample in hist.samples if hist else ():
            entry = latency[sample.labels["endpoint"]]
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                entry["buckets"][bound] = entry["buckets"].get(bound, 0.0) + sample.value
            elif sample.name.endswith("_sum"):
                entry["sum"] += sample.value
            elif sample.name.endswith("_count"):
                entry["count"] += sample.value
        table = {}
        for endpoint in sorted({e for e, _ in totals} | set(latency)):
            count = sum(v for (e, _), v in totals.items() if e == endpoint)
            errors = sum(v for (e, s), v in totals.items() if e == endpoint and s.startswith("5"))
            lat = latency.get(endpoint, {"buckets": {}, "sum": 0.0, "count": 0.0})
            buckets = sorted(lat["buckets"].items())
            row: dict[str, Any] = {
                "count": count,
                "rate_per_second": round(count / uptime, 3) if uptime else 0.0,
                "error_percent": _rate(errors, count),
            }
            if lat["count"]:
                row["mean_latency_ms"] = round(lat["sum"] / lat["count"] * 1000, 3)
                for q in (0.5, 0.95, 0.99):
                    value = quantile(q, buckets)
                    row[f"p{int(q * 100)}_ms"] = None if value is None else round(value * 1000, 3)
            table[endpoint] = row
        return table

    def _queue_wait(self, families: dict[str, Family]) -> dict[str, Any] | None:
        """The wait for a free worker (``queue_time_header``), over every series; None when off or unseen."""
        hist = families.get(f"{self.prefix}http_request_queue_seconds")
        buckets: dict[float, float] = collections.defaultdict(float)
        for sample in hist.samples if hist else ():
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] += sample.value
        cumulative = sorted(buckets.items())
        if not cumulative or not cumulative[-1][1]:
            return None
        row: dict[str, Any] = {"requests": cumulative[-1][1]}
        for q in (0.5, 0.95, 0.99):
            value = quantile(q, cumulative)
            row[f"p{int(q * 100)}_ms"] = None if value is None else round(value * 1000, 3)
        return row

    @staticmethod
    def _cache(families: dict[str, Family]) -> dict[str, Any]:
        caches: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"hits": 0.0, "misses": 0.0})
        for name, key in (("cache_hits", "hits"), ("cache_misses", "misses")):
            for sample in families[name].samples if name in families else ():
                caches[sample.labels.get("cache", "default")][key] += sample.value
        return {
            cache: {
                **v,
                "hit_ratio": round(v["hits"] / (v["hits"] + v["misses"]), 4) if v["hits"] + v["misses"] else None,
            }
            for cache, v in sorted(caches.items())
        }

    def _business_gauges(self, families: dict[str, Family]) -> dict[str, Any]:
        ours = ("process_", "softfactory_obs_", "app_", "gunicorn_", "http_", f"{self.prefix}http_", "redis_")
        out: dict[str, Any] = {}
        for name, family in sorted(families.items()):
            if family.type != "gauge" or name.startswith(ours):
                continue
            values = {
                ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "value": s.value for s in family.samples
            }
            out[name] = values
        return out

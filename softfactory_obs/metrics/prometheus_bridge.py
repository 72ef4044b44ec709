"""An app's own prometheus_client metrics (its default ``REGISTRY``, no multiprocess directory) on
our ``/metrics``, added up over every worker, living and dead.

prometheus_client keeps each value in the memory of the process that counted it, so a scrape
answered by one worker would show that worker's share, and a recycled worker's counts would be
gone. Each worker therefore copies its values into its own shard of our store, through the store's
metric classes, reading them through prometheus_client's public ``collect()``:

- counters and histograms: the increase since that worker's previous copy, so the store sums the
  workers and keeps what dead ones counted (never decreasing);
- gauges: one series per live worker, labelled ``pid`` (prometheus_client's own multiprocess
  default, ``all``); a dead worker's disappears;
- summaries, info, enums and other types are not copied, with a warning naming the metric (a
  summary's quantiles, an info's or enum's state do not add up across processes).

Copies run every maintenance interval, in the worker answering a scrape just before it reads the
store, and at a normal exit. A scrape is exact for the worker that answers it and at most one
interval behind for the others; a SIGKILLed worker loses what it counted since its last copy.

Hazards:
- A fork copies prometheus_client's values and this record of what was copied together, so a
  worker forked from a preloading master adds only what it counts itself. A value counted in the
  master after its last copy (one runs at ``instrument()``) is copied by each worker. The copy at
  ``instrument()`` leaves gauges out: a series labelled with the master's pid would be inherited
  by each worker's shard.
- prometheus_client's own process, platform and GC collectors are left out: ours cover the same
  ground across workers, and their names would clash with ours.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

from ..process_state import on_new_process
from ..store.metrics import Counter, Gauge, Histogram, Metric, Registry

log = logging.getLogger("softfactory_obs")

PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
Series = tuple[str, tuple[tuple[str, str], ...]]  # sample name, labels


def own_collector_names(client: Any) -> frozenset[str]:
    """The families of prometheus_client's own process, platform and GC collectors (``client`` is
    the imported module), which the app did not define."""
    own = (client.PROCESS_COLLECTOR, client.PLATFORM_COLLECTOR, client.GC_COLLECTOR)
    return frozenset(m.name for collector in own for m in collector.collect())


def app_metric_names(client: Any) -> list[str]:
    """The families the app defined in prometheus_client's default registry, by its public
    ``collect()``."""
    own = own_collector_names(client)
    return [m.name for m in client.REGISTRY.collect() if m.name not in own]


class PrometheusClientBridge:
    """Copies the app's prometheus_client metrics into ``registry``'s store; see the module doc."""

    component = "prometheus_client bridge"

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._ours: dict[str, Metric[Any] | None] = {}  # their family name -> ours (None: not copied)
        self._copied: dict[Series, Any] = {}  # per series, what the store already holds of it
        self._theirs_own: frozenset[str] | None = None
        self._lock = threading.Lock()
        on_new_process(self._new_lock, component=self.component)

    def _new_lock(self) -> None:
        # A fork may have happened while another thread held it. What was copied stays: the store
        # already counts it (in the parent's shard).
        self._lock = threading.Lock()

    def copy(self, gauges: bool = True) -> None:
        """Copy what changed since this process's previous copy. ``gauges=False`` in a process that
        may fork workers (the copy at ``instrument()``): a gauge series labelled with its pid would
        be inherited by every worker and shown as theirs."""
        client = sys.modules.get("prometheus_client")
        if client is None or os.environ.get(PROMETHEUS_MULTIPROC_ENV):  # not used, or exposed as it is
            return
        with self._lock:
            skip = self._own_collectors(client)
            for metric in client.REGISTRY.collect():
                if metric.name in skip or not metric.samples:
                    continue
                ours = self._ours[metric.name] if metric.name in self._ours else self._adopt(metric)
                if isinstance(ours, Counter):
                    self._copy_counter(metric, ours)
                elif isinstance(ours, Gauge):
                    if gauges:
                        self._copy_gauge(metric, ours)
                elif isinstance(ours, Histogram):
                    self._copy_histogram(metric, ours)

    def _own_collectors(self, client: Any) -> frozenset[str]:
        if self._theirs_own is None:
            self._theirs_own = own_collector_names(client)
        return self._theirs_own

    def _adopt(self, metric: Any) -> Metric[Any] | None:
        """Our family for one of theirs, made the first time it has samples; None (and one
        warning) for a type or a name that cannot be copied."""
        labels = [k for k in metric.samples[0].labels if k != "le"]
        name, kind, doc = metric.name, metric.type, metric.documentation
        ours: Metric[Any] | None = None
        problem = None
        if kind not in ("counter", "gauge", "histogram"):
            problem = (
                f"its type ({kind}) does not add up across worker processes; use a Counter, Gauge or Histogram, "
                f"or prometheus_client's multiprocess mode (${PROMETHEUS_MULTIPROC_ENV})"
            )
        elif {name, name + "_total"} & set(self.registry.families):
            problem = "softfactory_obs exposes a metric of that name; rename yours"
        elif kind == "gauge" and "pid" in labels:
            problem = "its label 'pid' is the one that tells workers apart here; rename it"
        else:
            try:
                if kind == "counter":
                    ours = Counter(name, doc, labels, registry=self.registry)
                elif kind == "gauge":
                    ours = Gauge(name, doc, [*labels, "pid"], mode="livesum", registry=self.registry)
                else:
                    bounds = [float(s.labels["le"]) for s in metric.samples if s.name == name + "_bucket"]
                    ours = Histogram(name, doc, labels, buckets=sorted(set(bounds)), registry=self.registry)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            log.warning("prometheus_client metric %r is not on /metrics: %s", name, problem)
        self._ours[name] = ours
        return ours

    def _copy_counter(self, metric: Any, ours: Counter) -> None:
        copied = self._copied
        for sample in metric.samples:
            if not sample.name.endswith("_total"):  # _created: when, not how many
                continue
            series = (sample.name, tuple(sample.labels.items()))
            increase = sample.value - copied.get(series, 0.0)
            if increase > 0:
                ours.labels(*sample.labels.values()).inc(increase)
                copied[series] = sample.value

    def _copy_gauge(self, metric: Any, ours: Gauge) -> None:
        pid = str(os.getpid())
        for sample in metric.samples:
            ours.labels(*sample.labels.values(), pid).set(sample.value)

    def _copy_histogram(self, metric: Any, ours: Histogram) -> None:
        name = metric.name
        per_series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for sample in metric.samples:
            labels = tuple((k, v) for k, v in sample.labels.items() if k != "le")
            parts = per_series.setdefault(labels, {"buckets": {}, "sum": 0.0})
            if sample.name == name + "_bucket":
                parts["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name == name + "_sum":
                parts["sum"] = sample.value
        for labels, parts in per_series.items():
            cumulative = [parts["buckets"].get(bound, 0.0) for bound in ours.bounds]
            counts = [int(c - below) for c, below in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
            series = (name, labels)
            before_counts, before_sum = self._copied.get(series, ([0] * len(counts), 0.0))
            increase = [now - then for now, then in zip(counts, before_counts, strict=True)]
            if any(increase) and min(increase) >= 0:
                ours.labels(*(v for _, v in labels)).add(increase, parts["sum"] - before_sum)
                self._copied[series] = (counts, parts["sum"])

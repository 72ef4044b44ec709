"""Metric families (Counter, Gauge, Histogram, CallbackGauge), as close to prometheus_client's as
the store allows, and the failure counter every component reports to.

``labels()`` hands out a child (``store.children``), which binds to this process's shard on first
use (``store.registry``).
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from ..metrics.families import Family
from .children import (
    COUNTER_SCALE,
    MAX_EXEMPLAR_BYTES,
    OTHER_SUM_SCALE,
    SUM_SCALE,
    SUM_SCALES,
    Child,
    CounterChild,
    ExceptionCounter,
    GaugeChild,
    HistogramChild,
    InProgress,
    Timer,
    sum_scale,
    sum_suffix,
)
from .registry import FROM_ENVIRONMENT, REGISTRY, Registry
from .shard import KIND_COUNT, KIND_GAUGE, KIND_STAMP, LABEL_NAME, encode_key

__all__ = [
    "COUNTER_SCALE",
    "DEFAULT_BUCKETS",
    "FROM_ENVIRONMENT",
    "GAUGE_MODES",
    "INTERNAL_ERRORS",
    "MAX_EXEMPLAR_BYTES",
    "OTHER_SUM_SCALE",
    "REGISTRY",
    "SUM_SCALE",
    "SUM_SCALES",
    "CallbackGauge",
    "Counter",
    "CounterChild",
    "ExceptionCounter",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "InProgress",
    "Registry",
    "Timer",
    "sum_scale",
    "sum_suffix",
]

# prometheus_client's default latency buckets, in seconds (the latency histogram's default too).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf)
GAUGE_MODES = ("livesum", "livemax", "livemin", "livemostrecent")


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _label_text(value: object) -> str:
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable paths would break every later scrape
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


ChildT = TypeVar("ChildT", bound=Child)


class Metric(Generic[ChildT]):
    """What Counter, Gauge and Histogram share: the name and label checks, ``labels()`` (typed: a
    ``Counter``'s gives a ``CounterChild``), the registry."""

    kind = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: Registry | None, **extra: Any
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for label in labelnames:
            if not LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{name}: label name {label!r} is not valid (letters, digits, _; not starting __)")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"{name}: duplicate label names in {list(labelnames)}")
        self.name = name
        self.labelnames = tuple(labelnames)
        self.meta: dict[str, Any] = {
            "name": name,
            "type": self.kind,
            "help": documentation,
            "labels": list(labelnames),
            **extra,
        }
        self.meta_bytes = json.dumps(self.meta, separators=(",", ":"), sort_keys=True).encode()
        self._children: dict[tuple[str, ...], ChildT] = {}
        self._children_lock = threading.Lock()
        self.registry = registry if registry is not None else REGISTRY

    def labels(self, *values: object, **by_name: object) -> ChildT:
        """The child for these label values; keep it to skip this lookup on the hot path."""
        if by_name:
            if values:
                raise ValueError(f"{self.name}: pass label values by position or by name, not both")
            try:
                values = tuple(by_name[n] for n in self.labelnames)
            except KeyError as missing:
                raise ValueError(f"{self.name}: missing label {missing}; labels are {list(self.labelnames)}") from None
            if len(by_name) != len(self.labelnames):
                raise ValueError(
                    f"{self.name}: unknown labels in {sorted(by_name)}; labels are {list(self.labelnames)}"
                )
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"{self.name}: expected {len(self.labelnames)} label values {list(self.labelnames)}, got {len(values)}"
            )
        key = tuple(_label_text(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._children_lock:
                child = self._children.get(key)
                if child is None:
                    child = self._children[key] = self._new_child(key)
        return child

    def _new_child(self, labelvalues: tuple[str, ...]) -> ChildT:
        raise NotImplementedError

    def _unlabelled(self) -> ChildT:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: call .labels(...) first")
        return self.labels()


def _key(family: Metric[Any], suffix: str, labelvalues: tuple[str, ...]) -> bytes:
    return encode_key((family.name, suffix, labelvalues))


class Counter(Metric[CounterChild]):
    """A counter summed over every worker, living or dead. As in prometheus_client, ``_total`` is
    added to a name without it (``Counter("orders", ...)`` is exposed as ``orders_total``)."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        exemplars: bool = False,
        registry: Registry | None = None,
    ) -> None:
        if not name.endswith("_total"):
            name += "_total"
        extra: dict[str, Any] = {"exemplars": True} if exemplars else {}
        super().__init__(name, documentation, labelnames, registry, scale=COUNTER_SCALE, **extra)
        self.exemplars = exemplars
        self.registry.register(self)

    def _new_child(self, labelvalues: tuple[str, ...]) -> CounterChild:
        ex = [_key(self, "x", labelvalues)] if self.exemplars else []
        return CounterChild(self, labelvalues, [(_key(self, "", labelvalues), KIND_COUNT)], ex)

    def inc(self, amount: float = 1, exemplar: Mapping[str, str] | None = None) -> None:
        """Add ``amount`` to the unlabelled counter; ``exemplar``: labels such as ``{"trace_id": ...}``."""
        self._unlabelled().inc(amount, exemplar)

    def count_exceptions(
        self, exception: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> ExceptionCounter:
        """The unlabelled counter's ``count_exceptions`` (a context manager and decorator)."""
        return self._unlabelled().count_exceptions(exception)


class Gauge(Metric[GaugeChild]):
    """A gauge over live workers, combined by ``mode``: livesum, livemax, livemin or livemostrecent.

    ``multiprocess_mode`` is prometheus_client's name for ``mode``. Its modes over dead processes
    too (``sum``, ``max``, ``min``, ``mostrecent``, ``all``, ``liveall``) are refused: a dead
    worker's gauge is not kept here.
    """

    kind = "gauge"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        mode: str | None = None,
        multiprocess_mode: str | None = None,
        registry: Registry | None = None,
    ) -> None:
        if mode is not None and multiprocess_mode is not None and mode != multiprocess_mode:
            raise ValueError(f"gauge {name!r}: mode={mode!r} and multiprocess_mode={multiprocess_mode!r} disagree")
        mode = mode or multiprocess_mode or "livesum"
        if mode not in GAUGE_MODES:
            raise ValueError(
                f"gauge {name!r}: mode must be one of {', '.join(GAUGE_MODES)}, got {mode!r}"
                + (
                    f" (the store keeps live workers' gauges only: try 'live{mode}')"
                    if f"live{mode}" in GAUGE_MODES
                    else ""
                )
            )
        super().__init__(name, documentation, labelnames, registry, mode=mode)
        self.mode = mode
        self.registry.register(self)

    def _new_child(self, labelvalues: tuple[str, ...]) -> GaugeChild:
        keys = [(_key(self, "", labelvalues), KIND_GAUGE)]
        if self.mode == "livemostrecent":
            keys.append((_key(self, "", labelvalues), KIND_STAMP))
        return GaugeChild(self, labelvalues, keys)

    def set(self, value: float) -> None:
        """Set the unlabelled gauge."""
        self._unlabelled().set(value)

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` to the unlabelled gauge."""
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount`` from the unlabelled gauge."""
        self._unlabelled().inc(-amount)

    def track_inprogress(self) -> InProgress:
        """The unlabelled gauge's ``track_inprogress`` (a context manager and decorator)."""
        return self._unlabelled().track_inprogress()


class Histogram(Metric[HistogramChild]):
    """A histogram summed over every worker, living or dead; +Inf is added to the buckets."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        exemplars: bool = False,
        registry: Registry | None = None,
    ) -> None:
        self.sum_scale = next((v for unit, v in SUM_SCALES.items() if name.endswith(unit)), OTHER_SUM_SCALE)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or any(math.isnan(b) for b in bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"histogram {name!r}: buckets must be distinct numbers, got {list(buckets)}")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        if "le" in labelnames:
            raise ValueError(f"histogram {name!r}: 'le' is reserved for buckets")
        extra: dict[str, Any] = {"exemplars": True} if exemplars else {}
        super().__init__(name, documentation, labelnames, registry, buckets=[repr(b) for b in bounds], **extra)
        self.bounds = tuple(bounds)
        self.exemplars = exemplars
        self.registry.register(self)

    def _new_child(self, labelvalues: tuple[str, ...]) -> HistogramChild:
        keys = [(_key(self, "b" + repr(b), labelvalues), KIND_COUNT) for b in self.bounds]
        keys.append((_key(self, sum_suffix(self.sum_scale), labelvalues), KIND_COUNT))
        ex = [_key(self, "x" + repr(b), labelvalues) for b in self.bounds] if self.exemplars else []
        return HistogramChild(self, labelvalues, keys, ex)

    def observe(self, value: float, exemplar: Mapping[str, str] | None = None) -> None:
        """Observe ``value`` in the unlabelled histogram; ``exemplar``: labels such as ``{"trace_id": ...}``."""
        self._unlabelled().observe(value, exemplar)

    def time(self) -> Timer:
        """The unlabelled histogram's ``time`` (a context manager and decorator)."""
        return self._unlabelled().time()


class CallbackGauge:
    """A gauge computed when scraped, in whichever worker answers the scrape.

    For values any process can read equally (a queue length in Redis, rows in a table, a file's
    age). ``fn`` returns a number, or for labelled gauges a mapping of label-value tuples to numbers.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        fn: Callable[[], Any],
        labelnames: Sequence[str] = (),
        *,
        registry: Registry | None = None,
    ) -> None:
        Metric(name, documentation, labelnames, registry)  # the same name and label checks
        self.name, self.documentation, self.fn, self.labelnames = name, documentation, fn, list(labelnames)
        (registry if registry is not None else REGISTRY).callbacks.append(self.collect)

    def collect(self) -> Iterable[Family]:
        """The gauge's family, computed now."""
        family = Family(self.name, self.documentation, "gauge", self.labelnames)
        value = self.fn()
        if self.labelnames:
            for labels, v in dict(value).items():
                family.add([_label_text(x) for x in labels], float(v))
        else:
            family.add((), float(value))
        yield family


INTERNAL_ERRORS = Counter(
    "softfactory_obs_internal_errors_total",
    "Failures of telemetry components; requests were served regardless",
    ["component"],
)
# Its slot is made with the shard, so that a store too full for new series still counts that.
REGISTRY.bind_with_shard(INTERNAL_ERRORS, INTERNAL_ERRORS.labels("metrics store"))

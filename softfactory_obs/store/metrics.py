"""Metric primitives (Counter, Gauge, Histogram) and the registry that binds them to this process's shard.

The hot path of a pre-bound child is one lock and one aligned 8-byte add into a memory-mapped
slot. Callers that are the only thread writing a child (the HTTP metrics under a server that is
not multithreaded) skip the lock with the ``*_unlocked`` writers. Only the children write slots:
nothing outside the store sees a slot, a view or the exemplar seqlock.
Binding happens on first use in each process, so metrics created in the gunicorn master
(``--preload``) or at import time work without hooks: after a fork the child drops every binding
it inherited and writes to a shard of its own, never into its parent's.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from math import floor
from typing import Any

from .._failures import report_failure
from ..families import Family
from ..process_state import ensure_current, install_fork_hook, on_new_process
from .directory import Snapshot, StoreDirectory, merge_values
from .location import ENV, auto_directory
from .shard import (
    EXEMPLAR_ID_MAX,
    KIND_COUNT,
    KIND_EXEMPLAR,
    KIND_GAUGE,
    KIND_META,
    KIND_STAMP,
    Segment,
    ShardReader,
    ShardWriter,
    encode_key,
    record_size,
    write_exemplar,
)

COUNTER_SCALE = 1_000_000  # counters hold micro-units: inc(0.5) is exact, 9.2e12 increments per process
# Histogram sums are fixed point too, scaled by unit so that an int64 lasts: nanoseconds for
# _seconds (292 years), whole bytes for _bytes (9.2 EB; at nano-units 9.2 GB, an hour of a busy
# service), micro-units for anything else. The scale is part of the sum's key (``sum`` is 1e9,
# ``sum@1`` whole units), so shards written with different scales never add up wrongly.
SUM_SCALE = 1_000_000_000
SUM_SCALES = {"_seconds": SUM_SCALE, "_bytes": 1}
OTHER_SUM_SCALE = 1_000_000
# prometheus_client's default latency buckets, in seconds (the latency histogram's default too).
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, math.inf)
MAX_EXEMPLAR_BYTES = EXEMPLAR_ID_MAX  # the longest exemplar id (labels text) a slot keeps whole
GAUGE_MODES = ("livesum", "livemax", "livemin", "livemostrecent")


def sum_suffix(scale: int) -> str:
    """The key suffix of a histogram sum stored at ``scale``."""
    return "sum" if scale == SUM_SCALE else f"sum@{scale}"


def sum_scale(suffix: str) -> int:
    """The scale of a stored sum from its key suffix (see ``sum_suffix``)."""
    return SUM_SCALE if suffix == "sum" else int(suffix[4:])


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _label_text(value: object) -> str:
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable paths would break every later scrape
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


FROM_ENVIRONMENT = "<from environment>"


class Registry:
    """The families of this process and the shard they write to (a directory, or memory).

    ``directory=FROM_ENVIRONMENT`` (the default registry) decides at the first write or scrape, not
    at import: ``SOFTFACTORY_OBS_METRICS_DIR`` if set, else a private directory per gunicorn master,
    else memory. So metrics written at import time, even in a ``--preload`` master, land where the
    workers' do.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.families: dict[str, _Family] = {}
        self._directory_path = directory
        self._directory: StoreDirectory | None = None
        self._writer: ShardWriter | None = None
        self._lock = threading.Lock()  # guards the writer's key table; slots have their own lock
        self._children: list[_Child] = []
        self._metas_written: set[str] = set()
        self._compact_pending = False
        self.callbacks: list[Callable[[], Iterable[Any]]] = []
        self._on_fork: list[weakref.WeakMethod[Callable[[], None]]] = []
        # Held weakly: a registry nobody uses any more is not reset (nor kept alive) for ever.
        on_new_process(self._after_fork_in_child, component="metrics store after fork")

    # -- configuration ---------------------------------------------------------------------------

    @property
    def directory(self) -> StoreDirectory | None:
        """The store directory this registry writes to, or None for memory."""
        if self._directory_path == FROM_ENVIRONMENT:
            self._directory_path = os.environ.get(ENV) or auto_directory()
        if self._directory is None and self._directory_path:
            self._directory = StoreDirectory(self._directory_path)
        return self._directory

    def set_directory(self, path: str | None) -> None:
        """Write to ``path`` (shared by all worker processes) from now on; ``None`` keeps values in memory."""
        with self._lock:
            if path == self._directory_path:
                return
            if self._writer is not None and self._writer.path and os.path.dirname(self._writer.path) == path:
                self._directory_path = path  # resolved from the environment to the same place
                return
            if self._writer is not None:
                raise RuntimeError(
                    f"metrics were already written to {self._directory_path or 'memory'} in this process; "
                    "set the metrics directory before the first request (or before forking workers)"
                )
            self._directory_path = path
            self._directory = None

    def register(self, family: _Family) -> _Family:
        """Add ``family``; the same metric registered twice shares its children."""
        existing = self.families.get(family.name)
        if existing is not None:
            if existing.meta != family.meta:
                raise ValueError(
                    f"metric {family.name!r} is already registered as {existing.meta}; "
                    f"cannot register it again as {family.meta}"
                )
            family._children = existing._children  # a second Counter(...) of the same metric shares children
            family._children_lock = existing._children_lock
            return existing
        self.families[family.name] = family
        return family

    # -- binding (first use in a process) ---------------------------------------------------------

    def on_fork(self, forget: Callable[[], None]) -> None:
        """Call the bound method ``forget`` in a forked child (to drop what it cached of this
        process's slots), for as long as its object lives."""
        self._on_fork = [ref for ref in self._on_fork if ref() is not None]
        self._on_fork.append(weakref.WeakMethod(forget))

    def _writer_or_none(self) -> ShardWriter:
        if self._writer is None:
            install_fork_hook()  # a fork from now on resets this process's bindings at once
            directory = self.directory
            self._writer = directory.new_shard() if directory is not None else ShardWriter(None)
            # A new incarnation usually means one just died: absorb it, so the backlog of dead
            # shards stays near the number of workers however fast they churn.
            self._compact_pending = directory is not None
        return self._writer

    def bind(self, family: _Family, keys: Sequence[tuple[bytes, int]], child: _Child) -> tuple[Segment, list[int]]:
        """Fresh slots for one child's keys, all in one segment (one view for the hot path)."""
        ensure_current()  # never bind into a parent's shard, whichever server forked us
        failure = None
        with self._lock:
            try:
                writer = self._writer_or_none()
                if family.name not in self._metas_written:
                    writer.add(family.meta_bytes, KIND_META)
                    self._metas_written.add(family.name)
                writer.reserve(sum(record_size(raw, kind) for raw, kind in keys))
                slots = [writer.add(raw, kind) for raw, kind in keys]
                seg, idx = slots[0][0], [i for _, i in slots]
            except Exception as exc:  # a full or read-only store: keep the app running, count in memory
                failure = exc
                seg, idx = Segment(0, mmap.mmap(-1, mmap.PAGESIZE)), list(range(len(keys)))
            self._children.append(child)
        if failure is not None:
            report_failure("metrics store", failure)  # after the lock: reporting writes a metric itself
        return seg, idx

    def compact_if_pending(self, _: object = None) -> bool:
        """Absorb the shards of workers that died before this one started; once per process.

        The middleware calls it after a request's body was sent, so the first request of a new
        worker does not wait for it, and even a worker that lives for a single request leaves no
        backlog behind. Returns whether a later call may still have work to do: until this process
        has its shard and has compacted (after a fork, again).
        """
        if self._compact_pending:
            self._compact_pending = False
            try:
                # Wait a little if our own maintenance thread (or a sibling) holds the lock: a worker
                # that serves one request and exits must still leave no backlog behind.
                self.compact(wait=2.0)
            except Exception as exc:
                report_failure("metrics compaction", exc)
        return self._writer is None or self._compact_pending

    def _after_fork_in_child(self) -> None:
        # Inherited bindings point into the parent's file: drop them all; the child binds anew.
        # Every step runs whatever an earlier one raised (a binding left behind would write into
        # the parent's shard); the first failure is raised at the end.
        self._lock = threading.Lock()
        self._directory = None  # its locks may have been held by a thread that does not exist here
        writer, self._writer = self._writer, None
        self._metas_written = set()
        for child in self._children:
            child._unbind()
        self._children = []
        failure: Exception | None = None
        if writer is not None:
            try:
                writer.close()
            except Exception as exc:
                failure = exc
        for ref in self._on_fork:
            forget = ref()
            if forget is not None:
                try:
                    forget()
                except Exception as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    # -- reading --------------------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """Every worker's values, merged, for a scrape."""
        ensure_current()  # this process's own shard counts as live; an inherited one is the parent's
        directory = self.directory
        if directory is not None:
            snap = directory.snapshot(self._writer)
        else:
            snap = Snapshot()
            writer = self._writer
            if writer is not None:
                reader = ShardReader()
                with self._lock:
                    buffers = writer.buffers()
                    reader.parse(buffers)
                    merge_values(reader, buffers, True, "memory", snap)
                snap.live_shards = 1
        for name, family in self.families.items():
            snap.metas.setdefault(name, family.meta)
        return snap

    def compact(self, **kwargs: Any) -> int:
        """Fold dead workers' shards into the archive (see ``StoreDirectory.compact``)."""
        ensure_current()
        directory = self.directory
        return directory.compact(**kwargs) if directory is not None else 0


# -- families and children ----------------------------------------------------------------------------


class _Family:
    kind = ""

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], registry: Registry | None, **extra: Any
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name ([a-zA-Z_:][a-zA-Z0-9_:]*)")
        for label in labelnames:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
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
        self._children: dict[tuple[str, ...], _Child] = {}
        self._children_lock = threading.Lock()
        self.registry = registry if registry is not None else REGISTRY

    def labels(self, *values: object, **by_name: object) -> Any:
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

    def _new_child(self, labelvalues: tuple[str, ...]) -> _Child:
        raise NotImplementedError

    def _unlabelled(self) -> Any:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}: call .labels(...) first")
        return self.labels()


class _Child:
    """One label set's slots. The hot path reads only attributes cached here by ``_bind``.

    Hazard: a slot is written only by the process that bound it (a reader never writes a live
    shard), so the child keeps the value it last stored (``_held``, one per value slot) and each
    write is a single store of the new value, never a read of the slot first: a read through the
    memoryview costs as much as the store. Anything else writing the slot would be overwritten by
    the next write; ``_bind`` starts every held value at 0, as a fresh slot is.
    """

    __slots__ = (
        "_ex",
        "_family",
        "_floats",
        "_held",
        "_i",
        "_idx",
        "_ints",
        "_keys",
        "_labelvalues",
        "_lock",
        "_seg",
    )

    def __init__(
        self,
        family: _Family,
        labelvalues: tuple[str, ...],
        keys: list[tuple[bytes, int]],
        exemplar_keys: Sequence[bytes] = (),
    ) -> None:
        self._family = family
        self._labelvalues = labelvalues
        self._keys = keys + [(raw, KIND_EXEMPLAR) for raw in exemplar_keys]
        self._unbind()

    def _unbind(self) -> None:
        # After a fork these point into the parent's file: None forces a fresh bind in the child.
        self._ints: Any = None
        self._floats: Any = None
        self._seg: Any = None
        self._idx: list[int] = []
        self._ex: list[int] = []
        self._held: list[Any] = []
        self._i = 0
        self._lock: Any = None

    def _bind(self) -> Any:
        registry = self._family.registry
        seg, idx = registry.bind(self._family, self._keys, self)
        slots = len(self._keys) - len(self._ex_keys())
        self._idx, self._ex = idx[:slots], idx[slots:]
        self._held = [0.0 if kind == KIND_GAUGE else 0 for _, kind in self._keys[:slots]]
        self._i = idx[0]
        self._seg = seg
        self._floats = seg.floats
        self._lock = registry._lock
        self._ints = seg.ints  # last: it is the "bound" flag the hot path checks
        return seg.ints

    def _write_exemplar(self, slot: int, value: float, ident: bytes, stamp_ns: int) -> None:
        """The one exemplar writer (the seqlock is ``shard.write_exemplar``'s), under the lock: two
        threads writing one slot at once would interleave its fields."""
        if self._ints is None:
            self._bind()
        lock = self._lock
        lock.acquire()
        try:
            write_exemplar(self._seg, slot, value, ident, stamp_ns)
        finally:
            lock.release()

    def _ex_keys(self) -> list[bytes]:
        return [raw for raw, kind in self._keys if kind == KIND_EXEMPLAR]


def _key(family: _Family, suffix: str, labelvalues: tuple[str, ...]) -> bytes:
    return encode_key((family.name, suffix, labelvalues))


class Counter(_Family):
    """A counter summed over every worker, living or dead; its name must end in ``_total``."""

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
            raise ValueError(f"counter {name!r} must end in _total (Prometheus naming)")
        extra: dict[str, Any] = {"exemplars": True} if exemplars else {}
        super().__init__(name, documentation, labelnames, registry, scale=COUNTER_SCALE, **extra)
        self.exemplars = exemplars
        self.registry.register(self)

    def _new_child(self, labelvalues: tuple[str, ...]) -> CounterChild:
        ex = [_key(self, "x", labelvalues)] if self.exemplars else []
        return CounterChild(self, labelvalues, [(_key(self, "", labelvalues), KIND_COUNT)], ex)

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` to the unlabelled counter."""
        self._unlabelled().inc(amount)


class CounterChild(_Child):
    """One label set of a ``Counter``."""

    __slots__ = ()

    def inc(self, amount: float = 1, exemplar: bytes | None = None, stamp_ns: int = 0) -> None:
        """Add ``amount`` (finite, >= 0). ``exemplar``: an ASCII id (``b"trace_id=4bf9..."``) kept as
        this series' newest exemplar (``stamp_ns``: its wall-clock time, when the caller has it)."""
        ints = self._ints
        if ints is None:
            ints = self._bind()
        if amount == 1:
            units = COUNTER_SCALE
        elif amount >= 0 and math.isfinite(amount):
            units = round(amount * COUNTER_SCALE)
        else:
            raise ValueError(f"counters only go up by finite amounts, got {amount!r}")
        held = self._held
        lock = self._lock
        lock.acquire()  # acquire/release: cheaper than ``with`` on this path
        try:
            total = held[0] = held[0] + units
            ints[self._i] = total
        finally:
            lock.release()
        if exemplar is not None:
            self.set_exemplar(float(amount), exemplar, stamp_ns)

    def inc_unlocked(self) -> None:
        """``inc(1)`` without the lock, for the one thread that writes this child: a request hook
        under a server that says ``wsgi.multithread`` is false (sync and gevent workers)."""
        ints = self._ints
        if ints is None:
            ints = self._bind()
        held = self._held
        total = held[0] = held[0] + COUNTER_SCALE
        ints[self._i] = total

    def set_exemplar(self, value: float, ident: bytes, stamp_ns: int = 0) -> None:
        """Keep ``ident`` (ASCII, cut at the slot's size) as this series' newest exemplar; nothing when
        the counter was made without ``exemplars=True``."""
        if self._ints is None:
            self._bind()
        if self._ex:
            self._write_exemplar(self._ex[0], value, ident, stamp_ns)


class Gauge(_Family):
    """A gauge over live workers, combined by ``mode``: livesum, livemax, livemin or livemostrecent."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        mode: str = "livesum",
        registry: Registry | None = None,
    ) -> None:
        if mode not in GAUGE_MODES:
            raise ValueError(f"gauge {name!r}: mode must be one of {', '.join(GAUGE_MODES)}, got {mode!r}")
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


class GaugeChild(_Child):
    """One label set of a ``Gauge``."""

    __slots__ = ("_stamped",)

    def __init__(self, family: Gauge, labelvalues: tuple[str, ...], keys: list[tuple[bytes, int]]) -> None:
        super().__init__(family, labelvalues, keys)
        self._stamped = family.mode == "livemostrecent"  # a second slot holds the write's time

    def set(self, value: float) -> None:
        """Set this series to ``value``."""
        if self._ints is None:
            self._bind()
        lock = self._lock
        lock.acquire()
        try:
            value = self._held[0] = float(value)
            self._floats[self._i] = value
            if self._stamped:
                self._ints[self._idx[1]] = time.time_ns()
        finally:
            lock.release()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (may be negative)."""
        if self._ints is None:
            self._bind()
        lock = self._lock
        lock.acquire()
        try:
            self.inc_unlocked(amount)
        finally:
            lock.release()

    def dec(self, amount: float = 1) -> None:
        """Subtract ``amount``."""
        self.inc(-amount)

    def inc_unlocked(self, amount: float = 1.0) -> None:
        """``inc`` without the lock, for the one thread that writes this child (see
        ``CounterChild.inc_unlocked``); ``amount`` may be negative."""
        if self._ints is None:
            self._bind()
        held = self._held
        value = held[0] = held[0] + amount
        self._floats[self._i] = value
        if self._stamped:
            self._ints[self._idx[1]] = time.time_ns()


class Histogram(_Family):
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

    def observe(self, value: float) -> None:
        """Observe ``value`` in the unlabelled histogram."""
        self._unlabelled().observe(value)


class HistogramChild(_Child):
    """One label set of a ``Histogram``."""

    __slots__ = ("_bounds", "_inf", "_scale", "_sum", "_top")

    def __init__(
        self,
        family: Histogram,
        labelvalues: tuple[str, ...],
        keys: list[tuple[bytes, int]],
        exemplar_keys: Sequence[bytes] = (),
    ) -> None:
        super().__init__(family, labelvalues, keys, exemplar_keys)
        finite = family.bounds[:-1]
        # Bisecting against bounds of the values' own type skips int-float comparisons (three times
        # dearer): whole-number bounds (sizes, counts) as ints, others as floats. The +Inf bucket
        # is never bisected: values above the last finite bound go there directly.
        self._bounds = tuple(int(b) for b in finite) if all(b.is_integer() for b in finite) else finite
        self._top = self._bounds[-1] if finite else -math.inf  # the last finite bound
        self._inf = len(family.bounds) - 1  # the +Inf bucket's position in _idx
        scale = family.sum_scale
        self._scale = 1 if scale == 1 else float(scale)  # float * float: no int conversion per value
        self._sum = 0  # the sum's slot, once bound

    def _bind(self) -> Any:
        ints = super()._bind()
        self._sum = self._idx[-1]
        return ints

    def observe(self, value: float, exemplar: bytes | None = None, stamp_ns: int = 0) -> int:
        """Count ``value`` in its bucket and the sum; returns the bucket's position in ``bounds``.
        NaN and infinities land in +Inf and leave the sum alone (a NaN sum would poison it for ever).
        ``exemplar``: an ASCII id kept as the newest exemplar of that bucket (``stamp_ns``: its
        wall-clock time, when the caller has it)."""
        if self._ints is None:
            self._bind()
        lock = self._lock
        lock.acquire()
        try:
            n = self.observe_unlocked(value)
        finally:
            lock.release()
        if exemplar is not None:
            self.set_exemplar(n, value, exemplar, stamp_ns)
        return n

    def observe_unlocked(self, value: float) -> int:
        """``observe`` without the lock, for the one thread that writes this child (see
        ``CounterChild.inc_unlocked``)."""
        ints = self._ints
        if ints is None:
            ints = self._bind()
        n = bisect_left(self._bounds, value) if value <= self._top else self._inf
        try:
            units = floor(value * self._scale + 0.5)  # to the nearest unit (half up); round() costs twice as much
        except (OverflowError, ValueError):  # an infinity or NaN: counted in +Inf, the sum left alone
            n, units = self._inf, 0
        held = self._held
        count = held[n] = held[n] + 1
        ints[self._idx[n]] = count
        total = held[-1] = held[-1] + units
        ints[self._sum] = total
        return n

    def set_exemplar(self, bucket: int, value: float, ident: bytes, stamp_ns: int = 0) -> None:
        """Keep ``ident`` as the newest exemplar of bucket ``bucket`` (what ``observe`` returned);
        nothing when the histogram was made without ``exemplars=True``."""
        if self._ints is None:
            self._bind()
        if self._ex:
            self._write_exemplar(self._ex[bucket], value, ident, stamp_ns)


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
        _Family(name, documentation, labelnames, registry)  # the same name and label checks
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


REGISTRY = Registry(FROM_ENVIRONMENT)

INTERNAL_ERRORS = Counter(
    "softfactory_obs_internal_errors_total",
    "Failures of telemetry components; requests were served regardless",
    ["component"],
)

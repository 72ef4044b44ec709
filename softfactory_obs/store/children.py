"""The children: one label set's slots, and the only code that writes them.

The hot path of a pre-bound child is one lock and one aligned 8-byte store into a memory-mapped
slot. The ``*_unlocked`` writers skip the lock, for callers that are the only thread writing a
child (the HTTP metrics under a server that is not multithreaded) or that hold the registry's
``lock`` themselves (several writes of one request under one acquisition). Nothing outside the
store sees a slot, a view or the exemplar seqlock.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from contextlib import ContextDecorator
from math import floor
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .shard import EXEMPLAR_ID_MAX, KIND_EXEMPLAR, KIND_GAUGE, KIND_STAMP, Segment, encode_exemplar, write_exemplar

if TYPE_CHECKING:
    from .metrics import Gauge, Histogram, Metric

COUNTER_SCALE = 1_000_000  # counters hold micro-units: inc(0.5) is exact, 9.2e12 increments per process
# Histogram sums are fixed point too, scaled by unit so that an int64 lasts: nanoseconds for
# _seconds (292 years), whole bytes for _bytes (9.2 EB; at nano-units 9.2 GB, an hour of a busy
# service), micro-units for anything else. The scale is part of the sum's key (``sum`` is 1e9,
# ``sum@1`` whole units), so shards written with different scales never add up wrongly.
SUM_SCALE = 1_000_000_000
SUM_SCALES = {"_seconds": SUM_SCALE, "_bytes": 1}
OTHER_SUM_SCALE = 1_000_000
MAX_EXEMPLAR_BYTES = EXEMPLAR_ID_MAX  # the most an exemplar's labels take in a slot, as name=value lines


def sum_suffix(scale: int) -> str:
    """The key suffix of a histogram sum stored at ``scale``."""
    return "sum" if scale == SUM_SCALE else f"sum@{scale}"


def sum_scale(suffix: str) -> int:
    """The scale of a stored sum from its key suffix (see ``sum_suffix``)."""
    return SUM_SCALE if suffix == "sum" else int(suffix[4:])


class Child:
    """One label set's slots, the base of the three children. The hot path reads only attributes
    cached here by ``_bind``.

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
        family: Metric[Any],
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

    @property
    def keys(self) -> list[tuple[bytes, int]]:
        """The record keys and kinds this child's slots are stored under (values, then exemplars)."""
        return self._keys

    @property
    def bound(self) -> bool:
        """Whether this child has its slots in this process."""
        return self._ints is not None

    def _bind(self) -> Any:
        self._family.registry.bind(self._family, self)
        return self._ints

    def attach(self, seg: Segment, idx: list[int], lock: Any) -> None:
        """Take ``idx`` in ``seg`` as this child's slots (the registry calls it, under ``lock``)."""
        slots = len(self._keys) - len(self._ex_keys())
        self._idx, self._ex = idx[:slots], idx[slots:]
        self._held = [0.0 if kind == KIND_GAUGE else 0 for _, kind in self._keys[:slots]]
        self._i = idx[0]
        self._seg = seg
        self._floats = seg.floats
        self._lock = lock
        self._attaching()
        self._ints = seg.ints  # last: it is the "bound" flag the hot path checks

    def move(self, seg: Segment, idx: list[int]) -> None:
        """Take ``idx`` in ``seg`` as this child's slots, keeping what it counted so far: the
        values it holds are stored into the new slots (the registry calls it, under the lock, on
        a thread that may write this child; see ``Registry.write_unwritten``)."""
        old_ints, old_idx = self._ints, self._idx
        slots = len(old_idx)
        self._idx, self._ex = idx[:slots], idx[slots:]
        self._i = idx[0]
        self._seg = seg
        self._floats = seg.floats
        self._attaching()
        self._ints = seg.ints
        for (_, kind), held, old, new in zip(self._keys, self._held, old_idx, self._idx, strict=False):
            if kind == KIND_GAUGE:
                seg.floats[new] = held
            elif kind == KIND_STAMP:
                seg.ints[new] = old_ints[old]  # a gauge's write time is not held: copy it
            else:
                seg.ints[new] = held

    def _attaching(self) -> None:
        """What a kind of child derives from its slots, before it counts as bound."""

    def _write_exemplar(self, slot: int, value: float, labels: Mapping[str, str], stamp_ns: int) -> None:
        """The one exemplar writer (the seqlock is ``shard.write_exemplar``'s), under the lock: two
        threads writing one slot at once would interleave its fields."""
        ident = encode_exemplar(labels)  # before the lock: it may refuse the labels
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


class CounterChild(Child):
    """One label set of a ``Counter``."""

    __slots__ = ()

    def inc(self, amount: float = 1, exemplar: Mapping[str, str] | None = None, stamp_ns: int = 0) -> None:
        """Add ``amount`` (finite, >= 0). ``exemplar``: labels (``{"trace_id": "4bf9..."}``) kept as
        this series' newest exemplar (``stamp_ns``: its wall-clock time, when the caller has it);
        labels a slot cannot hold whole raise ValueError, after the count."""
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

    def count_exceptions(
        self, exception: type[BaseException] | tuple[type[BaseException], ...] = Exception
    ) -> ExceptionCounter:
        """A context manager and decorator counting the exceptions of ``exception``'s type that leave it."""
        return ExceptionCounter(self.inc, exception)

    def inc_unlocked(self) -> None:
        """``inc(1)`` without the lock, for the one thread that writes this child (a request hook
        under a server that says ``wsgi.multithread`` is false: sync and gevent workers), or for a
        caller holding the registry's ``lock``."""
        ints = self._ints
        if ints is None:
            ints = self._bind()
        held = self._held
        total = held[0] = held[0] + COUNTER_SCALE
        ints[self._i] = total

    def set_exemplar(self, value: float, labels: Mapping[str, str], stamp_ns: int = 0) -> None:
        """Keep ``labels`` as this series' newest exemplar, for ``value``; nothing when the counter
        was made without ``exemplars=True``."""
        if self._ints is None:
            self._bind()
        if self._ex:
            self._write_exemplar(self._ex[0], value, labels, stamp_ns)


class GaugeChild(Child):
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

    def track_inprogress(self) -> InProgress:
        """A context manager and decorator: this gauge is one higher while the block runs."""
        return InProgress(self.inc)

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


class HistogramChild(Child):
    """One label set of a ``Histogram``."""

    __slots__ = ("_bounds", "_inf", "_scale", "_sum", "_top", "_whole")

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
        self._whole = scale == 1  # sums in whole units (bytes): an int value is its own
        self._sum = 0  # the sum's slot, once bound

    def _attaching(self) -> None:
        self._sum = self._idx[-1]  # the sum is the last value slot

    def observe(self, value: float, exemplar: Mapping[str, str] | None = None, stamp_ns: int = 0) -> int:
        """Count ``value`` in its bucket and the sum; returns the bucket's position in ``bounds``.
        NaN and infinities land in +Inf and leave the sum alone (a NaN sum would poison it for ever).
        ``exemplar``: labels kept as the newest exemplar of that bucket (``stamp_ns``: its
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

    def time(self) -> Timer:
        """A context manager and decorator observing the seconds its block took."""
        return Timer(self.observe)

    def observe_unlocked(self, value: float) -> int:
        """``observe`` without the lock, for the one thread that writes this child (see
        ``CounterChild.inc_unlocked``)."""
        ints = self._ints
        if ints is None:
            ints = self._bind()
        n = bisect_left(self._bounds, value) if value <= self._top else self._inf
        if self._whole and type(value) is int:
            units = value
        else:
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

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add observations counted elsewhere (another library's histogram, copied): ``counts[i]``
        more values in the bucket of ``bounds[i]`` (per bucket, not cumulative), ``total`` more in
        the sum."""
        if len(counts) != self._inf + 1 or any(c < 0 for c in counts):
            raise ValueError(f"expected {self._inf + 1} bucket counts, none negative, got {list(counts)}")
        ints = self._ints
        if ints is None:
            ints = self._bind()
        units = floor(total * self._scale + 0.5) if math.isfinite(total) else 0
        held, idx = self._held, self._idx
        lock = self._lock
        lock.acquire()
        try:
            for n, count in enumerate(counts):
                if count:
                    ints[idx[n]] = held[n] = held[n] + count
            ints[self._sum] = held[-1] = held[-1] + units
        finally:
            lock.release()

    def set_exemplar(self, bucket: int, value: float, labels: Mapping[str, str], stamp_ns: int = 0) -> None:
        """Keep ``labels`` as the newest exemplar of bucket ``bucket`` (what ``observe`` returned);
        nothing when the histogram was made without ``exemplars=True``."""
        if self._ints is None:
            self._bind()
        if self._ex:
            self._write_exemplar(self._ex[bucket], value, labels, stamp_ns)


# -- prometheus_client's helpers: each a context manager and a decorator -----------------------------


class Timer(ContextDecorator):
    """``with histogram.time():`` or ``@histogram.time()``: observes the seconds the block took."""

    def __init__(self, observe: Callable[[float], object]) -> None:
        self._observe = observe
        self._started = 0.0

    def _recreate_cm(self) -> Timer:
        return Timer(self._observe)  # a decorated function may run in several threads at once

    def __enter__(self) -> Timer:
        self._started = perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._observe(perf_counter() - self._started)


class ExceptionCounter(ContextDecorator):
    """``with counter.count_exceptions():``: counts the exceptions of ``exception``'s type that leave
    the block (they still propagate)."""

    def __init__(self, inc: Callable[[], object], exception: type[BaseException] | tuple[type[BaseException], ...]):
        self._inc = inc
        self._exception = exception

    def __enter__(self) -> ExceptionCounter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: object, traceback: object) -> None:
        if kind is not None and issubclass(kind, self._exception):
            self._inc()


class InProgress(ContextDecorator):
    """``with gauge.track_inprogress():``: the gauge is one higher while the block runs."""

    def __init__(self, inc: Callable[[float], object]) -> None:
        self._inc = inc

    def __enter__(self) -> InProgress:
        self._inc(1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        self._inc(-1.0)

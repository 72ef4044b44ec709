"""The multiprocess-safe metrics store: shard files, liveness, compaction and metric primitives."""

from .directory import Snapshot, StoreBusyError, StoreDirectory
from .metrics import DEFAULT_BUCKETS, REGISTRY, CallbackGauge, Counter, Gauge, Histogram, Registry

__all__ = [
    "DEFAULT_BUCKETS",
    "REGISTRY",
    "CallbackGauge",
    "Counter",
    "Gauge",
    "Histogram",
    "Registry",
    "Snapshot",
    "StoreBusyError",
    "StoreDirectory",
]

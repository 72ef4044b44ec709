"""The metrics store with real processes (os.fork), real files and kernel locks; no mocks."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import call_wsgi, in_child, remount, samples, tmpfs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softfactory_obs import ObservabilityMiddleware, _failures
from softfactory_obs._failures import failure_counts
from softfactory_obs.components import Compaction
from softfactory_obs.metrics.exposition import MetricsApp, families_from
from softfactory_obs.store import location
from softfactory_obs.store.directory import StoreDirectory
from softfactory_obs.store.metrics import (
    MAX_EXEMPLAR_BYTES,
    SUM_SCALE,
    CallbackGauge,
    Counter,
    Gauge,
    Histogram,
    Registry,
    Timer,
)
from softfactory_obs.store.reader import ShardReader
from softfactory_obs.store.registry import REGISTRY
from softfactory_obs.store.shard import HEADER_SIZE, KIND_COUNT, MAGIC, encode_key, record_size


def value(registry: Registry, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def store_dir(tmp_path: Path) -> str:
    return str(tmp_path / "store")


def metrics_of(registry: Registry) -> tuple[Counter, Histogram, Gauge]:
    return (
        Counter("jobs_total", "Jobs done", ["kind"], registry=registry),
        Histogram("job_seconds", "Job time", ["kind"], buckets=(0.1, 1.0), registry=registry),
        Gauge("queue_depth", "Items waiting", registry=registry),
    )


def test_memory_mode_needs_no_directory() -> None:
    registry = Registry()
    counter, hist, gauge = metrics_of(registry)
    counter.labels("a").inc()
    counter.labels(kind="a").inc(2.5)
    hist.labels("a").observe(0.05)
    hist.labels("a").observe(0.5)
    hist.labels("a").observe(7)
    gauge.set(3)
    gauge.inc(2)
    assert value(registry, "jobs_total", kind="a") == 3.5
    assert value(registry, "job_seconds_bucket", kind="a", le="0.1") == 1
    assert value(registry, "job_seconds_bucket", kind="a", le="1.0") == 2
    assert value(registry, "job_seconds_bucket", kind="a", le="+Inf") == 3
    assert value(registry, "job_seconds_count", kind="a") == 3
    assert value(registry, "job_seconds_sum", kind="a") == pytest.approx(7.55)
    assert value(registry, "queue_depth") == 5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: Counter("bad-name_total", "x", registry=r), "not a valid Prometheus name"),
        (lambda r: Counter("x_total", "x", ["__reserved"], registry=r), "label name '__reserved' is not valid"),
        (lambda r: Counter("x_total", "x", ["a", "a"], registry=r), "duplicate label names"),
        (lambda r: Gauge("g", "x", mode="all", registry=r), "mode must be one of livesum"),
        (lambda r: Gauge("g", "x", multiprocess_mode="max", registry=r), "live workers' gauges only: try 'livemax'"),
        (lambda r: Gauge("g", "x", mode="livesum", multiprocess_mode="livemax", registry=r), "disagree"),
        (lambda r: Counter("e_total", "x", exemplars=True, registry=r).inc(1, {"trace id": "a"}), "label name"),
        (lambda r: Counter("e_total", "x", exemplars=True, registry=r).inc(1, {"id": "a" * 100}), "a slot keeps"),
        (lambda r: Counter("e_total", "x", exemplars=True, registry=r).inc(1, {"k": "a" * 128}), "128 characters"),
        (lambda r: Histogram("h", "x", ["le"], registry=r), "'le' is reserved"),
        (lambda r: Histogram("h", "x", buckets=(1, 1), registry=r), "buckets must be distinct"),
        (lambda r: Counter("x_total", "x", ["a"], registry=r).inc(), r"has labels \['a'\]"),
        (lambda r: Counter("x_total", "x", ["a"], registry=r).labels("1", "2"), "expected 1 label values"),
        (lambda r: Counter("x_total", "x", ["a"], registry=r).labels(b="1"), "missing label 'a'"),
        (lambda r: Counter("x_total", "x", registry=r).inc(-1), "only go up"),
        (lambda r: (Counter("x_total", "x", registry=r), Gauge("x_total", "x", registry=r)), "already registered"),
    ],
)
def test_bad_definitions_and_calls_say_what_is_wrong(make: Callable[[Registry], Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(Registry())


def test_registering_the_same_metric_twice_shares_it() -> None:
    registry = Registry()
    first = Counter("again_total", "x", ["k"], registry=registry)
    second = Counter("again_total", "x", ["k"], registry=registry)
    first.labels("a").inc()
    second.labels("a").inc()
    assert first.labels("a") is second.labels("a")
    assert value(registry, "again_total", k="a") == 2


def test_processes_sum_exactly_before_and_after_compaction(store_dir: str) -> None:
    registry = Registry(store_dir)
    counter, hist, _ = metrics_of(registry)
    counter.labels("parent").inc(3)

    def work(n: int) -> Callable[[], None]:
        def body() -> None:
            for _ in range(1000):
                counter.labels("web").inc()
                hist.labels("web").observe(0.25 * n)

        return body

    for n in range(5):
        assert in_child(work(n)) == 0
    before = samples(registry)
    assert before[("jobs_total", (("kind", "web"),))] == 5000
    assert before[("job_seconds_count", (("kind", "web"),))] == 5000
    assert before[("job_seconds_sum", (("kind", "web"),))] == 1000 * 0.25 * (0 + 1 + 2 + 3 + 4)
    assert before[("jobs_total", (("kind", "parent"),))] == 3
    assert before[("softfactory_obs_store_shards", (("state", "dead"),))] == 5
    assert registry.compact() == 5
    after = samples(registry)
    assert {k: v for k, v in after.items() if not k[0].startswith("softfactory_obs")} == {
        k: v for k, v in before.items() if not k[0].startswith("softfactory_obs")
    }
    assert after[("softfactory_obs_store_shards", (("state", "dead"),))] == 0
    assert after[("softfactory_obs_scrape_files_read", ())] == 1  # only our own live shard is read now
    assert sorted(f for f in os.listdir(store_dir) if f.endswith(".shard")) == [
        os.path.basename(str(registry.shard_path))
    ]


def test_gauges_count_live_processes_only(store_dir: str) -> None:
    registry = Registry(store_dir)
    total = Gauge("conns", "x", registry=registry)
    peak = Gauge("conns_max", "x", mode="livemax", registry=registry)
    low = Gauge("conns_min", "x", mode="livemin", registry=registry)
    recent = Gauge("last_seen", "x", mode="livemostrecent", registry=registry)
    read_end, write_end = os.pipe()
    ready_read, ready_write = os.pipe()

    def stays_alive() -> None:
        os.close(write_end)
        total.set(5)
        peak.set(5)
        low.set(5)
        recent.set(1)
        os.write(ready_write, b"x")  # its gauges are written: the parent may read them now
        os.read(read_end, 1)  # until the parent closes the pipe

    pid = os.fork()
    if pid == 0:
        try:
            stays_alive()
        finally:
            os._exit(0)
    os.close(read_end)
    os.close(ready_write)
    assert os.read(ready_read, 1) == b"x"  # waits however loaded the machine is
    os.close(ready_read)
    try:

        def short_lived() -> None:
            total.set(7)
            peak.set(7)
            low.set(7)
            recent.set(2)

        assert in_child(short_lived) == 0
        total.set(1)  # the scraping process itself is a live writer too
        assert value(registry, "conns") == 6
        assert value(registry, "conns_max") == 5
        assert value(registry, "conns_min") == 5
        assert value(registry, "last_seen") == 1
    finally:
        os.close(write_end)
        os.waitpid(pid, 0)
    assert value(registry, "conns") == 1  # the killed or exited writer's gauge is gone


def test_forked_child_never_writes_into_its_parents_shard(store_dir: str) -> None:
    registry = Registry(store_dir)
    counter = Counter("forked_total", "x", registry=registry)
    counter.inc(10)  # bound before the fork: the child inherits this binding and must drop it
    parent_shard = registry.shard_path
    assert parent_shard is not None

    def child() -> None:
        for _ in range(10000):
            counter.inc()

    assert in_child(child) == 0
    assert len([n for n in os.listdir(store_dir) if n.endswith(".shard")]) == 2
    assert value(registry, "forked_total") == 10010
    # The parent's own file still says 10: read it alone through a directory holding just that shard.
    alone = Path(store_dir).parent / "alone"
    alone.mkdir()
    os.link(parent_shard, alone / os.path.basename(parent_shard))
    snap = StoreDirectory(str(alone)).snapshot()
    assert snap.counts[("forked_total", "", ())] == 10 * 1_000_000


# -- exactness of regrouping: integers, never floats --------------------------------------------------

AMOUNTS = st.lists(
    st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False, width=64), min_size=1, max_size=20),
    min_size=2,
    max_size=12,
)


def _exposed(registry: Registry) -> dict[Any, float]:
    return {k: v for k, v in samples(registry).items() if not k[0].startswith("softfactory_obs")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(per_shard=AMOUNTS, kill_order=st.randoms(use_true_random=False))
def test_compaction_in_any_grouping_is_bit_identical(
    tmp_path: Path, per_shard: list[list[float]], kill_order: Any
) -> None:
    directory = tmp_path / os.urandom(6).hex()
    shards = []
    for amounts in per_shard:  # each Registry is one writer incarnation with its own locked file
        registry = Registry(str(directory))
        counter = Counter("money_total", "x", registry=registry)
        hist = Histogram("lat_seconds", "x", buckets=(1.0,), registry=registry)
        for amount in amounts:
            counter.inc(amount)
            hist.observe(amount)
        shards.append(registry)
    reader = Registry(str(directory))
    Counter("money_total", "x", registry=reader)
    Histogram("lat_seconds", "x", buckets=(1.0,), registry=reader)
    expected = _exposed(reader)
    alive = list(shards)
    kill_order.shuffle(alive)
    while alive:
        # Kill a random, non-prefix subset of the writers, then compact: the exposed samples never move.
        for registry in alive[: kill_order.randint(1, len(alive))]:
            registry.release()  # like a process exiting: its lock is released
            alive.remove(registry)
        reader.compact()
        assert _exposed(reader) == expected


def test_a_naive_float_archive_would_not_be_exact() -> None:
    # What the property above guards against: regrouping float sums changes them.
    values = [0.1, 0.2, 0.3, 1e16, -1e16] * 2
    naive_all_at_once = sum(values)
    naive_two_groups = sum(values[:3]) + sum(values[3:])
    assert naive_all_at_once != naive_two_groups
    registry = Registry()
    counter = Counter("exact_total", "x", registry=registry)
    for v in (0.1, 0.2, 0.3):
        counter.inc(v)
    assert value(registry, "exact_total") == 0.6  # micro-units: 100000 + 200000 + 300000, then one division


# -- crash consistency ----------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["after_tmp", "after_rename", "between_unlinks"])
def test_compactor_killed_midway_loses_and_doubles_nothing(store_dir: str, point: str) -> None:
    registry = Registry(store_dir)
    counter = Counter("safe_total", "x", ["w"], registry=registry)
    for n in range(4):
        assert in_child(lambda n=n: counter.labels(str(n % 2)).inc(n + 1)) == 0
    expected = {"0": 1 + 3, "1": 2 + 4}

    def check() -> None:
        for w, total in expected.items():
            assert value(registry, "safe_total", w=w) == total

    check()
    assert in_child(lambda: StoreDirectory(store_dir).compact(crash_at=point)) == 17
    check()  # a scrape right after the crash: exact
    registry.compact()
    check()
    leftovers = [n for n in os.listdir(store_dir) if ".tmp-" in n or n.endswith(".new")]
    assert leftovers == []
    assert [n for n in os.listdir(store_dir) if n.endswith(".shard")] == []  # all four absorbed, once


# -- faults -----------------------------------------------------------------------------------------------


def _shard_name() -> str:
    return f"w-1-{os.getpid()}-{os.urandom(8).hex()}.shard"


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 100, MAGIC + b"\xff" * (HEADER_SIZE + 100)],
    ids=["zero-byte", "no-magic", "garbage-used"],
)
def test_corrupt_dead_shard_is_quarantined_and_the_scrape_succeeds(store_dir: str, content: bytes) -> None:
    registry = Registry(store_dir)
    counter = Counter("ok_total", "x", registry=registry)
    counter.inc()
    bad = Path(store_dir) / _shard_name()
    bad.write_bytes(content)
    app = MetricsApp(registry)
    status, body = _call(app)
    assert status.startswith("200")
    assert "ok_total 1.0" in body
    assert (Path(str(bad) + ".corrupt")).exists() and not bad.exists()
    assert failure_counts()["metrics store (corrupt shard quarantined)"] == 1


def test_corrupt_live_shard_fails_the_scrape_loudly(store_dir: str) -> None:
    registry = Registry(store_dir)
    Counter("ok_total", "x", registry=registry).inc()
    bad = Path(store_dir) / _shard_name()
    bad.write_bytes(MAGIC + b"\x7f" * 200)
    with open(bad, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a live owner: we may not drop its data
        status, body = _call(MetricsApp(registry))
    assert status.startswith("500")
    assert "metrics scrape failed" in body


def test_unusable_store_directory_never_fails_the_app(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    registry = Registry(str(not_a_dir / "store"))
    counter = Counter("still_total", "x", registry=registry)
    counter.inc()  # must not raise
    counter.inc()
    assert failure_counts()["metrics store"] == 1  # reported once per process, counted


def test_full_tmpfs_is_an_error_not_a_sigbus(tmp_path: Path) -> None:
    # A small real tmpfs, nearly full: growing a shard must fail cleanly (we preallocate), not kill us.
    with tmpfs(tmp_path / "tiny", "size=192k") as mount:
        (mount / "filler").write_bytes(b"x" * 100 * 1024)
        script = f"""
import sys
from softfactory_obs.store.metrics import Counter, Registry
from softfactory_obs._failures import failure_counts
r = Registry({str(mount / "store")!r})
c = Counter("many_total", "x", ["n"], registry=r)
for n in range(5000):  # ~120 bytes of key each: far more than the space left
    c.labels(str(n) * 20).inc()
print(failure_counts().get("metrics store", 0))
"""
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        assert int(out.stdout.decode().strip()) >= 1


def test_histogram_bucket_layout_change_exposes_the_union(store_dir: str) -> None:
    old = Registry(store_dir)
    Histogram("layout_seconds", "x", buckets=(0.1, 1), registry=old).observe(0.05)
    old.release()
    new = Registry(store_dir)
    Histogram("layout_seconds", "x", buckets=(0.5, 1.0), registry=new).observe(0.3)
    got = {k: v for k, v in samples(new).items() if k[0] == "layout_seconds_bucket"}
    assert got == {
        ("layout_seconds_bucket", (("le", "0.1"),)): 1,
        ("layout_seconds_bucket", (("le", "0.5"),)): 2,
        ("layout_seconds_bucket", (("le", "1.0"),)): 2,
        ("layout_seconds_bucket", (("le", "+Inf"),)): 2,
    }


def test_histogram_sums_last_a_lifetime_in_their_unit(store_dir: str) -> None:
    """Sums are int64 fixed point; at nano-units a _bytes sum would overflow after 9.2 GB. Each unit
    has its own scale, kept in the key, so shards written before and after a scale change add up."""
    registry = Registry(store_dir)
    sizes = Histogram("big_response_bytes", "x", buckets=(100.0,), registry=registry)
    rows = Histogram("big_rows", "x", buckets=(1.0,), registry=registry)
    for _ in range(20):
        sizes.observe(2_000_000_000)  # 40 GB in all
        rows.observe(1e9)
    rows.observe(0.25)
    got = samples(registry)
    assert got[("big_response_bytes_sum", ())] == 40_000_000_000
    assert got[("big_rows_sum", ())] == 20e9 + 0.25
    assert got[("big_rows_count", ())] == 21
    assert failure_counts().get("metrics store", 0) == 0

    def old_layout() -> None:  # a shard written by a version that kept every sum in nano-units
        old = Histogram("mixed_bytes", "x", buckets=(100.0,), registry=Registry(store_dir))
        old.sum_scale = SUM_SCALE
        old.observe(50)

    assert in_child(old_layout) == 0
    Histogram("mixed_bytes", "x", buckets=(100.0,), registry=registry).observe(30)
    got = samples(registry)
    assert got[("mixed_bytes_sum", ())] == 80
    assert got[("mixed_bytes_count", ())] == 2


def _call(app: Any, **environ: Any) -> tuple[str, str]:
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        got["status"], got["headers"] = status, headers

    body = b"".join(app({"REQUEST_METHOD": "GET", **environ}, start_response))
    return got["status"], body.decode("utf-8", "replace")


def test_families_are_deterministic_and_each_once(store_dir: str) -> None:
    registry = Registry(store_dir)
    c, h, g = metrics_of(registry)
    c.labels("b").inc()
    c.labels("a").inc()
    h.labels("a").observe(1)
    g.set(1)
    first = [f.name for f in families_from(registry.snapshot())]
    assert first == sorted(set(first))
    body1, _ = MetricsApp(registry).render()
    body2, _ = MetricsApp(registry).render()
    strip = lambda b: [x for x in b.decode().splitlines() if "softfactory_obs_scrape" not in x]  # noqa: E731
    assert strip(body1) == strip(body2)


def test_reporting_a_store_failure_from_inside_the_store_does_not_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The failure hook writes a metric into the same registry whose write just failed.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    registry = Registry(str(blocker / "store"))
    errors = Counter("errs_total", "x", ["component"], registry=registry)
    monkeypatch.setattr(_failures, "on_failure", lambda component: errors.labels(component).inc())
    worker = threading.Thread(target=Counter("x_total", "x", registry=registry).inc, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "deadlocked while reporting its own failure"
    assert failure_counts()["metrics store"] >= 1


def test_racing_compactors_absorb_each_shard_exactly_once(store_dir: str) -> None:
    registry = Registry(store_dir)
    counter = Counter("raced_total", "x", registry=registry)
    directory = StoreDirectory(store_dir)
    # 30 dead shards (no middleware here, so no writer absorbs its predecessors).
    for n in range(30):
        registry_n = Registry(store_dir)
        Counter("raced_total", "x", registry=registry_n).inc(n + 1)
        registry_n.release()
    assert directory.snapshot().dead_shards == 30
    start = os.pipe()
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            os.read(start[0], 1)
            try:
                while StoreDirectory(store_dir).compact(max_shards=3):
                    pass
            finally:
                os._exit(0)
        pids.append(pid)
    os.write(start[1], b"x" * 8)  # all eight start together
    for pid in pids:
        os.waitpid(pid, 0)
    registry.compact()
    assert value(registry, "raced_total") == sum(range(1, 31))
    assert [n for n in os.listdir(store_dir) if n.endswith(".shard")] == []
    counter.inc()
    assert value(registry, "raced_total") == sum(range(1, 31)) + 1


def test_readers_never_see_a_torn_or_decreasing_value(store_dir: str) -> None:
    registry = Registry(store_dir)
    Counter("hammer_total", "x", registry=registry)
    ready = os.pipe()

    def writer() -> None:
        child = Counter("hammer_total", "x", registry=registry)
        child.inc()
        os.write(ready[1], b"x")
        for _ in range(300_000):
            child.inc()

    pid = os.fork()
    if pid == 0:
        try:
            writer()
        finally:
            os._exit(0)
    os.read(ready[0], 1)
    seen = []
    reader = StoreDirectory(store_dir)
    while True:
        done, _ = os.waitpid(pid, os.WNOHANG)
        seen.append(reader.snapshot().counts.get(("hammer_total", "", ()), 0))
        if done:
            break
    seen.append(reader.snapshot().counts[("hammer_total", "", ())])
    assert len(seen) > 10
    assert all(b >= a for a, b in itertools.pairwise(seen)), "a counter went backwards"
    assert seen[-1] == 300_001 * 1_000_000


def test_a_dead_shard_named_after_a_live_pid_is_still_dead(store_dir: str) -> None:
    # Liveness is the kernel lock, never the pid in the name: pid reuse cannot keep a dead shard "alive".
    registry = Registry(store_dir)
    counter = Counter("reused_total", "x", registry=registry)
    assert in_child(lambda: counter.inc(5)) == 0
    [dead] = [n for n in os.listdir(store_dir) if n.endswith(".shard")]
    renamed = f"w-{os.getpid()}-1-{'0' * 16}.shard"  # as if the dead writer had had our pid
    os.rename(os.path.join(store_dir, dead), os.path.join(store_dir, renamed))
    counter.inc(1)  # our own shard: same pid, a different file
    assert value(registry, "reused_total") == 6
    registry.compact()
    assert not os.path.exists(os.path.join(store_dir, renamed))
    assert value(registry, "reused_total") == 6


def test_a_read_only_store_is_read_and_what_was_counted_meanwhile_moves_in_later(tmp_path: Path) -> None:
    """F2 + F3: a worker started while the directory is read-only scrapes what the others wrote
    (not a 500), counts in memory, and moves those counts into a shard once it can write."""
    with tmpfs(tmp_path / "ro", "size=256k") as mount:
        store = str(mount / "store")
        _dead_worker_counting(store, 5)
        remount(mount, "ro")
        registry = Registry(store)
        counter = Counter("served_total", "x", registry=registry)
        counter.inc(2)
        assert failure_counts()["metrics store"] == 1  # the control: the store did refuse the shard
        status, body = _call(MetricsApp(registry))
        assert status.startswith("200"), body
        assert "served_total 5.0" in body  # what the others wrote; our 2 are in no scrape yet
        assert "softfactory_obs_store_writable 0.0" in body
        assert registry.write_unwritten(every=0) is True  # still read-only: they wait
        remount(mount, "rw")
        assert registry.write_unwritten(every=0) is False
        counter.inc()
        assert value(Registry(store), "served_total") == 8  # a fresh reader: every count is in the files
        assert "softfactory_obs_store_writable 1.0" in _call(MetricsApp(registry))[1]


def test_counts_made_while_the_store_is_full_are_written_once_it_has_room(store_dir: str) -> None:
    """F2: a shard that cannot grow (a file-size limit; a full tmpfs fails the same way) keeps new
    series in memory; the store's failure counter has a slot from the start, so every worker sees
    the fault at once; once there is room, the counts held move into the shard, none lost."""

    def worker() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        default = REGISTRY  # the store's own failure counter lives in it
        default.set_directory(store_dir)
        counter = Counter("paths_total", "x", ["path"], registry=default)
        counter.labels("first").inc()  # the shard is made, with its first segment
        shard = default.shard_path
        assert shard is not None
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(shard), limit[1]))
        for n in range(1500):
            counter.labels(f"path-{n:05d}-" * 4).inc()
        assert default.unwritten > 0  # the control: the shard did stop growing
        reader = Registry(store_dir)
        assert value(reader, "softfactory_obs_internal_errors_total", component="metrics store") >= 1
        held = sum(v for (name, _), v in samples(reader).items() if name == "paths_total")
        assert held < 1501, held
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        assert default.write_unwritten(every=0) is False
        counter.labels("path-00007-" * 4).inc()
        totals = samples(Registry(store_dir))
        assert sum(v for (name, _), v in totals.items() if name == "paths_total") == 1502
        assert totals[("paths_total", (("path", "path-00007-" * 4),))] == 2

    os.makedirs(store_dir)
    assert in_child(worker) == 0


def test_a_dead_shard_is_parsed_anew_not_trusted_from_what_was_read_while_it_lived(store_dir: str) -> None:
    """F8: a reader that parsed a shard while it lived re-validates it whole once it is dead."""
    worker = Registry(store_dir)
    Counter("served_total", "x", registry=worker).inc(5)
    reader = Registry(store_dir)
    Counter("served_total", "x", registry=reader).inc()
    assert value(reader, "served_total") == 6  # the reader has the worker's key table now
    path = worker.shard_path
    assert path is not None
    worker.release()  # the worker is gone
    data = bytearray(Path(path).read_bytes())
    used = int.from_bytes(data[8:16], sys.byteorder)
    data[HEADER_SIZE:used] = bytes((n * 151 + 7) % 256 for n in range(used - HEADER_SIZE))  # keys and values
    Path(path).write_bytes(bytes(data))
    assert value(reader, "served_total") == 1  # our own count, not garbage
    assert Path(path + ".corrupt").exists()


def test_a_dead_shard_that_changes_after_it_was_validated_is_set_aside(store_dir: str) -> None:
    """F8: a dead shard never changes; bytes that do (here a plausible value in its one counter
    slot) are refused, not exposed."""
    worker = Registry(store_dir)
    Counter("served_total", "x", registry=worker).inc(5)
    path = worker.shard_path
    assert path is not None
    worker.release()
    reader = Registry(store_dir)
    assert value(reader, "served_total") == 5  # validated dead, checksum kept
    raw = encode_key(("served_total", "", ()))
    with open(path, "r+b") as f:
        record = f.read().index(raw) - 8  # the record's head comes first
        f.seek(record + record_size(raw) - 8)  # its value ends the record
        f.write((10**12 * 1_000_000).to_bytes(8, sys.byteorder))
    snap_samples = samples(reader)
    assert ("served_total", ()) not in snap_samples  # set aside, not 10^12
    assert Path(path + ".corrupt").exists()
    assert failure_counts()["metrics store (corrupt shard quarantined)"] == 1


@pytest.mark.parametrize("writer", ["observe", "observe_unlocked"])
def test_histogram_edge_values(writer: str) -> None:
    registry = Registry()
    hist = Histogram("edge_seconds", "x", buckets=(0.1, 1.0), registry=registry)
    observe = getattr(hist.labels(), writer)
    buckets = [observe(v) for v in (0.1, 1.0, 1.0000001, 50.0, -3.0, float("nan"), float("inf"), float("-inf"))]
    assert buckets == [0, 1, 2, 2, 0, 2, 2, 2]  # each write says which bucket it counted in
    got = samples(registry)
    assert got[("edge_seconds_bucket", (("le", "0.1"),))] == 2  # 0.1 itself (le is inclusive) and -3
    assert got[("edge_seconds_bucket", (("le", "1.0"),))] == 3
    assert got[("edge_seconds_bucket", (("le", "+Inf"),))] == 8
    assert got[("edge_seconds_sum", ())] == pytest.approx(0.1 + 1.0 + 1.0000001 + 50.0 - 3.0)


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.integers(-(10**9), 10**9), st.floats(-1e9, 1e9, allow_nan=False)), min_size=1, max_size=30
    ),
    whole_bounds=st.booleans(),
)
def test_the_unlocked_writers_count_exactly_as_the_locked_ones(values: list[float], whole_bounds: bool) -> None:
    # Whole-number bounds are bisected as ints (sizes), others as floats: the buckets must not move.
    bounds = (0, 10, 100, 1000) if whole_bounds else (-0.5, 0.001, 2.5, 1e6)
    written = []
    for writer in ("locked", "unlocked"):
        registry = Registry()
        hist = Histogram("v_bytes", "x", buckets=bounds, registry=registry).labels()
        count = Counter("n_total", "x", registry=registry).labels()
        gauge = Gauge("g", "x", registry=registry).labels()
        for v in values:
            if writer == "locked":
                hist.observe(v), count.inc(), gauge.inc(1.5), gauge.dec(0.5)
            else:
                hist.observe_unlocked(v), count.inc_unlocked(), gauge.inc_unlocked(1.5), gauge.inc_unlocked(-0.5)
        written.append(samples(registry))
    assert written[0] == written[1]
    assert written[0][("n_total", ())] == len(values) and written[0][("g", ())] == len(values)
    expected_le_10 = sum(v <= 10 for v in values) if whole_bounds else sum(v <= 2.5 for v in values)
    le = "10.0" if whole_bounds else "2.5"
    assert written[0][("v_bytes_bucket", (("le", le),))] == expected_le_10


def test_writes_under_the_held_registry_lock_bind_what_is_unbound(tmp_path: Path) -> None:
    """A caller holding the registry's lock writes several children with the unlocked writers (the
    HTTP metrics' hooks, on a threaded server); a child meeting its first write there binds,
    taking the lock again: it must not wait for itself."""
    registry = Registry(str(tmp_path))
    counter = Counter("held_total", "x", ["n"], registry=registry)
    hist = Histogram("held_seconds", "x", registry=registry)
    done = threading.Event()

    def write() -> None:
        with registry.lock:  # nothing bound yet: each write below binds under the held lock
            counter.labels("1").inc_unlocked()
            counter.labels("2").inc_unlocked()
            hist.labels().observe_unlocked(0.3)
        done.set()

    threading.Thread(target=write, daemon=True).start()
    assert done.wait(10), "a write under the held lock waited for that lock to bind its child"
    found = samples(registry)
    assert found[("held_total", (("n", "1"),))] == found[("held_total", (("n", "2"),))] == 1
    assert found[("held_seconds_count", ())] == 1


def test_release_gives_up_the_shard_as_an_exiting_worker_does(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path))
    counter = Counter("released_total", "x", registry=registry)
    assert registry.shard_path is None  # nothing written yet
    counter.inc(3)
    first = registry.shard_path
    assert first is not None and os.path.exists(first)
    registry.release()
    assert registry.shard_path is None
    assert StoreDirectory(str(tmp_path)).snapshot().dead_shards == 1  # its lock is gone: dead, kept
    counter.inc(4)  # the child binds again, in a new shard
    assert registry.shard_path not in (None, first)
    assert value(registry, "released_total") == 7  # nothing lost across the release


def test_exemplars_are_label_dicts_written_through_the_children_only() -> None:
    registry = Registry()
    hist = Histogram("d_seconds", "x", buckets=(0.1, 1.0), exemplars=True, registry=registry).labels()
    count = Counter("c_total", "x", exemplars=True, registry=registry).labels()
    longest = {"request_id": "a" * (MAX_EXEMPLAR_BYTES - len("request_id="))}  # exactly what a slot holds
    n = hist.observe_unlocked(0.5)
    hist.set_exemplar(n, 0.5, longest, 1_700_000_000_000_000_000)
    count.inc(1, {"trace_id": "abc", "span_id": "\u00e9t\u00e9"}, 1_700_000_000_000_000_000)
    plain = Histogram("p_seconds", "x", buckets=(0.1, 1.0), registry=registry).labels()  # no exemplars=True
    plain.set_exemplar(plain.observe(0.5), 0.5, {"trace_id": "abc"})  # nothing to keep it in: ignored
    lines = MetricsApp(registry).render("application/openmetrics-text")[0].decode().splitlines()
    kept = longest["request_id"]
    assert f'd_seconds_bucket{{le="1.0"}} 1.0 # {{request_id="{kept}"}} 0.5 1700000000.0' in lines, lines
    assert 'c_total 1.0 # {span_id="\u00e9t\u00e9",trace_id="abc"} 1.0 1700000000.0' in lines, lines
    assert 'p_seconds_bucket{le="1.0"} 1.0' in lines, lines  # counted, with no exemplar
    with pytest.raises(ValueError, match="a slot keeps"):  # one byte more: refused, never cut into a false id
        count.set_exemplar(1.0, {"request_id": kept + "a"})
    assert 'c_total 1.0 # {span_id="\u00e9t\u00e9",trace_id="abc"} 1.0 1700000000.0' in (
        MetricsApp(registry).render("application/openmetrics-text")[0].decode().splitlines()
    )


def test_the_family_methods_speak_prometheus_clients_dialect() -> None:
    registry = Registry()
    orders = Counter("orders", "Orders placed", exemplars=True, registry=registry)  # _total added, as theirs does
    assert orders.name == "orders_total"
    orders.inc(2, exemplar={"trace_id": "t1"})
    latency = Histogram("work_seconds", "x", buckets=(1.0,), exemplars=True, registry=registry)
    latency.observe(0.5, exemplar={"trace_id": "t2"})
    busy = Gauge("busy", "x", multiprocess_mode="livemax", registry=registry)
    assert busy.mode == "livemax"
    text = MetricsApp(registry).render("application/openmetrics-text")[0].decode()
    assert 'orders_total 2.0 # {trace_id="t1"} 2.0' in text, text
    assert 'work_seconds_bucket{le="1.0"} 1.0 # {trace_id="t2"} 0.5' in text, text
    assert "# TYPE busy gauge" in text


def test_callback_gauges_are_evaluated_at_scrape_time() -> None:
    registry = Registry()
    depth = {"value": 3}
    CallbackGauge("jobs_waiting", "Jobs in the queue", lambda: depth["value"], registry=registry)
    CallbackGauge("jobs_by_state", "Jobs by state", lambda: {("new",): 2, ("done",): 7}, ["state"], registry=registry)
    assert value(registry, "jobs_waiting") == 3
    depth["value"] = 9
    assert value(registry, "jobs_waiting") == 9
    assert value(registry, "jobs_by_state", state="done") == 7
    with pytest.raises(ValueError, match="not a valid Prometheus name"):
        CallbackGauge("bad name", "x", lambda: 1, registry=registry)


@pytest.mark.parametrize("preload", [False, True], ids=["built-in-each-worker", "built-before-the-fork"])
def test_a_new_worker_absorbs_its_predecessors_after_its_first_request(store_dir: str, preload: bool) -> None:
    # preload: gunicorn --preload builds the app in the master; each worker must still compact.
    registry = Registry(store_dir)
    counter = Counter("handled_total", "x", registry=registry)

    def middleware() -> ObservabilityMiddleware:
        return ObservabilityMiddleware(
            lambda e, s: (s("200 OK", [("Content-Type", "text/plain")]), [b"x"])[1],
            registry=registry,
            auto_configure_logging=False,
            access_log=False,
        )

    preloaded = middleware() if preload else None
    if preloaded is not None:
        call_wsgi(preloaded, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"})
        [compaction] = [c for c in preloaded.components if isinstance(c, Compaction)]
        assert not compaction.armed  # done in this process: off the request path
        assert compaction.compact_once not in preloaded.finish_hooks

    def worker_serving_one_request() -> None:
        mw = preloaded or middleware()
        [compaction] = [c for c in mw.components if isinstance(c, Compaction)]
        assert compaction.armed and compaction.compact_once in mw.finish_hooks
        counter.inc()
        call_wsgi(mw, {"REQUEST_METHOD": "GET", "PATH_INFO": "/"})

    for _ in range(20):
        assert in_child(worker_serving_one_request) == 0
    snap = StoreDirectory(store_dir).snapshot()
    assert snap.dead_shards == 1  # each worker folded the one before it into the archive
    assert snap.counts[("handled_total", "", ())] == 20 * 1_000_000


def test_a_reader_killed_inside_its_read_section_blocks_nobody(store_dir: str) -> None:
    registry = Registry(store_dir)
    counter = Counter("after_total", "x", registry=registry)
    assert in_child(lambda: counter.inc(2)) == 0

    def die_holding_the_read_lock() -> None:
        fd = os.open(os.path.join(store_dir, "dir.lock"), os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os._exit(0)  # no unlock, no close: the kernel must release it

    assert in_child(die_holding_the_read_lock) == 0
    assert StoreDirectory(store_dir, lock_timeout=1.0).compact() == 1
    assert value(registry, "after_total") == 2


def test_concurrent_snapshots_in_one_process_never_count_twice(store_dir: str) -> None:
    # A scrape and the maintenance thread (or two gthread scrapes) reading while keys are added.
    writer = Registry(store_dir)
    counter = Counter("keys_total", "x", ["n"], registry=writer)
    reader = StoreDirectory(store_dir)
    stop = threading.Event()
    too_high: list[int] = []
    written = [0]

    def scrape() -> None:
        while not stop.is_set():
            snap = reader.snapshot()
            ceiling = written[0]  # read after the snapshot: it can only have seen fewer increments
            total = sum(v for (name, _, _), v in snap.counts.items() if name == "keys_total")
            if total > ceiling * 1_000_000:
                too_high.append(total)

    threads = [threading.Thread(target=scrape) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(3000):
        written[0] += 1  # before the write, so a reader's ceiling is never below what it saw
        counter.labels(str(n)).inc()  # every inc adds a new key to the shard's tail
    stop.set()
    for t in threads:
        t.join()
    assert too_high == []


# Run in an interpreter of its own: in two full-suite runs (not alone, not in test_store.py as a
# whole) the writer's keys did not all reach the shard the snapshot had listed (once a second
# 64 KB shard appeared, once 995 of 3,000 counts were seen), as if some state left by an earlier
# test made the writer start a new shard mid-test. The reader's logic is what this tests.
GROWS_ONCE_MAPPED = """
import contextlib, json, sys
from softfactory_obs._failures import failure_counts
from softfactory_obs.store import directory
from softfactory_obs.store.directory import StoreDirectory
from softfactory_obs.store.metrics import Counter, Registry

store_dir = sys.argv[1]
writer = Registry(store_dir)
counter = Counter("grown_total", "x", ["n"], registry=writer)
counter.labels("0").inc()
shard = writer.shard_path
original = directory._mapped
mappings = []

@contextlib.contextmanager
def grows_once_mapped(path):
    with original(path) as buffers:
        mappings.append((path, len(buffers[0][1])))
        if len(mappings) == 1:
            for n in range(1, 3000):  # ~200 KB of keys: past the first 64 KB segment
                counter.labels(str(n)).inc()
        yield buffers

directory._mapped = grows_once_mapped
snap = StoreDirectory(store_dir).snapshot()
total = sum(v for (name, _, _), v in snap.counts.items() if name == "grown_total")
print(json.dumps({"total": total, "mappings": mappings, "files_opened": snap.files_opened,
                  "same_shard": writer.shard_path == shard, "failures": failure_counts()}))
"""


def test_a_shard_that_grows_after_it_was_mapped_is_mapped_again(store_dir: str) -> None:
    # The race behind a rare failed scrape: the writer adds a segment (and keys in it) between the
    # reader's mapping of the file and its read of ``used``, which then points past the mapping.
    root = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", GROWS_ONCE_MAPPED, store_dir],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["same_shard"] and result["failures"] == {}, result  # the writer kept its one shard
    assert result["total"] == 3000 * 1_000_000, result
    # The grown shard, mapped twice: the second time whole.
    sizes = [size for _, size in result["mappings"]]
    assert len(sizes) == 2 and sizes[1] > sizes[0], result
    assert result["files_opened"] == 1


def test_a_failing_fork_reset_leaves_every_other_registry_reset(store_dir: str) -> None:
    # One registry's trouble after fork must not leave another bound to the parent's shard.
    broken, sound = Registry(), Registry(store_dir)
    calls: list[str] = []

    class Owner:
        def boom(self) -> None:
            raise RuntimeError("boom")

        def forget(self) -> None:
            calls.append("forgot")

    owner = Owner()
    broken.on_fork(owner.boom)
    broken.on_fork(owner.forget)  # after the failing one, on the same registry
    sound.on_fork(owner.forget)
    counter = Counter("after_fork_total", "x", registry=sound)
    counter.inc()  # bound to this process's shard

    def child() -> None:
        assert calls == ["forgot", "forgot"]
        assert failure_counts().get("metrics store after fork") == 1
        counter.inc()  # into the child's own shard

    assert in_child(child) == 0
    snap = StoreDirectory(store_dir).snapshot()
    assert snap.live_shards + snap.dead_shards == 2  # the parent's and the child's, not one shared
    assert value(sound, "after_fork_total") == 2


def test_a_view_of_the_parents_shard_left_alive_does_not_stop_the_childs_reset(store_dir: str) -> None:
    # A reader's generator abandoned mid-scrape keeps a view of the shard until it is collected.
    registry = Registry(store_dir)
    counter = Counter("viewed_total", "x", registry=registry)
    counter.inc()
    assert registry.shard_path is not None
    lingering = memoryview(registry._writer.buffers()[0][1]).cast("q")  # type: ignore[union-attr]  # (white box)

    def child() -> None:
        assert "metrics store after fork" not in failure_counts()
        assert registry.shard_path is None  # reset: the next write binds a shard of the child's own
        counter.inc()

    try:
        assert in_child(child) == 0
    finally:
        lingering.release()
    assert StoreDirectory(store_dir).snapshot().counts[("viewed_total", "", ())] == 2 * 1_000_000


def test_fork_callbacks_do_not_keep_their_owners_alive() -> None:
    import gc  # noqa: PLC0415
    import weakref  # noqa: PLC0415

    registry = Registry()
    calls: list[str] = []

    class Owner:
        def forget(self) -> None:
            calls.append("forgot")

    kept, dropped = Owner(), Owner()
    registry.on_fork(kept.forget)
    registry.on_fork(dropped.forget)
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None  # the registry held no strong reference
    registry._after_fork_in_child()  # what os.fork runs in the child, on a registry of its own here
    assert calls == ["forgot"]  # once: for the owner still alive


def test_an_auto_directory_someone_else_made_first_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm is shared by every user and the name is predictable (the master's pid)."""
    monkeypatch.setattr(location, "_base", lambda: str(tmp_path))
    monkeypatch.setattr(location, "pid_exists", lambda pid: True)  # none of them is stale
    assert oct(os.stat(location.create_auto_directory(4240)).st_mode & 0o777) == "0o700"  # ours: fine
    (tmp_path / "softfactory_obs-4241").mkdir(mode=0o777)
    os.chmod(tmp_path / "softfactory_obs-4241", 0o777)  # past the umask
    with pytest.raises(PermissionError, match=r"4241: .* only it can open, found owner uid \d+, mode drwxrwxrwx"):
        location.create_auto_directory(4241)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    os.symlink(tmp_path / "elsewhere", tmp_path / "softfactory_obs-4242")
    with pytest.raises(PermissionError, match="found a symbolic link"):
        location.create_auto_directory(4242)
    if os.getuid() == 0:  # as root (CI): a directory of another user
        (tmp_path / "softfactory_obs-4243").mkdir(mode=0o700)
        os.chown(tmp_path / "softfactory_obs-4243", 65534, 65534)
        with pytest.raises(PermissionError, match="owner uid 65534"):
            location.create_auto_directory(4243)


def test_a_child_is_bound_once_however_many_threads_meet_it_unbound(store_dir: str) -> None:
    # A gthread worker's first requests: each thread finds the child unbound at once. Two bindings
    # would leave writes in slots the child no longer knows (and each write stores the value the
    # child last stored, so a second binding loses counts).
    for attempt in range(20):
        registry = Registry(store_dir)
        child = Counter(f"raced_bind_{attempt}_total", "x", registry=registry).labels()
        gate = threading.Barrier(8)

        def hit(child: Any = child, gate: threading.Barrier = gate) -> None:
            gate.wait()
            for _ in range(100):
                child.inc()

        threads = [threading.Thread(target=hit) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert registry.shard_path is not None
        reader = ShardReader()
        buffers = registry._writer.buffers()  # type: ignore[union-attr]  # (white box: the shard's own bytes)
        reader.parse(buffers)
        records = [
            key
            for kind, key, _ in reader.values(buffers)
            if kind == KIND_COUNT and key[0] == f"raced_bind_{attempt}_total"
        ]
        assert len(records) == 1, records  # one binding: one record for the one key
        assert value(registry, f"raced_bind_{attempt}_total") == 800


def test_prometheus_client_helpers_time_count_exceptions_and_track_inprogress() -> None:
    registry = Registry()
    latency = Histogram("work_seconds", "x", ["kind"], buckets=(0.01, 10.0), registry=registry)
    failures = Counter("work_failures_total", "x", registry=registry)
    busy = Gauge("work_busy", "x", registry=registry)
    seen_busy: list[float] = []

    @latency.labels("decorated").time()
    @failures.count_exceptions(ValueError)
    @busy.track_inprogress()
    def work(fail: type[Exception] | None) -> None:
        seen_busy.append(value(registry, "work_busy"))
        if fail is not None:
            raise fail("boom")

    work(None)
    with pytest.raises(ValueError):
        work(ValueError)  # counted, and still raised
    with pytest.raises(KeyError):
        work(KeyError)  # not the type asked for: raised, not counted
    threads = [threading.Thread(target=work, args=(None,)) for _ in range(4)]  # one timer per call
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with latency.labels("block").time() as timer:
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:  # at least 20 ms, measured by the condition, not a sleep
            pass
    assert isinstance(timer, Timer)
    assert value(registry, "work_seconds_count", kind="decorated") == 7
    assert value(registry, "work_seconds_count", kind="block") == 1
    assert value(registry, "work_seconds_sum", kind="block") >= 0.02
    assert value(registry, "work_seconds_bucket", kind="block", le="0.01") == 0  # not the fast bucket
    assert value(registry, "work_failures_total") == 1
    assert seen_busy[:3] == [1.0, 1.0, 1.0] and value(registry, "work_busy") == 0  # up inside, down after


def _dead_worker_counting(store_dir: str, amount: int) -> None:
    """A worker process that counts ``amount`` and exits (its shard is then dead)."""

    def worker() -> None:
        Counter("served_total", "x", registry=Registry(store_dir)).inc(amount)

    assert in_child(worker) == 0


@pytest.mark.parametrize(
    "damage",
    [b"", b"SFOARCHIVE 3 abc\n{not json", b"garbage\n", b"SFOARCHIVE 3 abc\n" + json.dumps({"version": 1}).encode()],
    ids=["empty", "broken-json", "bad-header", "missing-fields"],
)
def test_a_corrupt_archive_is_set_aside_and_the_store_goes_on(store_dir: str, damage: bytes) -> None:
    _dead_worker_counting(store_dir, 10)
    assert StoreDirectory(store_dir).compact() == 1  # the worker's 10 now live in the archive
    archive = Path(store_dir) / "archive.json"
    archive.write_bytes(damage)
    registry = Registry(store_dir)
    Counter("served_total", "x", registry=registry).inc(1)  # a live worker's count
    status, body = _call(MetricsApp(registry))
    assert status.startswith("200"), body
    assert "served_total 1.0" in body  # the archive's 10 are gone: the documented reset
    assert (Path(store_dir) / "archive.json.corrupt").read_bytes() == damage and not archive.exists()
    assert failure_counts()["metrics store (corrupt archive set aside)"] == 1
    _dead_worker_counting(store_dir, 5)  # compaction heals: a new archive, exact from here on
    assert StoreDirectory(store_dir).compact() == 1
    assert value(registry, "served_total") == 6
    assert json.loads(archive.read_bytes().split(b"\n", 1)[1])["generation"] == 1


def test_an_archive_restored_from_backup_is_read_anew_even_with_a_known_generation(store_dir: str) -> None:
    """Generations are reused after a restore (an older archive, compacted again): the nonce tells
    two archives with one generation number apart, so no reader keeps serving the one it cached."""
    _dead_worker_counting(store_dir, 10)
    StoreDirectory(store_dir).compact()
    archive = Path(store_dir) / "archive.json"
    backup = archive.read_bytes()  # generation 1, holding 10
    registry = Registry(store_dir)
    _dead_worker_counting(store_dir, 100)
    StoreDirectory(store_dir).compact()  # generation 2: 110
    assert value(registry, "served_total") == 110  # this reader caches generation 2
    archive.write_bytes(backup)  # the operator restores the backup: generation 1 again, 10
    _dead_worker_counting(store_dir, 1000)
    StoreDirectory(store_dir).compact()  # generation 2 again, now holding 1,010
    assert value(registry, "served_total") == 1010
    assert value(Registry(store_dir), "served_total") == 1010  # a fresh reader agrees


def test_a_shard_that_cannot_be_made_leaks_no_descriptor_and_no_file(store_dir: str) -> None:
    """F1: in a directory that is full (here: a file-size limit under the first segment, so the
    kernel refuses posix_fallocate), every failed attempt gives back its fd and its .new file."""

    def worker() -> None:
        directory = StoreDirectory(store_dir)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        fds = len(os.listdir("/proc/self/fd"))
        failures = 0
        for _ in range(50):
            try:
                directory.new_shard()
            except OSError:
                failures += 1
        assert failures == 50, failures  # the control: every attempt did fail
        assert len(os.listdir("/proc/self/fd")) == fds
        assert [n for n in os.listdir(store_dir) if "shard" in n] == []

    os.makedirs(store_dir)
    assert in_child(worker) == 0


def test_histogram_add_takes_counts_made_elsewhere(store_dir: str) -> None:
    registry = Registry(store_dir)
    sizes = Histogram("copied_size_bytes", "sizes", buckets=(10, 100), registry=registry)
    sizes.labels().add([1, 0, 2], 1005.0)  # per bucket: one <= 10, two above 100
    sizes.observe(50)
    with pytest.raises(ValueError, match="expected 3 bucket counts"):
        sizes.labels().add([1, 1], 1.0)
    with pytest.raises(ValueError, match="none negative"):
        sizes.labels().add([1, -1, 0], 1.0)
    got = samples(registry)
    assert got[("copied_size_bytes_bucket", (("le", "10.0"),))] == 1
    assert got[("copied_size_bytes_bucket", (("le", "100.0"),))] == 2
    assert got[("copied_size_bytes_bucket", (("le", "+Inf"),))] == 4
    assert got[("copied_size_bytes_sum", ())] == 1055

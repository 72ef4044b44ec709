"""The shard reader at scale: key tables shared between shards with the same records, counts summed
per table, and the same exact sums as parsing every shard on its own would give.

Each ``Registry(store_dir)`` here has a shard of its own, locked for its life: several registries
in one process are several live workers to a separate ``StoreDirectory`` reading them.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter as Tally
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softfactory_obs.store.directory import StoreDirectory
from softfactory_obs.store.metrics import COUNTER_SCALE, Counter, Histogram, Registry
from softfactory_obs.store.reader import ShardReader
from softfactory_obs.store.shard import (
    DIGEST,
    DIGEST_AT,
    KIND_COUNT,
    ShardWriter,
    decode_key,
    encode_key,
    record_size,
)

ENDPOINTS = [f"/e{i}" for i in range(12)]


class Worker:
    """One live worker: its registry (its own shard) and the two HTTP families."""

    def __init__(self, path: str) -> None:
        self.registry = Registry(path)
        self.requests = Counter("requests_total", "x", ["endpoint"], registry=self.registry)
        self.latency = Histogram("latency_seconds", "x", ["endpoint"], buckets=(0.1, 1.0), registry=self.registry)

    def serve(self, endpoint: str, times: int = 1) -> None:
        for _ in range(times):
            self.requests.labels(endpoint).inc()
            self.latency.labels(endpoint).observe(0.5)

    def stop(self) -> None:
        self.registry.release()


def requests_of(directory: StoreDirectory) -> dict[str, int]:
    """What a snapshot counts per endpoint (the counter, and the histogram's buckets: they must agree)."""
    snap = directory.snapshot()
    counted = {k[2][0]: v // COUNTER_SCALE for k, v in snap.counts.items() if k[0] == "requests_total"}
    observed: Tally[str] = Tally()
    for (name, suffix, labels), value in snap.counts.items():
        if name == "latency_seconds" and suffix.startswith("b"):  # buckets are stored apart, not cumulated
            observed[labels[0]] += value
    assert counted == dict(observed), (counted, observed)
    return counted


def test_shards_with_the_same_records_are_parsed_once(tmp_path: Path) -> None:
    path = str(tmp_path)
    workers = [Worker(path) for _ in range(4)]
    for n, worker in enumerate(workers):
        for endpoint in ENDPOINTS:  # the same series in the same order, different counts
            worker.serve(endpoint, n + 1)
    reader = StoreDirectory(path)
    snap = reader.snapshot()
    records = len([k for k in snap.counts if k[0] in ("requests_total", "latency_seconds")])
    assert 0 < snap.records_parsed - records <= 4  # one shard's records (and its family descriptions), once
    assert requests_of(reader) == dict.fromkeys(ENDPOINTS, 1 + 2 + 3 + 4)
    assert reader.snapshot().records_parsed == 0  # nothing new since
    for worker in workers:
        worker.stop()


def test_a_shard_that_differs_in_one_byte_of_a_key_is_parsed_on_its_own(tmp_path: Path) -> None:
    path = str(tmp_path)
    first, second = Worker(path), Worker(path)
    for endpoint in ENDPOINTS:
        first.serve(endpoint)
    for endpoint in [*ENDPOINTS[:-1], "/f11"]:  # same lengths, same order, one key byte apart
        second.serve(endpoint, 2)
    alone = ShardReader()
    alone.parse(first.registry._writer.buffers())  # type: ignore[union-attr]  # (white box: the shard's bytes)
    one_shard = alone.parsed
    assert StoreDirectory(path).snapshot().records_parsed == 2 * one_shard  # the second was not taken for the first
    assert requests_of(StoreDirectory(path)) == {**dict.fromkeys(ENDPOINTS[:-1], 3), "/e11": 1, "/f11": 2}
    third = Worker(path)  # a positive control: a shard like the first is recognised
    for endpoint in ENDPOINTS:
        third.serve(endpoint)
    assert StoreDirectory(path).snapshot().records_parsed == 2 * one_shard
    assert requests_of(StoreDirectory(path)) == {**dict.fromkeys(ENDPOINTS[:-1], 4), "/e11": 2, "/f11": 2}
    for worker in (first, second, third):
        worker.stop()


def test_a_live_shard_is_known_by_its_writers_digest_a_dead_one_by_its_bytes(tmp_path: Path) -> None:
    """A live shard's key table is trusted as it is read (its writer is the only one writing it),
    so its writer's digest may stand for its records; a dead one is compared byte for byte. Shown
    by damaging one key byte under an intact digest."""
    path = str(tmp_path)
    first, second = Worker(path), Worker(path)
    for worker in (first, second):
        for endpoint in ENDPOINTS:
            worker.serve(endpoint)
    alone = ShardReader()
    alone.parse(first.registry._writer.buffers())  # type: ignore[union-attr]  # (white box: the shard's bytes)
    second_path = second.registry.shard_path
    assert second_path is not None
    with open(second_path, "r+b") as f:
        at = f.read().index(encode_key(("requests_total", "", ("/e5",))))
        f.seek(at + len('["requests_total","",["/'))
        f.write(b"x")  # /e5 -> /x5 in the second shard only
    assert StoreDirectory(path).snapshot().records_parsed == alone.parsed  # live: its digest says "as the first"
    assert requests_of(StoreDirectory(path)) == dict.fromkeys(ENDPOINTS, 2)
    second.stop()  # dead now: read byte for byte, the damaged key is what it holds
    snap = StoreDirectory(path).snapshot()
    assert snap.records_parsed == 2 * alone.parsed
    assert ("requests_total", "", ("/x5",)) in snap.counts
    first.stop()


def test_a_shard_without_a_digest_is_still_recognised_by_its_bytes(tmp_path: Path) -> None:
    """As a worker of an earlier version writes it: zeros where the digest goes."""
    path = str(tmp_path)
    first, second = Worker(path), Worker(path)
    for worker in (first, second):
        for endpoint in ENDPOINTS:
            worker.serve(endpoint, 3)
    alone = ShardReader()
    alone.parse(first.registry._writer.buffers())  # type: ignore[union-attr]  # (white box: the shard's bytes)
    assert second.registry.shard_path is not None
    with open(second.registry.shard_path, "r+b") as f:
        f.seek(DIGEST_AT)
        f.write(bytes(DIGEST.size))
    assert StoreDirectory(path).snapshot().records_parsed == alone.parsed
    assert requests_of(StoreDirectory(path)) == dict.fromkeys(ENDPOINTS, 6)
    first.stop()
    second.stop()


def test_a_shard_that_goes_on_after_the_shared_records_parses_only_the_rest(tmp_path: Path) -> None:
    path = str(tmp_path)
    short, longer = Worker(path), Worker(path)
    for endpoint in ENDPOINTS[:6]:
        short.serve(endpoint)
    reader = StoreDirectory(path)
    assert requests_of(reader) == dict.fromkeys(ENDPOINTS[:6], 1)  # the template: six endpoints
    for endpoint in ENDPOINTS:
        longer.serve(endpoint, 5)
    parsed = reader.snapshot().records_parsed
    assert parsed == 6 * (1 + 3 + 1)  # the last six endpoints' records (counter, 3 buckets, sum), not twelve
    short.serve(ENDPOINTS[0], 10)  # values move under the shared table; new keys extend a copy of it
    short.serve("/new")
    longer.serve(ENDPOINTS[11])
    expected = {**dict.fromkeys(ENDPOINTS[:6], 6), **dict.fromkeys(ENDPOINTS[6:], 5), "/new": 1}
    expected[ENDPOINTS[0]] += 10
    expected[ENDPOINTS[11]] += 1
    assert requests_of(reader) == expected
    assert requests_of(StoreDirectory(path)) == expected
    short.stop()
    longer.stop()


def test_a_table_is_read_in_one_call_per_buffer_as_its_shard_grows(tmp_path: Path) -> None:
    worker = Worker(str(tmp_path))
    reader = ShardReader()
    endpoints = [f"/grown/{i}" for i in range(400)]  # past the first 64 KB segment: two buffers
    for i, endpoint in enumerate(endpoints):
        worker.serve(endpoint, i % 5 + 1)
        if i % 50 == 0 or i == len(endpoints) - 1:
            buffers = worker.registry._writer.buffers()  # type: ignore[union-attr]  # (white box: its bytes)
            reader.parse(buffers)  # a growing shard: each parse extends the table
    assert len(reader.table.runs) == len(buffers) >= 2
    values = dict(zip(reader.table.count_keys, reader.table.count_values(buffers), strict=True))
    assert {k[2][0]: v // COUNTER_SCALE for k, v in values.items() if k[0] == "requests_total"} == {
        e: i % 5 + 1 for i, e in enumerate(endpoints)
    }
    assert sum(1 for kind, _, _ in reader.values(buffers) if kind == KIND_COUNT) == len(endpoints) * 5
    worker.stop()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rounds=st.lists(
        st.lists(st.lists(st.sampled_from(ENDPOINTS), max_size=8), min_size=1, max_size=4), min_size=1, max_size=3
    ),
    shared_prefix=st.lists(st.sampled_from(ENDPOINTS), max_size=6),
)
def test_any_mix_of_shared_and_own_orders_sums_exactly(
    tmp_path_factory: object, rounds: list[list[list[str]]], shared_prefix: list[str]
) -> None:
    """Workers that begin alike (a shared prefix) and then go their own ways, scraped between
    rounds by a long-lived reader and checked by a fresh one: both always equal what was served."""
    path = str(tmp_path_factory.mktemp("store"))  # type: ignore[attr-defined]
    workers = [Worker(path) for _ in range(max(len(r) for r in rounds))]
    for worker in workers:
        for endpoint in shared_prefix:
            worker.serve(endpoint)
    served = Tally({e: len(workers) * n for e, n in Tally(shared_prefix).items()})
    reader = StoreDirectory(path)
    try:
        for round_ in rounds:
            for worker, endpoints in zip(workers, round_, strict=False):  # fewer rounds than workers
                for endpoint in endpoints:
                    worker.serve(endpoint)
                    served[endpoint] += 1
            assert requests_of(reader) == dict(served)
        assert requests_of(StoreDirectory(path)) == dict(served)
    finally:
        for worker in workers:
            worker.stop()


TEXT = st.characters(blacklist_categories=("Cs",))  # label values reach keys as valid UTF-8 (metrics._label_text)


@given(
    st.text(TEXT, max_size=20),
    st.text(TEXT, max_size=8),
    st.lists(st.text(TEXT, max_size=12), max_size=4),
)
def test_every_key_decodes_to_what_was_encoded(name: str, suffix: str, labels: list[str]) -> None:
    """Quotes, backslashes, commas, brackets, line breaks and non-ASCII in any part: the quick
    split and JSON must give back the same key."""
    key = (name, suffix, tuple(labels))
    assert decode_key(encode_key(key)) == key


@pytest.mark.parametrize("raw", [b"5", b"null", b'"abc"', b"[1,2,3]", b'["a","b",[1]]', b'["a","b"]', b'["a","b",{}]'])
def test_bytes_that_are_no_key_are_refused_as_such(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"not a key|unpack"):
        decode_key(raw)


def test_a_key_that_left_with_a_shard_set_aside_is_gone_not_zero(tmp_path: Path) -> None:
    """Tables in different orders are summed in one order of places; a shard set aside takes its
    keys with it, so the order is forgotten rather than show their places as 0."""
    path = str(tmp_path)
    first, second, third = Worker(path), Worker(path), Worker(path)
    for endpoint in ENDPOINTS[:4]:
        first.serve(endpoint)
    for endpoint in [*reversed(ENDPOINTS[:4]), "/only-second"]:  # other orders: three tables
        second.serve(endpoint, 2)
    for endpoint in [ENDPOINTS[2], ENDPOINTS[0], ENDPOINTS[3], ENDPOINTS[1]]:
        third.serve(endpoint, 4)
    reader = StoreDirectory(path)
    assert requests_of(reader) == {**dict.fromkeys(ENDPOINTS[:4], 7), "/only-second": 2}
    shard = second.registry.shard_path
    assert shard is not None
    second.stop()
    assert requests_of(reader) == {**dict.fromkeys(ENDPOINTS[:4], 7), "/only-second": 2}  # dead, validated
    raw = encode_key(("requests_total", "", ("/only-second",)))
    with open(shard, "r+b") as f:  # a dead shard's value changes: it is set aside
        record = f.read().index(raw) - 8
        f.seek(record + record_size(raw) - 8)
        f.write((7 * COUNTER_SCALE).to_bytes(8, sys.byteorder))
    assert requests_of(reader) == dict.fromkeys(ENDPOINTS[:4], 5)
    assert Path(shard + ".corrupt").exists()
    first.stop()
    third.stop()


def test_a_table_whose_key_repeats_is_summed_key_by_key(tmp_path: Path) -> None:
    """No writer makes two records of one key, but bytes that do must not lose either count."""
    one, two = (encode_key(("odd_total", "", (name,))) for name in ("a", "b"))
    shards = []
    for layout in ([one, two], [two, one, one], [two, one]):  # three orders; the second repeats a key
        name = f"w-{os.getpid()}-{time.time_ns()}-{os.urandom(8).hex()}.shard"
        writer = ShardWriter(str(tmp_path / ("." + name + ".new")), str(tmp_path / name))
        for n, raw in enumerate(layout):
            seg, slot = writer.add(raw, KIND_COUNT)
            seg.ints[slot] = 10**n
        shards.append(writer)
    snap = StoreDirectory(str(tmp_path)).snapshot()
    assert snap.counts[("odd_total", "", ("a",))] == 1 + (10 + 100) + 10
    assert snap.counts[("odd_total", "", ("b",))] == 10 + 1 + 1
    for writer in shards:
        writer.close()

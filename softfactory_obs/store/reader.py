"""Reading shards: key tables parsed once, values read in one call per shard, tables shared.

A scrape reads every slot of every shard. Per slot in Python that is the cost of a large
deployment (64 workers x 1,000 endpoints is over a million slots), so a parsed shard is described
by a ``KeyTable``: its count keys in record order and one ``struct`` per mapped buffer that reads
all their values in a single C call. Tables are immutable; a reader whose shard grew gets a new
one, so a table can be shared.

Sharing is what makes a fresh scraper cheap: workers that created the same series in the same
order (the same app, the same routes, met in the same order) wrote byte-identical records apart
from the values. A ``Template`` holds the record heads and keys of one parsed shard. A shard
whose bytes up to the same point are equal to them (compared in C, values skipped) takes the
template's table and parses only what follows: equal bytes are what a parse would have read. A
live shard of the same length may instead be taken on its writer's digest of its records
(``shard.py``) when that equals the digest the template's own bytes give, as the live shard's key
table would be trusted anyway once parsed. Hazard: a live shard's records damaged after they were
written, under an intact digest, are read as the digest says they were (their values from the
slots the writer wrote), where a parse would have refused them or read the damaged keys.

Shards whose series were created in different orders share no table: each is parsed on its own
(the worst case, ``bench/scale.py --shuffled``), and a ``KeyOrder`` puts their sums in one order so
that they are still added in C.
"""

from __future__ import annotations

import hashlib
import json
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from operator import itemgetter, sub
from typing import Any

from .shard import (
    DIGEST,
    DIGEST_AT,
    HEADER_SIZE,
    KIND_COUNT,
    KIND_EXEMPLAR,
    KIND_GAUGE,
    KIND_META,
    KIND_SKIP,
    MAGIC,
    RECORD_HEAD,
    VALUE_SIZES,
    CorruptShardError,
    Key,
    ShardGrewError,
    decode_key,
    read_exemplar,
)

# (kind, key or family description, buffer index, value slot) of a record that is not a count
Other = tuple[int, Any, int, int]
# (buffer index, byte offset of the first value, the struct that reads every value of the run)
Run = tuple[int, int, struct.Struct]


class KeyTable:
    """What a shard's records up to ``pos`` hold: the count keys in record order, the runs that
    read their values, and the other records (family descriptions, gauges, stamps, exemplars)."""

    __slots__ = ("_distinct", "count_keys", "others", "pos", "runs")

    def __init__(self, pos: int, count_keys: tuple[Key, ...], runs: tuple[Run, ...], others: tuple[Other, ...]):
        self.pos = pos
        self.count_keys = count_keys
        self.runs = runs
        self.others = others
        self._distinct: bool | None = None

    @property
    def distinct(self) -> bool:
        """Whether no key repeats: a writer makes one record per key; a table that breaks that is
        still summed right, key by key."""
        if self._distinct is None:
            self._distinct = len(set(self.count_keys)) == len(self.count_keys)
        return self._distinct

    def extended(self, pos: int, keys: list[Key], offsets: dict[int, list[int]], others: list[Other]) -> KeyTable:
        """A new table: this one plus the records parsed after it (value offsets by buffer index)."""
        runs = list(self.runs)
        for index, at in offsets.items():
            fmt = "=q" + "".join(map(_SKIPS.__getitem__, map(sub, at[1:], at[:-1])))
            if runs and runs[-1][0] == index:  # one struct per buffer: a growing shard keeps one call
                _, first, known = runs.pop()
                fmt = known.format + f"{at[0] - first - known.size}x" + fmt[1:]
                runs.append((index, first, struct.Struct(fmt)))
            else:
                runs.append((index, at[0], struct.Struct(fmt)))
        return KeyTable(pos, self.count_keys + tuple(keys), tuple(runs), self.others + tuple(others))

    def count_values(self, buffers: Sequence[tuple[int, Any]]) -> Sequence[int]:
        """Every count's value, in the order of ``count_keys``."""
        if len(self.runs) == 1:
            index, first, reader = self.runs[0]
            return reader.unpack_from(buffers[index][1], first)
        values: list[int] = []
        for index, first, reader in self.runs:
            values.extend(reader.unpack_from(buffers[index][1], first))
        return values


EMPTY = KeyTable(HEADER_SIZE, (), (), ())


class _Skips(dict[int, str]):
    """The struct code that skips to a value ``distance`` bytes after the previous one and reads it."""

    def __missing__(self, distance: int) -> str:
        code = self[distance] = f"{distance - 8}xq" if distance > 8 else "q"
        return code


_SKIPS = _Skips()


class Template:
    """The heads and keys of one shard's records up to ``table.pos``, to recognise shards that hold
    the same records (any values) without parsing them: by comparing those bytes, or, for a shard
    whose key table is trusted as it is read anyway (a live one), by its writer's digest of them."""

    __slots__ = ("digest", "heads", "table", "text")

    def __init__(self, table: KeyTable, pieces: list[str], buffer: Any, digest: bytes | None) -> None:
        self.table = table
        self.heads = struct.Struct("=" + "".join(pieces))  # each record's head and key; values skipped
        self.text = self.heads.unpack_from(buffer, HEADER_SIZE)
        # The writer's digest counts only if it is the digest of what was parsed here.
        own = None if digest is None else hashlib.blake2b(b"".join(self.text), digest_size=16).digest()
        self.digest = digest if own == digest else None

    def matches(self, buffer: Any, used: int) -> bool:
        """Whether ``buffer`` holds these very records (any values) before its other ones."""
        if used < self.table.pos or len(buffer) < self.table.pos:
            return False
        return self.heads.unpack_from(buffer, HEADER_SIZE) == self.text

    def claimed_by(self, used: int, digest: bytes | None) -> bool:
        """Whether a writer says its records up to ``used`` are these (its digest of them is ours)."""
        return digest is not None and digest == self.digest and used == self.table.pos


def writer_digest(buffer: Any, used: int) -> bytes | None:
    """The writer's digest of its records when it was published for ``used`` (read under its
    seqlock), else None: a shard written before the digest existed, or one caught mid-update."""
    seq, digest_used, digest = DIGEST.unpack_from(buffer, DIGEST_AT)
    if seq == 0 or seq % 2 or digest_used != used or DIGEST.unpack_from(buffer, DIGEST_AT)[0] != seq:
        return None
    return bytes(digest)


class ShardReader:
    """Parses a shard incrementally: the key table is parsed once, values are re-read every scrape."""

    __slots__ = ("created_ns", "made", "parsed", "pid", "table")

    def __init__(self) -> None:
        self.table = EMPTY
        self.pid = 0
        self.created_ns = 0
        self.made: Template | None = None  # a template of what a fresh parse read, for the directory
        self.parsed = 0  # records this reader parsed itself (not taken from a template)

    @property
    def pos(self) -> int:
        """How far the shard has been parsed."""
        return self.table.pos

    def parse(self, buffers: Sequence[tuple[int, Any]], like: Template | None = None, *, live: bool = False) -> None:
        """Read the records of ``buffers`` that were not read before. A fresh reader of a single
        buffer first tries ``like`` (by the writer's digest too when the shard is ``live``) and,
        when it parsed further than ``like`` reaches, makes a template of its own (``made``).
        Nothing is kept when it raises: safe to parse again."""
        first = buffers[0][1]
        if len(first) < HEADER_SIZE or first[0:8] != MAGIC:
            raise CorruptShardError("bad magic or short header")
        used, pid, created_ns = struct.unpack_from("=qqq", first, 8)
        last_base, last_buf = buffers[-1]
        if used < HEADER_SIZE or used % 8:
            raise CorruptShardError(f"used={used} outside the file")
        if used > last_base + len(last_buf):
            raise ShardGrewError(f"used={used} beyond the {last_base + len(last_buf)} bytes mapped")
        self.pid, self.created_ns = pid, created_ns
        table = self.table
        pieces: list[str] | None = None
        digest = writer_digest(first, used) if table is EMPTY and len(buffers) == 1 else None
        if table is EMPTY and len(buffers) == 1:
            if like is not None and ((live and like.claimed_by(used, digest)) or like.matches(first, used)):
                table = like.table
            elif like is None or used > like.table.pos:
                pieces = []
        if table.pos < used:
            self.table = self._parse(buffers, table, used, pieces)
            grown, before = self.table, table
            self.parsed += len(grown.count_keys) + len(grown.others) - len(before.count_keys) - len(before.others)
            if pieces is not None:
                self.made = Template(self.table, pieces, first, digest)
        else:
            self.table = table

    @staticmethod
    def _parse(buffers: Sequence[tuple[int, Any]], table: KeyTable, used: int, pieces: list[str] | None) -> KeyTable:
        keys: list[Key] = []
        offsets: dict[int, list[int]] = {}
        others: list[Other] = []
        index, last = 0, len(buffers) - 1
        base, buf = buffers[0]
        end = len(buf)
        at_values = offsets[0] = []
        following = buffers[1][0] if last else used  # where the next buffer begins
        pos = table.pos
        while pos < used:
            if pos >= following:
                while index < last and pos >= buffers[index + 1][0]:
                    index += 1
                base, buf = buffers[index]
                end = len(buf)
                at_values = offsets[index] = []
                following = buffers[index + 1][0] if index < last else used
            at = pos - base
            key_len, kind = RECORD_HEAD.unpack_from(buf, at)
            if kind == KIND_SKIP:
                if key_len <= 0 or key_len % 8:
                    raise CorruptShardError(f"bad skip record at {pos}")
                if pieces is not None:
                    pieces.append(f"8s{key_len - 8}x")
                pos += key_len
                continue
            value_bytes = VALUE_SIZES.get(kind)
            if value_bytes is None:
                raise CorruptShardError(f"unknown kind {kind} at {pos}")
            head = 8 + (key_len + 7) // 8 * 8
            if key_len == 0 or pos + head + value_bytes > used or at + head + value_bytes > end:
                raise CorruptShardError(f"record at {pos} runs past the end")
            raw = bytes(buf[at + 8 : at + 8 + key_len])
            try:
                payload: Any = json.loads(raw) if kind == KIND_META else decode_key(raw)
            except ValueError as exc:
                raise CorruptShardError(f"undecodable key at {pos}: {exc}") from None
            if kind == KIND_COUNT:
                keys.append(payload)
                at_values.append(at + head)
            else:
                others.append((kind, payload, index, (at + head) // 8))
            if pieces is not None:
                pieces.append(f"{head}s{value_bytes}x")
            pos += head + value_bytes
        return table.extended(pos, keys, {i: at for i, at in offsets.items() if at}, others)

    def others(self, buffers: Sequence[tuple[int, Any]]) -> Iterator[tuple[int, Any, Any]]:
        """(kind, key or description, value) of every record that is not a count."""
        views = [(memoryview(b).cast("q"), memoryview(b).cast("d")) for _, b in buffers]
        try:
            for kind, payload, index, slot in self.table.others:
                ints, floats = views[index]
                if kind == KIND_EXEMPLAR:
                    yield kind, payload, read_exemplar(buffers[index][1], ints, floats, slot)
                elif kind == KIND_GAUGE:
                    yield kind, payload, floats[slot]
                else:
                    yield kind, payload, ints[slot]
        finally:
            for ints, floats in views:
                ints.release()
                floats.release()

    def values(self, buffers: Sequence[tuple[int, Any]]) -> Iterator[tuple[int, Any, Any]]:
        """(kind, key, value) of every parsed record, counts first."""
        for key, value in zip(self.table.count_keys, self.table.count_values(buffers), strict=True):
            yield KIND_COUNT, key, value
        yield from self.others(buffers)


class KeyOrder:
    """A place for every count key a directory's scrapes have met, so that tables whose keys come
    in other orders (workers that met their series in different orders) are put in one order by a
    gather in C and summed like shared ones: each key is hashed once per table, not per scrape.

    Contract: the owner forgets it (``StoreDirectory`` makes a new one) whenever a shard's keys may
    have left the store (a shard gone or set aside), so that every place belongs to a key some
    table of the current scrape still holds."""

    __slots__ = ("_inverses", "index", "keys")

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.index: dict[Key, int] = {}
        # id(table) -> (table, for each place: the table's position of that key, or len(table))
        self._inverses: dict[int, tuple[KeyTable, array[int]]] = {}

    def place(self, table: KeyTable) -> bool:
        """Give the keys of ``table`` their places; False (and the table is not placed) if a key
        repeats in it: such a table is summed key by key."""
        if id(table) in self._inverses:
            return True
        index, keys = self.index, self.keys
        absent = len(table.count_keys)
        inverse = array("i", [absent]) * len(keys)
        for position, key in enumerate(table.count_keys):
            place = index.get(key)
            if place is None:
                index[key] = len(keys)
                keys.append(key)
                inverse.append(position)
            elif inverse[place] == absent:
                inverse[place] = position
            else:
                return False
        self._inverses[id(table)] = (table, inverse)
        return True

    def reordered(self, table: KeyTable, values: Sequence[int]) -> Sequence[int]:
        """``values`` (read with a placed ``table``) in this order, 0 where the table has no key."""
        inverse = self._inverses[id(table)][1]
        if not self.keys:
            return ()
        if len(inverse) < len(self.keys):  # places given to other tables' keys since
            inverse.extend(array("i", [len(table.count_keys)]) * (len(self.keys) - len(inverse)))
        if len(inverse) == 1:
            return (values[inverse[0]],) if inverse[0] < len(values) else (0,)
        reordered: tuple[int, ...] = itemgetter(*inverse)((*values, 0))
        return reordered

    def keep(self, tables: Iterable[KeyTable]) -> None:
        """Forget the tables a scrape no longer read."""
        used = {id(table) for table in tables}
        for gone in [i for i in self._inverses if i not in used]:
            del self._inverses[gone]


class CountSums:
    """The counts of many shards, summed: shards that share a key table are added value by value
    in C, and so are the sums of different tables once a ``KeyOrder`` has put them in one order."""

    __slots__ = ("_tables",)
    BATCH = 16  # values of shards held before they are summed: zip(*batch) beats pairwise adds, and bounds memory

    def __init__(self) -> None:
        # by id(table) (the entry keeps the table alive): the table, its sums so far, values not yet summed
        self._tables: dict[int, tuple[KeyTable, list[Sequence[int]]]] = {}

    def add(self, table: KeyTable, values: Sequence[int]) -> None:
        """Add one shard's ``values`` (read with ``table``)."""
        pending = self._tables.setdefault(id(table), (table, []))[1]
        pending.append(values)
        if len(pending) > self.BATCH:
            pending[:] = [_summed(pending)]

    def into(self, counts: dict[Key, int], order: KeyOrder | None = None) -> None:
        """Add the sums to ``counts``; with ``order``, tables of distinct keys are summed in it."""
        groups = [(table, _summed(pending)) for table, pending in self._tables.values()]
        if order is not None and len(groups) > 1:
            ordered = [(table, sums) for table, sums in groups if order.place(table)]
            order.keep(table for table, _ in ordered)
            total: list[Sequence[int]] = []
            for table, sums in ordered:
                total.append(order.reordered(table, sums))
                if len(total) > self.BATCH:
                    total[:] = [_summed(total)]
            placed = {id(table) for table, _ in ordered}
            groups = [(table, sums) for table, sums in groups if id(table) not in placed]
            if total:
                add_counts(counts, order.keys, _summed(total), distinct=True)
        for table, sums in groups:
            add_counts(counts, table.count_keys, sums, distinct=table.distinct)


def _summed(values: list[Sequence[int]]) -> Sequence[int]:
    return values[0] if len(values) == 1 else list(map(sum, zip(*values, strict=True)))


def add_counts(counts: dict[Key, int], keys: Iterable[Key], sums: Iterable[int], *, distinct: bool = False) -> None:
    """Add ``sums`` to ``counts`` key by key (in one C call into an empty dict when the keys are
    ``distinct``)."""
    if not counts and distinct:
        counts.update(zip(keys, sums, strict=True))
        return
    get = counts.get
    for key, value in zip(keys, sums, strict=True):
        counts[key] = get(key, 0) + value

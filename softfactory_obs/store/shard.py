"""One process incarnation's metric values: an append-only file of keyed 8-byte slots.

Layout (native byte order; shards never leave the machine that wrote them)::

    header, 64 bytes:  magic "SFOSHD01" | used (int64) | pid (int64) | created_ns (int64)
                       | seq (int64) | digest_used (int64) | digest (16 bytes)
    records, 8-byte aligned, one after another up to ``used``:
        key_len (uint32) | kind (uint32) | key (UTF-8 JSON) | zero padding to 8 | value (8 bytes)

``kind`` says how to read the value: an int64 count in fixed point (never a float, so that sums
over workers and over compaction are exact and order-independent), a float64 gauge, a time_ns
stamp, or a family description whose value is unused. A SKIP record fills the rest of a segment.

The file grows in segments, each a separate mapping of a new region of the file, so the slot
views handed to metric children stay valid for the life of the process. ``used`` is bumped only
after a record is complete, so a reader never parses a half-written key. Each slot is written as
one aligned 8-byte store through a memoryview, which readers see whole (no torn values).

The digest is the writer's BLAKE2b-128 of every record's head and padded key (a skip record's head
alone) up to ``digest_used``, published under a seqlock (``seq`` odd while it changes) before
``used``: a reader that finds another shard with the same digest at the same length knows its key
table without parsing it (``reader.py``). Shards written before the digest existed hold zeros there.

Liveness is the kernel's: the owner holds ``flock(LOCK_EX)`` on the file from creation to death
(SIGKILL included); anyone who can take ``LOCK_SH`` knows the owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import re
import struct
import threading
import time
from collections.abc import Mapping
from typing import Any

MAGIC = b"SFOSHD01"
HEADER_SIZE = 64
RECORD_HEAD = struct.Struct("=II")

KIND_COUNT = 1  # int64, fixed point: counters, histogram buckets and sums
KIND_GAUGE = 2  # float64
KIND_STAMP = 3  # int64 time_ns of a gauge's last set (for mostrecent)
KIND_META = 4  # the key is a family description; no value
# The newest exemplar of a series: 96 bytes, seq (int64, odd while being written) | value (float64)
# | time_ns (int64) | id length (1 byte) + id (up to 71 bytes ASCII). Readers retry on a torn seq.
KIND_EXEMPLAR = 5
EXEMPLAR_SIZE = 96
EXEMPLAR_ID_MAX = 71
KIND_SKIP = 0xFFFFFFFF  # key_len holds the bytes to skip to the next segment

DIGEST = struct.Struct("=qq16s")  # seq | digest_used | digest, at DIGEST_AT
DIGEST_AT = 32
FIRST_SEGMENT = 64 * 1024
MAX_SEGMENT = 4 * 1024 * 1024
PAGE = mmap.PAGESIZE

Key = tuple[str, str, tuple[str, ...]]  # (family, sample suffix, label values)


def encode_key(key: Key) -> bytes:
    """The bytes of a record key: family, suffix and label values."""
    return json.dumps([key[0], key[1], list(key[2])], ensure_ascii=False, separators=(",", ":")).encode("utf-8")


_decoded: dict[bytes, Key] = {}
# One object per distinct name, suffix and label-value tuple: the keys of one family (a histogram's
# buckets, every worker's copy) share them, which is most of what a reader keeps in memory.
_parts: dict[Any, Any] = {}
_json_decode = json.JSONDecoder().decode


def decode_key(raw: bytes) -> Key:
    """The (family, suffix, label values) a key's bytes encode; ValueError if they encode no key."""
    # Every worker writes the same keys: decode each distinct one once per process, not once per shard.
    key = _decoded.get(raw)
    if key is None:
        text = raw.decode("utf-8")
        name, suffix, labels = _split_key(text) or _json_key(text)
        if len(_decoded) > 200_000:  # bounded: label values come from a bounded set, but be sure
            _decoded.clear()
            _parts.clear()
        parts = _parts.setdefault
        key = (parts(name, name), parts(suffix, suffix), parts(labels, labels))
        _decoded[raw] = key
    return key


def _split_key(text: str) -> Key | None:
    """The key ``encode_key`` wrote, read by splitting on quotes: without a backslash no string in
    it holds a quote, so the pieces between quotes are exactly the strings and the punctuation
    ``encode_key`` puts between them. None for anything else (then JSON decides)."""
    if "\\" in text:
        return None
    pieces = text.split('"')
    n = len(pieces)
    if n < 5 or pieces[0] != "[" or pieces[2] != ",":
        return None
    if n == 5:
        return (pieces[1], pieces[3], ()) if pieces[4] == ",[]]" else None
    between = pieces[6:-1:2]
    if pieces[4] != ",[" or pieces[-1] != "]]" or between.count(",") != len(between):
        return None
    return pieces[1], pieces[3], tuple(pieces[5:-1:2])


def _json_key(text: str) -> Key:
    try:
        name, suffix, labels = _json_decode(text)
    except TypeError:  # a number, null: nothing to unpack
        raise ValueError(f"not a key: {text[:80]!r}") from None
    if not (isinstance(name, str) and isinstance(suffix, str) and isinstance(labels, list)) or not all(
        isinstance(v, str) for v in labels
    ):
        raise ValueError(f"not a key: {text[:80]!r}")
    return name, suffix, tuple(labels)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


# Bytes a value of each kind takes in a record (a kind missing here is not a record's).
VALUE_SIZES = {KIND_COUNT: 8, KIND_GAUGE: 8, KIND_STAMP: 8, KIND_META: 8, KIND_EXEMPLAR: EXEMPLAR_SIZE}


def value_size(kind: int) -> int:
    """Bytes a value of ``kind`` takes in a record."""
    return VALUE_SIZES[kind]


def record_size(raw_key: bytes, kind: int = KIND_COUNT) -> int:
    """Bytes a record of ``raw_key`` and ``kind`` takes, padding included."""
    return RECORD_HEAD.size + _round_up(len(raw_key), 8) + value_size(kind)


# value, wall-clock stamp (ns), id length, id: the exemplar slot after its sequence word.
EXEMPLAR_BODY = struct.Struct(f"<dqB{EXEMPLAR_ID_MAX}s")


# Sequence words are stored, not incremented (a load and a store each through the memoryview):
# a fresh odd number from this process's counter before the fields change, the even one after.
# Only the owning process writes its slots, and no two writes share a number, so a reader that
# sees the same even word before and after its read saw no write in between.
next_odd = itertools.count(1, 2).__next__


LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MAX_EXEMPLAR_RUNES = 128  # OpenMetrics: the names and values of an exemplar's labels, together


def encode_exemplar(labels: Mapping[str, str]) -> bytes:
    """An exemplar's labels as a slot keeps them: ``name=value`` lines, UTF-8. Refused (ValueError)
    rather than cut: a cut value would be a false trace id."""
    if not labels:
        raise ValueError("an exemplar needs at least one label, such as {'trace_id': ...}")
    lines = []
    for name, value in labels.items():
        text = str(value)
        if not (isinstance(name, str) and LABEL_NAME.fullmatch(name)) or name.startswith("__"):
            raise ValueError(f"exemplar label name {name!r} is not valid (letters, digits, _; not starting __)")
        if "\n" in text:
            raise ValueError(f"exemplar label {name}: a value may not hold a line break")
        lines.append(f"{name}={text}")
    if sum(len(str(n)) + len(str(v)) for n, v in labels.items()) > MAX_EXEMPLAR_RUNES:
        raise ValueError(f"exemplar {dict(labels)}: over OpenMetrics' {MAX_EXEMPLAR_RUNES} characters")
    ident = "\n".join(lines).encode("utf-8", "replace")
    if len(ident) > EXEMPLAR_ID_MAX:
        raise ValueError(f"exemplar {dict(labels)}: {len(ident)} bytes, a slot keeps {EXEMPLAR_ID_MAX}")
    return ident


def decode_exemplar(ident: str) -> dict[str, str]:
    """The labels ``encode_exemplar`` stored (empty when the text is not such labels)."""
    labels = {}
    for line in ident.split("\n"):
        name, eq, value = line.partition("=")
        if not eq or not LABEL_NAME.fullmatch(name):
            return {}
        labels[name] = value
    return labels


def write_exemplar(seg: Segment, slot: int, value: float, ident: bytes, stamp_ns: int = 0) -> None:
    """Seqlock write: odd seq while the fields change, even after (see ``next_odd``)."""
    ints = seg.ints
    odd = next_odd()
    ints[slot] = odd
    EXEMPLAR_BODY.pack_into(
        seg.buf, (slot + 1) * 8, value, stamp_ns or time.time_ns(), min(len(ident), EXEMPLAR_ID_MAX), ident
    )
    ints[slot] = odd + 1


def read_exemplar(buf: Any, ints: Any, floats: Any, slot: int) -> tuple[float, int, str] | None:
    """The exemplar in ``slot`` (value, stamp, id) read under its seqlock, or None."""
    for _ in range(3):
        seq = ints[slot]
        if seq == 0:
            return None  # never written
        if seq % 2:
            continue
        value, stamp = floats[slot + 1], ints[slot + 2]
        at = (slot + 3) * 8
        ident = bytes(buf[at + 1 : at + 1 + min(buf[at], EXEMPLAR_ID_MAX)])
        if ints[slot] == seq:
            return value, stamp, ident.decode("utf-8", "replace")
    return None


class Segment:
    """One mapped part of a shard file: its buffer and views as int64 and float64 slots."""

    __slots__ = ("base", "buf", "floats", "ints", "size", "view")

    def __init__(self, base: int, buf: mmap.mmap) -> None:
        self.base = base
        self.buf = buf
        self.view = memoryview(buf)
        self.size = len(buf)
        self.ints = memoryview(buf).cast("q")
        self.floats = memoryview(buf).cast("d")


class ShardWriter:
    """The current process's shard. ``path=None`` keeps it in anonymous memory (single-process mode)."""

    def __init__(self, path: str | None, final_path: str | None = None) -> None:
        self.path = final_path or path
        self.lock = threading.Lock()
        self.segments: list[Segment] = []
        self.fd: int | None = None
        self._offset = HEADER_SIZE  # next free byte, global
        self._end = 0  # end of the last segment, global
        self._digest = hashlib.blake2b(digest_size=16)  # of the record heads and keys written so far
        if path is not None:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for life: our liveness
            self._grow(FIRST_SEGMENT)
            head = self.segments[0].buf
            head[0:8] = MAGIC
            ints = self.segments[0].ints
            ints[2] = os.getpid()
            ints[3] = time.time_ns()
            ints[1] = HEADER_SIZE
            if path is not None and final_path is not None:
                # Published under its final name only once locked: a prober never sees it unlocked.
                os.rename(path, final_path)
        except BaseException:
            # Hazard: a full directory fails here on every attempt (posix_fallocate: ENOSPC). Each
            # failure must give back its descriptor and its half-made file, or a worker that keeps
            # trying runs out of descriptors and fills the directory with .new files.
            self._abandon(path)
            raise

    def _abandon(self, path: str | None) -> None:
        self.close()
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _grow(self, needed: int) -> None:
        last = self.segments[-1].size if self.segments else FIRST_SEGMENT // 2
        size = _round_up(max(needed, min(last * 2, MAX_SEGMENT)), PAGE)
        base = self._end
        if self.fd is None:
            buf = mmap.mmap(-1, size)
        else:
            # Reserve the blocks now: writing into a hole of a full tmpfs would be SIGBUS, not an error.
            os.posix_fallocate(self.fd, base, size)
            buf = mmap.mmap(self.fd, size, offset=base)
        self.segments.append(Segment(base, buf))
        self._end = base + size

    def reserve(self, size: int) -> None:
        """Make the next ``size`` bytes of records land in one segment (a child's slots share one view)."""
        if self._offset + size > self._end:
            if self._offset < self._end:  # fill the rest of this segment with a skip record
                seg = self.segments[-1]
                RECORD_HEAD.pack_into(seg.buf, self._offset - seg.base, self._end - self._offset, KIND_SKIP)
                self._digest.update(seg.buf[self._offset - seg.base : self._offset - seg.base + RECORD_HEAD.size])
                self._offset = self._end
            self._grow(size)
            self._publish()

    def add(self, raw_key: bytes, kind: int) -> tuple[Segment, int]:
        """Append a zeroed slot for ``raw_key``; return its segment and value index. Caller holds ``lock``."""
        size = record_size(raw_key, kind)
        self.reserve(size)
        seg = self.segments[-1]
        at = self._offset - seg.base
        RECORD_HEAD.pack_into(seg.buf, at, len(raw_key), kind)
        seg.buf[at + 8 : at + 8 + len(raw_key)] = raw_key
        value_at = at + size - value_size(kind)
        seg.buf[value_at : at + size] = bytes(value_size(kind))
        self._digest.update(seg.buf[at:value_at])  # the head and the key with its (zero) padding
        self._offset += size
        self._publish()
        return seg, value_at // 8

    def _publish(self) -> None:
        # The digest first, under its seqlock (see ``next_odd``), then ``used``: a reader that sees
        # the new ``used`` with the old digest finds digest_used != used and does not rely on it.
        head = self.segments[0]
        odd = next_odd()
        head.ints[DIGEST_AT // 8] = odd
        DIGEST.pack_into(head.buf, DIGEST_AT, odd, self._offset, self._digest.digest())
        head.ints[DIGEST_AT // 8] = odd + 1
        head.ints[1] = self._offset

    def buffers(self) -> list[tuple[int, Any]]:
        """The mapped segments, for a reader in this process."""
        return [(s.base, s.buf) for s in self.segments]

    def close(self, *, release: bool = True) -> None:
        """``release=False`` (after fork, in the child) drops our references without unlocking the parent's file."""
        for seg in self.segments:
            seg.ints.release()
            seg.floats.release()
            seg.view.release()  # every view must go first: an mmap with exported buffers cannot close
            try:
                seg.buf.close()
            except BufferError:  # a reader's view not yet collected: the mapping goes with it
                pass
        self.segments = []
        if self.fd is not None:
            os.close(self.fd)  # in a forked child this drops only the child's copy; the parent keeps its lock
            self.fd = None


class CorruptShardError(Exception):
    """A shard whose bytes do not follow the format."""


class ShardGrewError(CorruptShardError):
    """``used`` points past the mapping: its writer grew the file after the reader mapped it (a
    writer extends the file before it publishes records there), or, if it persists, corruption."""

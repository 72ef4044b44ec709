"""The shared store directory: shard files, liveness probes, consistent snapshots and compaction.

Files::

    w-<pid>-<start_ns>-<rand>.shard   one per process incarnation (never reused, so pid reuse is harmless)
    archive.json                      totals of every absorbed (dead) shard, with the ids it absorbed
    dir.lock                          scrapes hold LOCK_SH while they list and read; publishing a
                                      compaction holds LOCK_EX
    compact.lock                      one compactor at a time

Invariant: a reader holding ``dir.lock`` sees each shard's counts exactly once, either in its own
file or inside the archive, never both and never neither. Compaction writes the new archive to a
temporary file, then under LOCK_EX renames it into place and unlinks the shards it absorbed;
the archive names those shards, so if the compactor dies between the rename and the unlinks the
leftovers are skipped, not counted twice. Counts are integers, so regrouping them is exact and
no counter ever goes backwards.

A dead shard never changes again, so readers validate it whole once its writer is gone (never
trusting a key table parsed while it lived) and keep its checksum: a dead shard whose bytes then
change is damaged and is set aside, never exposed. Hazard: values damaged before any reader saw
the shard dead, its structure intact, cannot be told from real ones (no writer checksums its
slots: that would cost every write).

A directory this process cannot write (read-only, or not there) is still read: scrapes show what
the others wrote, compaction waits, and only making a shard fails (counted by the registry).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import re
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .._failures import report_failure
from .archive import ARCHIVE, Archive, Identity, new_nonce
from .reader import CountSums, KeyOrder, ShardReader, Template, add_counts
from .shard import (
    KIND_EXEMPLAR,
    KIND_GAUGE,
    KIND_META,
    KIND_STAMP,
    CorruptShardError,
    Key,
    ShardGrewError,
    ShardWriter,
)

SHARD_RE = re.compile(r"w-(\d+)-(\d+)-([0-9a-f]{16})\.shard")
# A shard whose writer added a segment between our mapping and our read of ``used`` is mapped
# again; to miss again, the writer must fill a whole new (doubled) segment in that instant, so
# a third miss in a row means ``used`` is wrong, not late.
_MAP_ATTEMPTS = 3


class StoreBusyError(Exception):
    """The directory lock could not be taken in time (a compaction is publishing)."""


@dataclass
class Snapshot:
    """Everything a scrape needs, merged: exact counts, and gauges of live processes only."""

    metas: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[Key, int] = field(default_factory=dict)
    # key -> [(value, time_ns or 0, shard id)] from live shards
    gauges: dict[Key, list[tuple[float, int, str]]] = field(default_factory=dict)
    # key -> (value, time_ns, id): the newest exemplar of each series among unabsorbed shards
    exemplars: dict[Key, tuple[float, int, str]] = field(default_factory=dict)
    live_shards: int = 0
    dead_shards: int = 0
    files_opened: int = 0
    records_parsed: int = 0  # key records parsed (not read before, nor recognised from another shard)
    archive_generation: int = 0
    # Whether a worker could make a shard in the directory now, and the space left there (None
    # without a directory): a store fault is visible at once, whichever worker answers.
    writable: bool | None = None
    free_bytes: int | None = None


def _flock(fd: int, op: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
        if time.monotonic() >= deadline:
            raise StoreBusyError("the metrics directory stayed locked")
        time.sleep(0.001)


def is_dead(path: str) -> bool:
    """True when no process holds the shard's lifetime lock (its owner exited, however it died)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    finally:
        os.close(fd)  # also drops the probe lock


@contextlib.contextmanager
def _mapped(path: str) -> Iterator[list[tuple[int, Any]]]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise CorruptShardError(f"{path}: empty file")
        mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    try:
        yield [(0, mm)]
    finally:
        mm.close()


class StoreDirectory:
    """The directory all workers of one service share: their shards, the archive, the locks."""

    def __init__(self, path: str, *, lock_timeout: float = 2.0) -> None:
        self.path = os.path.abspath(path)
        self.lock_timeout = lock_timeout
        with contextlib.suppress(OSError):  # read-only: still readable; new_shard says why not
            self._prepare()
        self._readers: dict[str, ShardReader] = {}  # parsed key tables of shards, by file name
        self._template: Template | None = None  # the records most shards begin with (see reader.py)
        self._order = KeyOrder()  # a place for each count key, to sum tables of different orders
        self._dead: dict[str, int] = {}  # checksums of dead shards, as first validated
        # One snapshot at a time per process: the incremental key tables above are shared, and two
        # threads parsing the same tail (a scrape and the maintenance thread, or two gthread
        # scrapes) would each append it, counting those series twice.
        self._snapshot_lock = threading.Lock()
        self._archive_cache: tuple[Identity, Archive] | None = None

    def _prepare(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        if not self.writable():
            raise PermissionError(f"metrics directory {self.path} is not writable")
        for name in ("dir.lock", "compact.lock"):
            with open(os.path.join(self.path, name), "a"):
                pass

    def writable(self) -> bool:
        """Whether this process can make files in the directory now."""
        return os.access(self.path, os.W_OK | os.X_OK)

    def new_shard(self) -> ShardWriter:
        """A shard file for this process, locked for its life."""
        self._prepare()  # the directory may have become writable (or been removed) since
        name = f"w-{os.getpid()}-{time.time_ns()}-{os.urandom(8).hex()}.shard"
        final = os.path.join(self.path, name)
        return ShardWriter(os.path.join(self.path, "." + name + ".new"), final)

    # -- reading ----------------------------------------------------------------------------------

    def _archive(self) -> Archive:
        """The archive, parsed only when its identity changed (callers hold dir.lock or compact.lock).

        A corrupt archive is set aside (``archive.json.corrupt``) and counted, and the store goes on
        without it: the dead workers' totals it held are lost (counters reset, which Prometheus'
        rate() absorbs), the next compaction writes a new one. Answering 500 for ever would lose
        every scrape instead."""
        path = os.path.join(self.path, ARCHIVE)
        try:
            identity = Archive.identity_of(path)
            if identity is None:
                return Archive()
            if self._archive_cache is not None and self._archive_cache[0] == identity:
                return self._archive_cache[1]
            archive = Archive.load(path)
            if archive.identity != identity:
                raise CorruptShardError(f"{path}: first line {identity} but the archive holds {archive.identity}")
        except CorruptShardError as exc:
            self._archive_cache = None
            _quarantine(self.path, ARCHIVE)
            report_failure("metrics store (corrupt archive set aside)", exc)
            return Archive()
        self._archive_cache = (identity, archive)
        return archive

    def _shard_names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.path) if SHARD_RE.fullmatch(n))
        except FileNotFoundError:  # a store nobody could make yet
            return []

    def snapshot(self, own: ShardWriter | None = None) -> Snapshot:
        """A consistent merge of the archive and every shard not yet absorbed."""
        with self._snapshot_lock:
            return self._snapshot(own)

    def _space(self, snap: Snapshot) -> None:
        try:
            stat = os.statvfs(self.path)
        except OSError:
            snap.writable, snap.free_bytes = False, 0
            return
        snap.writable = not stat.f_flag & os.ST_RDONLY and self.writable()
        snap.free_bytes = stat.f_bavail * stat.f_frsize

    def _read_lock(self) -> int | None:
        """``dir.lock`` opened for LOCK_SH; None where nobody can have made it (a read-only
        directory, where no compaction can publish either)."""
        path = os.path.join(self.path, "dir.lock")
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not os.path.isdir(self.path) or not self.writable():
                return None
            with open(path, "a"):
                pass
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def _snapshot(self, own: ShardWriter | None) -> Snapshot:
        snap = Snapshot()
        self._space(snap)
        fd = self._read_lock()
        try:
            if fd is not None:
                _flock(fd, fcntl.LOCK_SH, self.lock_timeout)
            archive = self._archive()
            absorbed = set(archive.absorbed)
            snap.archive_generation = archive.generation
            snap.metas.update(archive.metas)
            sums = CountSums()
            names = [n for n in self._shard_names() if n not in absorbed]
            lost = False  # a shard set aside: its keys may have left the store
            own_name = os.path.basename(own.path) if own is not None and own.path else None
            seen = set()
            for name in names:
                seen.add(name)
                path = os.path.join(self.path, name)
                live = False
                try:
                    live = name == own_name or not is_dead(path)
                    self._read_shard(name, path, live, snap, sums)
                except FileNotFoundError:
                    continue  # only absorbed shards are unlinked, and only under LOCK_EX: vanished means absorbed
                except CorruptShardError as exc:
                    if live:
                        raise  # never expose a partial sum
                    # A dead writer left garbage: set it aside (its counts are lost: the one accepted reset).
                    _quarantine(self.path, name)
                    lost = True
                    report_failure("metrics store (corrupt shard quarantined)", exc)
                    continue
                if live:
                    snap.live_shards += 1
                else:
                    snap.dead_shards += 1
        finally:
            if fd is not None:
                os.close(fd)
        if lost or set(self._readers) - seen:
            self._order = KeyOrder()  # its contract: no place for a key that left with a shard
        sums.into(snap.counts, self._order)
        add_counts(snap.counts, archive.counts.keys(), archive.counts.values())
        for gone in set(self._readers) - seen:
            del self._readers[gone]
        for gone in set(self._dead) - seen:
            del self._dead[gone]
        return snap

    def _read_shard(self, name: str, path: str, live: bool, snap: Snapshot, sums: CountSums) -> None:
        reader = self._readers.get(name)
        if reader is None or (not live and name not in self._dead):
            # Newly dead: parse it whole again rather than resume with a key table read while it
            # lived (the bytes under it may have been damaged since).
            reader = self._readers[name] = ShardReader()
        snap.files_opened += 1
        for attempt in range(_MAP_ATTEMPTS):
            with _mapped(path) as buffers:
                parsed = reader.parsed
                try:
                    reader.parse(buffers, self._template, live=live)  # nothing kept when it raises: parse again
                except ShardGrewError:
                    if attempt + 1 == _MAP_ATTEMPTS:
                        raise
                    continue  # its writer added a segment since we mapped it: map it again
                snap.records_parsed += reader.parsed - parsed
                if reader.made is not None:  # it read further than the template: the next fresh reader tries it
                    self._template, reader.made = reader.made, None
                if not live:
                    self._check_unchanged(name, buffers, reader)
                sums.add(reader.table, reader.table.count_values(buffers))
                merge_others(reader, buffers, live, name, snap)
                return

    def _check_unchanged(self, name: str, buffers: list[tuple[int, Any]], reader: ShardReader) -> None:
        """Remember a dead shard's checksum when first validated; refuse it if its bytes changed."""
        checksum = zlib.crc32(buffers[0][1][: reader.pos])
        known = self._dead.setdefault(name, checksum)
        if known != checksum:
            self._dead.pop(name, None)
            raise CorruptShardError(f"{name}: changed after its writer died (checksum {checksum:08x}, was {known:08x})")

    # -- compaction -------------------------------------------------------------------------------

    def compact(self, *, max_shards: int = 256, wait: float = 0.0, crash_at: str | None = None) -> int:
        """Fold dead shards into the archive; returns how many were absorbed.

        With ``wait=0`` it returns 0 at once if another compactor is at work; otherwise it waits up
        to ``wait`` seconds for it. ``crash_at`` (tests only) kills the process at a named step to
        prove crash consistency.
        """
        if not self.writable():
            return 0  # nothing can be published; dead shards are still read where they are
        lock_fd = os.open(os.path.join(self.path, "compact.lock"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _flock(lock_fd, fcntl.LOCK_EX, wait)
            except StoreBusyError:
                return 0
            return self._compact_locked(max_shards, crash_at)
        finally:
            os.close(lock_fd)

    def _compact_locked(self, max_shards: int, crash_at: str | None) -> int:
        # One listing for the garbage and the shards: a round runs every interval in every worker,
        # and each system call waits for the GIL under load. A shard published after it is live.
        listed = os.listdir(self.path)
        self._remove_garbage(listed)
        archive = self._archive()
        present = sorted(n for n in listed if SHARD_RE.fullmatch(n))
        dead = self._dead_shards(present, set(archive.absorbed), max_shards)
        # Absorbed by an earlier run that died before unlinking them: listed until their files are gone.
        leftovers = set(archive.absorbed) & set(present)
        if not dead and not leftovers:
            return 0
        new = Archive(archive.generation + 1, new_nonce(), [], dict(archive.metas), dict(archive.counts))
        absorbed = [name for name in dead if self._absorb(name, new)]
        new.absorbed = sorted(leftovers | set(absorbed))
        tmp = os.path.join(self.path, f"{ARCHIVE}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
        with open(tmp, "wb") as f:
            f.write(new.dump())
            f.flush()
            os.fsync(f.fileno())
        _maybe_crash(crash_at, "after_tmp")
        if not self._publish(tmp, new, archive.identity, crash_at):
            _unlink(tmp)
            return 0
        return len(absorbed)

    def _remove_garbage(self, listed: list[str]) -> None:
        # Temp archives of a compactor that died (we hold compact.lock now), and shards whose creator
        # died before publishing them.
        for name in listed:
            path = os.path.join(self.path, name)
            if name.startswith(ARCHIVE + ".tmp-") or (name.endswith(".shard.new") and _abandoned(path)):
                _unlink(path)

    def _dead_shards(self, names: list[str], absorbed: set[str], limit: int) -> list[str]:
        dead = []
        for name in names:
            if name in absorbed:
                continue
            try:
                if is_dead(os.path.join(self.path, name)):
                    dead.append(name)
            except FileNotFoundError:
                continue
            if len(dead) >= limit:
                break
        return dead

    def _absorb(self, name: str, into: Archive) -> bool:
        snap = Snapshot()
        reader = ShardReader()
        try:
            with _mapped(os.path.join(self.path, name)) as buffers:
                reader.parse(buffers, self._template)
                if name in self._dead:
                    self._check_unchanged(name, buffers, reader)
                merge_values(reader, buffers, False, name, snap)
        except CorruptShardError as exc:
            _quarantine(self.path, name)
            report_failure("metrics store (corrupt shard quarantined)", exc)
            return False
        for family, meta in snap.metas.items():
            into.metas.setdefault(family, meta)
        for key, value in snap.counts.items():
            into.counts[key] = into.counts.get(key, 0) + value
        return True

    def _publish(self, tmp: str, new: Archive, expected: Identity, crash_at: str | None) -> bool:
        """Swap the archive in and unlink what it absorbed, while no reader is listing."""
        fd = os.open(os.path.join(self.path, "dir.lock"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                _flock(fd, fcntl.LOCK_EX, self.lock_timeout)
            except StoreBusyError:
                return False
            if self._archive().identity != expected:  # impossible under compact.lock; be sure
                return False
            os.rename(tmp, os.path.join(self.path, ARCHIVE))
            _maybe_crash(crash_at, "after_rename")
            for i, name in enumerate(new.absorbed):
                _unlink(os.path.join(self.path, name))
                if i == 0:
                    _maybe_crash(crash_at, "between_unlinks")
            return True
        finally:
            os.close(fd)


def merge_values(reader: ShardReader, buffers: list[tuple[int, Any]], live: bool, shard: str, snap: Snapshot) -> None:
    """Add one shard's values to ``snap``: counts summed, gauges and exemplars kept by shard."""
    add_counts(snap.counts, reader.table.count_keys, reader.table.count_values(buffers))
    merge_others(reader, buffers, live, shard, snap)


def merge_others(reader: ShardReader, buffers: list[tuple[int, Any]], live: bool, shard: str, snap: Snapshot) -> None:
    """Add one shard's records other than counts to ``snap``: family descriptions, the gauges and
    their stamps of a live shard, the newest exemplar of each series."""
    stamps: dict[Key, int] = {}
    gauges: list[tuple[Key, float]] = []
    for kind, payload, value in reader.others(buffers):
        if kind == KIND_META:
            snap.metas.setdefault(payload["name"], payload)
        elif live and kind == KIND_GAUGE:
            gauges.append((payload, float(value)))
        elif live and kind == KIND_STAMP:
            stamps[payload] = int(value)
        elif kind == KIND_EXEMPLAR and value is not None:
            known = snap.exemplars.get(payload)
            if known is None or value[1] > known[1]:
                snap.exemplars[payload] = value
    for key, value in gauges:
        snap.gauges.setdefault(key, []).append((value, stamps.get(key, 0), shard))


def _abandoned(path: str) -> bool:
    """An unpublished shard whose creator died: unlocked, and old enough that it is not being born.

    Its creator opens it and only then locks it; in between it looks dead. The age rules that out.
    """
    try:
        return time.time() - os.stat(path).st_mtime > 60 and is_dead(path)
    except OSError:
        return False


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _quarantine(directory: str, name: str) -> None:
    # Best effort: in a read-only directory the file stays, and every reader skips it anew.
    with contextlib.suppress(OSError):
        os.rename(os.path.join(directory, name), os.path.join(directory, name + ".corrupt"))


def _maybe_crash(crash_at: str | None, point: str) -> None:
    if crash_at == point:
        os._exit(17)

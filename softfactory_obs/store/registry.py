"""The registry: the families of this process and the shard they write to (a directory, or memory).

Binding happens on first use in each process, so metrics created in the gunicorn master
(``--preload``) or at import time work without hooks: in a new process (found by
``process_state``, fork hooks or not) every binding inherited from the parent is dropped and the
process writes to a shard of its own, never into its parent's.

A child the shard cannot take (a full or read-only store) counts in this process's memory and
is moved into the shard, with what it counted, once the shard can take it (``write_unwritten``).
Until then its counts are in no scrape: a scrape shows only what every worker can read, so that
counters never go backwards between scrapes answered by different workers.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._failures import report_failure
from ..process_state import ensure_current, install_fork_hook, on_new_process
from .directory import Snapshot, StoreDirectory, merge_values
from .location import ENV, auto_directory
from .reader import ShardReader
from .shard import KIND_META, Segment, ShardWriter, record_size

if TYPE_CHECKING:
    from .children import Child
    from .metrics import Metric

FROM_ENVIRONMENT = "<from environment>"


class Registry:
    """The families of this process and the shard they write to (a directory, or memory).

    ``directory=FROM_ENVIRONMENT`` (the default registry) decides at the first write or scrape, not
    at import: ``SOFTFACTORY_OBS_METRICS_DIR`` if set, else a private directory per gunicorn master,
    else memory. So metrics written at import time, even in a ``--preload`` master, land where the
    workers' do.
    """

    def __init__(self, directory: str | None = None) -> None:
        self.families: dict[str, Metric[Any]] = {}
        self._directory_path = directory
        self._directory: StoreDirectory | None = None
        self._writer: ShardWriter | None = None
        # Without a directory: the reader of the in-memory shard, kept with the writer it reads.
        self._memory_reader: tuple[ShardWriter, ShardReader] | None = None
        # Guards the writer's key table and every child's slots. Re-entrant: a caller writing
        # several children under it (``lock``) may meet one that binds, which takes it again.
        self._lock = threading.RLock()
        self._children: list[Child] = []
        self._metas_written: set[str] = set()
        self._compact_pending = False
        self.callbacks: list[Callable[[], Iterable[Any]]] = []  # families computed at scrape time
        self.before_scrape: list[Callable[[], object]] = []  # run by the scraping worker before it reads
        self._on_fork: list[weakref.WeakMethod[Callable[[], None]]] = []
        self._on_unwritten: list[weakref.WeakMethod[Callable[[], None]]] = []
        # Children counting in memory (their slots in ``_memory``) until the shard takes them.
        self._memory: ShardWriter | None = None
        self._unwritten: list[tuple[Metric[Any], Child]] = []
        self._next_retry = 0.0
        # Children bound as soon as a shard exists, so that they have slots while it can still
        # grant them: the store's own failure counter must not live in the store that failed.
        self._with_shard: list[tuple[Metric[Any], Child]] = []
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

    @property
    def lock(self) -> threading.RLock:
        """The lock children hold around a locked write (it guards the writer's key table too).
        Holding it, a caller may write any of this registry's children with their ``*_unlocked``
        writers, several under one acquisition; a child that binds meanwhile takes it again
        (re-entrant). Replaced in a new process: take it again there, after ``ensure_current``."""
        return self._lock

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

    def register(self, family: Metric[Any]) -> Metric[Any]:
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
        """Call the bound method ``forget`` in a forked child and after ``release`` (to drop what it
        cached of the slots it had), for as long as its object lives."""
        self._on_fork = [ref for ref in self._on_fork if ref() is not None]
        self._on_fork.append(weakref.WeakMethod(forget))

    def bind_with_shard(self, family: Metric[Any], child: Child) -> None:
        """Bind ``child`` whenever this process's shard is made (its first segment has room for
        it), rather than at its first write, when the store may already be full."""
        self._with_shard.append((family, child))

    def on_unwritten(self, retry: Callable[[], None]) -> None:
        """Call the bound method ``retry`` when a child could not get slots in the shard, for as
        long as its object lives: some request thread must call ``write_unwritten`` from now on."""
        self._on_unwritten = [ref for ref in self._on_unwritten if ref() is not None]
        self._on_unwritten.append(weakref.WeakMethod(retry))

    def _writer_or_none(self) -> ShardWriter:
        if self._writer is None:
            install_fork_hook()  # a fork from now on resets this process's bindings at once
            directory = self.directory
            self._writer = directory.new_shard() if directory is not None else ShardWriter(None)
            # A new incarnation usually means one just died: absorb it, so the backlog of dead
            # shards stays near the number of workers however fast they churn.
            self._compact_pending = directory is not None
            for family, child in self._with_shard:
                if not child.bound:
                    seg, idx = self._slots(family, child.keys)
                    self._children.append(child)
                    child.attach(seg, idx, self._lock)
        return self._writer

    def _slots(self, family: Metric[Any], keys: list[tuple[bytes, int]]) -> tuple[Segment, list[int]]:
        # Caller holds the lock.
        writer = self._writer_or_none()
        if family.name not in self._metas_written:
            writer.add(family.meta_bytes, KIND_META)
            self._metas_written.add(family.name)
        return _slots_in(writer, keys)

    def bind(self, family: Metric[Any], child: Child) -> None:
        """Give ``child`` fresh slots for its keys, unless another thread bound it first; slots in
        this process's memory when the shard cannot take them (counted, retried later). The child
        is attached under the lock: two threads meeting an unbound child at once must not each
        give it slots (a write through the first binding would land in slots the child no longer
        knows)."""
        ensure_current()  # never bind into a parent's shard, whichever server forked us
        failure = None
        with self._lock:
            if child.bound:
                return
            try:
                seg, idx = self._slots(family, child.keys)
            except Exception as exc:  # a full or read-only store: keep the app running, count in memory
                failure = exc
                if self._memory is None:
                    self._memory = ShardWriter(None)
                seg, idx = _slots_in(self._memory, child.keys)
                self._unwritten.append((family, child))
            self._children.append(child)
            child.attach(seg, idx, self._lock)
        if failure is not None:
            report_failure("metrics store", failure)  # after the lock: reporting writes a metric itself
            _call_each(self._on_unwritten)

    @property
    def unwritten(self) -> int:
        """How many children of this process count in memory, waiting for slots in the shard."""
        return len(self._unwritten)

    def write_unwritten(self, *, every: float = 1.0) -> bool:
        """Move the children that count in memory into the shard, with their counts, as far as
        it takes them now (at most once per ``every`` seconds); returns whether some still wait.

        Hazard: call it only on a thread that may write these children itself (a request's
        thread, or greenlet). A server that is not multithreaded writes them without the lock,
        and a move from another thread, between such a writer's reads of the old slots' view and
        of its index, would send the write out of bounds or into another child's slot.
        """
        if not self._unwritten:
            return False
        now = time.monotonic()
        if now < self._next_retry:
            return True
        self._next_retry = now + every
        with self._lock:
            while self._unwritten:
                family, child = self._unwritten[0]
                try:
                    seg, idx = self._slots(family, child.keys)
                except Exception:  # still full: counted when it first failed, not on each retry
                    break
                child.move(seg, idx)
                del self._unwritten[0]
            return bool(self._unwritten)

    def compact_if_pending(self, _: object = None) -> bool:
        """Absorb the shards of workers that died before this one started; once per process.

        The middleware calls it after a request's body was sent, so the first request of a new
        worker does not wait for it, and even a worker that lives for a single request leaves no
        backlog behind. Returns whether a later call may still have work to do: until this process
        has its shard and has compacted (after a fork, again), and while children count in
        memory (``write_unwritten``: this is a request's thread).
        """
        self.write_unwritten()
        if self._compact_pending:
            self._compact_pending = False
            try:
                # Wait a little if our own maintenance thread (or a sibling) holds the lock: a worker
                # that serves one request and exits must still leave no backlog behind.
                self.compact(wait=2.0)
            except Exception as exc:
                report_failure("metrics compaction", exc)
        return self._writer is None or self._compact_pending or bool(self._unwritten)

    @property
    def shard_path(self) -> str | None:
        """The file this process writes its values to; None before its first write, or in memory."""
        writer = self._writer
        return writer.path if writer is not None and writer.path else None

    def release(self) -> None:
        """Give up this process's shard, as a process that exits does: its lock is released (the
        shard now counts as dead, for compaction to absorb) and every child unbound; a later
        write binds a new shard. For a worker's exit hook, and for tests that play a dead worker."""
        with self._lock:
            self._release()

    def _after_fork_in_child(self) -> None:
        # Inherited bindings point into the parent's file: drop them all; the child binds anew.
        self._lock = threading.RLock()
        self._release()

    def _release(self) -> None:
        # Every step runs whatever an earlier one raised (a binding left behind would write into
        # a shard that is not this process's own); the first failure is raised at the end.
        self._directory = None  # its locks may have been held by a thread that does not exist here
        writer, self._writer = self._writer, None
        self._metas_written = set()
        memory, self._memory = self._memory, None
        self._unwritten = []
        for child in self._children:
            child._unbind()
        self._children = []
        failure: Exception | None = None
        for shard in (writer, memory):
            if shard is not None:
                try:
                    shard.close()
                except Exception as exc:
                    failure = failure or exc
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
                reader = self._memory_reader
                if reader is None or reader[0] is not writer:
                    reader = self._memory_reader = (writer, ShardReader())
                with self._lock:
                    buffers = writer.buffers()
                    reader[1].parse(buffers)  # only what was added since the last scrape
                    merge_values(reader[1], buffers, True, "memory", snap)
                snap.live_shards = 1
        for name, family in self.families.items():
            snap.metas.setdefault(name, family.meta)
        return snap

    def compact(self, **kwargs: Any) -> int:
        """Fold dead workers' shards into the archive (see ``StoreDirectory.compact``)."""
        ensure_current()
        directory = self.directory
        return directory.compact(**kwargs) if directory is not None else 0


def _slots_in(writer: ShardWriter, keys: list[tuple[bytes, int]]) -> tuple[Segment, list[int]]:
    # All of a child's slots in one segment: one view for the hot path.
    writer.reserve(sum(record_size(raw, kind) for raw, kind in keys))
    slots = [writer.add(raw, kind) for raw, kind in keys]
    return slots[0][0], [i for _, i in slots]


def _call_each(methods: list[weakref.WeakMethod[Callable[[], None]]]) -> None:
    for ref in list(methods):
        method = ref()
        if method is not None:
            try:
                method()
            except Exception as exc:
                report_failure("metrics store", exc)


REGISTRY = Registry(FROM_ENVIRONMENT)

"""Liveness, readiness and health: checks run in parallel, each bounded by its own timeout, cached.

- ``/live``: the worker answers; never runs a check (a slow database must not get pods killed).
- ``/ready``: started, not draining (SIGTERM received), and every critical check passing.
- ``/health``: every check with status, latency and age; ``healthy`` / ``degraded`` (a non-critical
  check failed, still 200) / ``unhealthy`` (a critical one failed, 503). ``application/health+json``
  (the IETF draft's shape) when the client asks for it.

A check is a callable returning truthy, a dict of details, or raising. A hung check is reported
failed at its timeout and the probe answers anyway; it keeps its pool thread until it returns, and
is not started again meanwhile, so probe storms cannot pile threads up.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import re
import shutil
import signal
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from .. import procfs
from .._failures import report_failure
from ..json_text import iso_utc, json_safe
from ..process_state import on_new_process

HEALTH_JSON = "application/health+json"
_SECRETS = re.compile(r"(?i)(password|passwd|pwd|secret|token|key)=([^\s&;,]+)|://[^/@\s]+@")


async def _bounded(awaitable: Awaitable[Any], timeout: float) -> Any:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:  # said as a probe that stopped waiting says it
        raise TimeoutError(f"timed out after {timeout:g} s") from None


@dataclass
class Check:
    """A registered dependency check: the callable, whether /ready depends on it, its timeout and
    background interval."""

    name: str
    fn: Callable[[], Any]
    critical: bool = True
    timeout: float = 2.0
    interval: float | None = None  # refresh in the background every `interval` seconds


@dataclass
class Result:
    """The outcome of one check run: healthy or not, latency, when it ran, details or a sanitised
    error."""

    name: str
    ok: bool
    critical: bool
    latency_ms: float
    checked_at: float  # when the result became known (a run's end, or the moment a wait gave up)
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    timed_out: bool = False

    def as_dict(self, now: float, with_details: bool) -> dict[str, Any]:
        """The result as the /health body shows it (details only when the caller may see them)."""
        out: dict[str, Any] = {
            "status": "pass" if self.ok else "fail",
            "critical": self.critical,
            "latency_ms": round(self.latency_ms, 3),
            "age_seconds": round(now - self.checked_at, 3),
            "checked_at": iso_utc(self.checked_at),
        }
        if with_details:
            if self.details:
                out["details"] = self.details
            if self.error:
                out["error"] = self.error
        return out


def _seconds(value: object) -> bool:
    return type(value) in (int, float) and 0 < value < math.inf  # type: ignore[operator]


def sanitise(exc: BaseException) -> str:
    """Exception class and message, with credentials and connection-string user info blanked."""
    message = _SECRETS.sub(lambda m: f"{m[1]}=***" if m[1] else "://***@", str(exc))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class HealthChecks:
    """The registered dependency checks, each run in a thread of its own with a timeout, results cached."""

    def __init__(self, ttl: float = 1.0) -> None:
        self.checks: dict[str, Check] = {}
        self.ttl = ttl
        self._results: dict[str, Result] = {}
        self._running: dict[str, Future[Result]] = {}
        self._lock = threading.Lock()
        on_new_process(self._forget_runs, component="health checks after fork")

    def _forget_runs(self) -> None:
        self._lock = threading.Lock()  # a check thread may have held it at fork time
        self._running = {}  # the parent's check threads do not exist here: their futures never finish

    def add(self, check: Check) -> None:
        """Register ``check``; its name must be unique and its timeout and interval sane."""
        if not check.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", check.name):
            raise ValueError(f"health check name {check.name!r}: use letters, digits, '.', '_' or '-'")
        if check.name in self.checks:
            raise ValueError(f"a health check named {check.name!r} is already registered")
        if not callable(check.fn):
            raise ValueError(f"health check {check.name!r}: expected a callable, got {check.fn!r}")
        if not _seconds(check.timeout):  # an infinite wait overflows the future's timeout and fails the probe
            raise ValueError(
                f"health check {check.name!r}: timeout must be > 0 seconds and finite, got {check.timeout!r}"
            )
        if check.interval is not None and not _seconds(check.interval):
            raise ValueError(
                f"health check {check.name!r}: interval must be None or > 0 seconds and finite, got {check.interval!r}"
            )
        self.checks[check.name] = check

    def _submit(self, check: Check) -> Future[Result]:
        # A daemon thread per run (runs are cached, so they are rare): a check that hangs for ever
        # must not hold the worker's exit the way a ThreadPoolExecutor's joined threads would.
        future: Future[Result] = Future()

        def run() -> None:
            result = self._execute(check)
            future.set_result(result)
            self._store(result)  # also when every probe stopped waiting: the known state moves on

        threading.Thread(target=run, name=f"softfactory_obs-check-{check.name}", daemon=True).start()
        return future

    def _execute(self, check: Check) -> Result:
        t0 = time.perf_counter()
        try:
            value = check.fn()
            if inspect.isawaitable(value):
                # An async check (an ASGI app's): awaited on an event loop of its own in this thread,
                # cancelled at its timeout. It must not use objects bound to the app's loop (make its
                # client inside the check).
                value = asyncio.run(_bounded(value, check.timeout))
        except Exception as exc:
            return Result(
                check.name, False, check.critical, (time.perf_counter() - t0) * 1000, time.time(), error=sanitise(exc)
            )
        details = value if isinstance(value, dict) else {}
        return Result(check.name, bool(value), check.critical, (time.perf_counter() - t0) * 1000, time.time(), details)

    def _store(self, result: Result) -> None:
        with self._lock:
            known = self._results.get(result.name)
            if known is None or result.checked_at >= known.checked_at:
                self._results[result.name] = result

    def run(self, names: list[str] | None = None, *, wait: bool = True) -> list[Result]:
        """Fresh-enough results for ``names`` (all by default).

        A stale result is refreshed by one run at a time, which a probe waits for (at most the
        check's timeout), except when the check is known to hang: once a run timed out, probes
        answer at once from that known state while the run stays in flight, so a hung check costs
        one timeout, not one per probe. With ``wait=False`` (a scrape) nothing waits: a refresh is
        started when due and the known results are returned.
        """
        chosen = [self.checks[n] for n in (names if names is not None else list(self.checks))]
        now = time.time()
        waiting: list[tuple[Check, Future[Result]]] = []
        with self._lock:
            for check in chosen:
                known = self._results.get(check.name)
                max_age = check.interval * 2 if check.interval else self.ttl
                if known is not None and now - known.checked_at < max_age:
                    continue
                future = self._running.get(check.name)
                in_flight = future is not None and not future.done()
                if future is None or not in_flight:
                    future = self._running[check.name] = self._submit(check)
                if wait and not (in_flight and known is not None and known.timed_out):
                    waiting.append((check, future))
        deadline = time.perf_counter() + max((c.timeout for c, _ in waiting), default=0)
        for check, future in waiting:
            try:
                result = future.result(timeout=max(0.0, min(check.timeout, deadline - time.perf_counter())))
            except FutureTimeout:
                error = f"timed out after {check.timeout:g} s"
                result = Result(check.name, False, check.critical, check.timeout * 1000, time.time(), error=error)
                result.timed_out = True
            self._store(result)
        with self._lock:
            return [self._results[c.name] for c in chosen if c.name in self._results]

    def refresh_background(self) -> None:
        """Maintenance task: re-run checks that have an interval before their results get old."""
        due = [
            c.name
            for c in self.checks.values()
            if c.interval and time.time() - getattr(self._results.get(c.name), "checked_at", 0) >= c.interval
        ]
        if due:
            self.run(due)


# -- built-in checks ---------------------------------------------------------------------------------


def disk_space_check(path: str = "/", min_free_percent: float = 10.0) -> Callable[[], dict[str, Any]]:
    """A check that fails when ``path``'s file system has less than ``min_free_percent`` free."""

    def check() -> dict[str, Any]:
        usage = shutil.disk_usage(path)
        free = usage.free / usage.total * 100 if usage.total else 0.0
        if free < min_free_percent:
            raise RuntimeError(f"{free:.1f}% free on {path}, below {min_free_percent:g}%")
        return {"path": path, "free_percent": round(free, 1)}

    return check


def memory_check(max_used_percent: float = 95.0) -> Callable[[], dict[str, Any]]:
    """A check that fails when the machine uses more than ``max_used_percent`` of its memory."""

    def check() -> dict[str, Any]:
        used = procfs.memory()[1]
        if used > max_used_percent:
            raise RuntimeError(f"{used:.1f}% of memory used, above {max_used_percent:g}%")
        return {"used_percent": used}

    return check


def sql_check(connect: Callable[[], Any], query: str = "SELECT 1") -> Callable[[], dict[str, Any]]:
    """Any DB-API driver: ``sql_check(lambda: psycopg.connect(DSN))``. Opens, queries, closes."""

    def check() -> dict[str, Any]:
        conn = connect()
        try:
            cursor = conn.cursor()
            cursor.execute(query)
            cursor.fetchall()
            return {"query": query}
        finally:
            conn.close()

    return check


# -- readiness state ------------------------------------------------------------------------------


_all_readiness: weakref.WeakSet[Readiness] = weakref.WeakSet()


def watch_sigterm_everywhere() -> None:
    """From a worker's main thread (gunicorn's post_worker_init): hook SIGTERM for every middleware.

    gthread workers never serve a request on the main thread, so the first-request hook cannot
    install the handler there; this can.
    """
    for readiness in list(_all_readiness):
        readiness.watch_sigterm()


class Readiness:
    """Started (the app may opt in to declaring it) and not draining (SIGTERM flips it at once)."""

    def __init__(self, ready_on_start: bool = True) -> None:
        self.started = ready_on_start
        self.draining = False
        self.hooked = False  # this process has our SIGTERM handler
        _all_readiness.add(self)
        on_new_process(self._forget_drain, component="readiness after fork")

    def _forget_drain(self) -> None:
        # A worker is forked from a master that may have been told to stop (gunicorn reloads): it
        # starts ready, and hooks SIGTERM in its own main thread.
        self.hooked = self.draining = False

    def watch_sigterm(self) -> None:
        """Chain a SIGTERM handler that marks this worker draining; only possible from the main thread."""
        if self.hooked or threading.current_thread() is not threading.main_thread():
            return
        self.hooked = True
        try:
            previous = signal.getsignal(signal.SIGTERM)

            def on_sigterm(signum: int, frame: Any) -> None:
                self.draining = True
                if callable(previous):
                    previous(signum, frame)
                elif previous == signal.SIG_DFL:
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    os.kill(os.getpid(), signal.SIGTERM)

            signal.signal(signal.SIGTERM, on_sigterm)
        except (ValueError, OSError) as exc:
            report_failure("readiness signal hook", exc)


def json_body(data: dict[str, Any]) -> bytes:
    """Always valid JSON: a check's details may hold NaN (json would write a bare NaN token) or a
    key json cannot write (it would raise, and the probe answer a 500)."""
    try:
        return json.dumps(data, separators=(",", ":"), default=str, allow_nan=False).encode()
    except (ValueError, TypeError):
        return json.dumps(json_safe(data), separators=(",", ":"), default=str, allow_nan=False).encode()

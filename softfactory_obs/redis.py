"""Cache hit/miss metrics for plain redis-py, a read-through ``cached`` decorator, and Redis INFO at scrape.

``instrument_redis(client)`` returns the same client with its ``execute_command`` (and its
pipelines' ``execute``) wrapped: reads count hits and misses (per key for MGET, per field for
HMGET), writes count puts, DEL/UNLINK count evictions, every command is timed, and errors are
counted by exception class and then raised unchanged: we never swallow the app's errors. After a
connection error or a timeout its calls fail fast (``RedisUnavailableError``, a
``redis.ConnectionError``) for a cool-down instead of waiting on Redis again.

The ``cache`` label is bounded: a fixed name, or a prefix map (``{"user:": "users"}``) chosen up
front; never the raw key.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._failures import report_failure
from .extras import missing

try:
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised in a venv without the extra
    raise missing("redis", "softfactory_obs.redis") from exc


from .metrics.families import Family
from .store.metrics import REGISTRY, Counter, Histogram, Registry

READS = {"GET", "GETEX", "GETDEL", "MGET", "HGET", "HMGET", "HGETALL"}
PUTS = {"SET", "SETEX", "PSETEX", "SETNX", "MSET", "MSETNX", "HSET", "HMSET", "HSETNX", "GETSET"}
EVICTIONS = {"DEL", "UNLINK"}
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
MARK = "_softfactory_obs_cache"


class CacheMetrics:
    """The cache families, one set per registry."""

    def __init__(self, registry: Registry) -> None:
        self.hits = Counter("cache_hits_total", "Cache reads that found a value", ["cache"], registry=registry)
        self.misses = Counter("cache_misses_total", "Cache reads that found nothing", ["cache"], registry=registry)
        self.puts = Counter("cache_puts_total", "Values written to the cache", ["cache"], registry=registry)
        self.evictions = Counter("cache_evictions_total", "Keys deleted from the cache", ["cache"], registry=registry)
        self.errors = Counter(
            "cache_errors_total", "Cache operations that raised", ["cache", "operation", "error"], registry=registry
        )
        self.bypassed = Counter(
            "cache_bypassed_total",
            "Cached calls that left Redis alone while it was failing (the function answered)",
            ["cache"],
            registry=registry,
        )
        self.duration = Histogram(
            "cache_operation_duration_seconds",
            "Time of each cache operation",
            ["cache", "operation"],
            buckets=OPERATION_BUCKETS,
            registry=registry,
        )


_metrics: dict[int, CacheMetrics] = {}


def cache_metrics(registry: Registry | None = None) -> CacheMetrics:
    """The cache hit/miss families of ``registry`` (one set per registry)."""
    registry = registry if registry is not None else REGISTRY
    found = _metrics.get(id(registry))
    if found is None:
        found = _metrics[id(registry)] = CacheMetrics(registry)
    return found


class _Namer:
    """Key -> cache label: the longest configured prefix that matches, else the default name."""

    def __init__(self, cache: str, prefixes: Mapping[str, str] | None) -> None:
        self.default = cache
        self.prefixes = sorted((prefixes or {}).items(), key=lambda kv: -len(kv[0]))

    def __call__(self, key: Any) -> str:
        if self.prefixes:
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
            for prefix, name in self.prefixes:
                if text.startswith(prefix):
                    return name
        return self.default


def _count(metrics: CacheMetrics, namer: _Namer, command: str, args: tuple[Any, ...], result: Any) -> None:
    if command in ("GET", "GETEX", "GETDEL", "HGET"):
        (metrics.misses if result is None else metrics.hits).labels(namer(args[0])).inc()
    elif command == "MGET":
        for key, value in zip(args, result or (), strict=False):
            (metrics.misses if value is None else metrics.hits).labels(namer(key)).inc()
    elif command == "HMGET":
        name = namer(args[0])
        for value in result or ():
            (metrics.misses if value is None else metrics.hits).labels(name).inc()
    elif command == "HGETALL":
        (metrics.hits if result else metrics.misses).labels(namer(args[0])).inc()
    elif command in ("MSET", "MSETNX"):
        for key in args[::2]:
            metrics.puts.labels(namer(key)).inc()
    elif command in PUTS:
        metrics.puts.labels(namer(args[0])).inc()
    elif command in EVICTIONS and isinstance(result, int) and result > 0:
        metrics.evictions.labels(namer(args[0])).inc(result)


def _operation(command: str) -> str:
    return command.lower() if command in READS or command in PUTS or command in EVICTIONS else "other"


class RedisUnavailableError(redis_py.ConnectionError):
    """What an instrumented client raises instead of calling Redis while its breaker is open: a
    ``redis.ConnectionError``, so code that handles Redis being down handles it unchanged."""


def instrument_redis(
    client: Any,
    cache: str = "default",
    *,
    prefixes: Mapping[str, str] | None = None,
    registry: Registry | None = None,
    cooldown: float | None = 5.0,
) -> Any:
    """Count this client's cache traffic; returns the same client. Instrumenting twice is a no-op.

    ``cooldown``: after a connection error or a timeout, the client's commands and pipelines raise
    ``RedisUnavailableError`` at once for that many seconds (counted in ``cache_bypassed_total``)
    rather than each wait out its timeouts and retries on a Redis that is down or hung; then one
    call tries Redis again, and its success closes the breaker. ``None`` turns this off.
    """
    if cooldown is not None:
        _check_seconds("cooldown", cooldown)
    if getattr(client, MARK, None) is not None:
        return client
    if inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
        # Wrapped, its coroutines would count as values read (every GET a hit) and time nothing.
        raise TypeError(
            f"client: expected a synchronous redis-py client (redis.Redis), got {type(client).__name__} "
            "from redis.asyncio"
        )
    calls = _Calls(cache_metrics(registry), _Namer(cache, prefixes), Breaker(cooldown))
    original = client.execute_command

    @functools.wraps(original)
    def execute_command(*args: Any, **options: Any) -> Any:
        return calls.command(original, args, options)

    original_pipeline = client.pipeline

    @functools.wraps(original_pipeline)
    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original_pipeline(*args, **kwargs)
        execute = pipe.execute
        pipe.execute = lambda *a, **kw: calls.pipeline(pipe, execute, a, kw)
        return pipe

    client.execute_command = execute_command
    client.pipeline = pipeline
    setattr(client, MARK, cache)
    return client


class _Calls:
    """What an instrumented client does around each command and pipeline."""

    def __init__(self, metrics: CacheMetrics, namer: _Namer, breaker: Breaker) -> None:
        self.metrics, self.namer, self.breaker = metrics, namer, breaker

    def _through_breaker(self, name: str, call: Callable[[], Any]) -> Any:
        breaker = self.breaker
        if not breaker.allow():
            _safely(lambda: self.metrics.bypassed.labels(name).inc())
            raise RedisUnavailableError(breaker.why())
        try:
            result = call()
        except Exception as exc:
            breaker.failed(exc)
            raise
        breaker.succeeded()
        return result

    def command(self, original: Callable[..., Any], args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        metrics, namer = self.metrics, self.namer
        command = str(args[0]).upper() if args else ""
        name = namer(args[1]) if len(args) > 1 else namer.default
        started = time.perf_counter()
        try:
            result = self._through_breaker(name, lambda: original(*args, **options))
        except RedisUnavailableError:
            raise
        except Exception as exc:
            error = type(exc).__name__
            _safely(lambda: metrics.errors.labels(name, _operation(command), error).inc())
            raise
        seconds = time.perf_counter() - started

        def record() -> None:
            _count(metrics, namer, command, args[1:], result)
            metrics.duration.labels(name, _operation(command)).observe(seconds)

        _safely(record)
        return result

    def pipeline(self, pipe: Any, execute: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        stack = [c.args if hasattr(c, "args") else c[0] for c in pipe.command_stack]
        name = self.namer(stack[0][1]) if stack and len(stack[0]) > 1 else self.namer.default
        results = self._through_breaker(name, lambda: execute(*args, **kwargs))

        def record() -> None:
            for cmd, res in zip(stack, results, strict=False):
                if not isinstance(res, Exception):
                    _count(self.metrics, self.namer, str(cmd[0]).upper(), tuple(cmd[1:]), res)

        _safely(record)
        return results


def _safely(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception as exc:  # counting must never break the app's Redis call
        report_failure("redis metrics", exc)


class Breaker:
    """Fail fast while Redis fails: after a connection error or a timeout, calls leave Redis alone
    for ``cooldown`` seconds; then one call tries it again (the others still stay away), and a
    success closes the breaker. Other errors (a bad command, a full memory) say nothing about
    reaching Redis and leave it closed."""

    def __init__(self, cooldown: float | None = 5.0) -> None:
        self.cooldown = cooldown  # None: never opens
        self._open_until = 0.0  # 0: closed
        self._lock = threading.Lock()
        self._error = ""  # what opened it, for the message of a call turned away

    def allow(self) -> bool:
        """Whether this call may use Redis (true for one trial call once the cool-down is over)."""
        if not self._open_until:
            return True
        now = time.monotonic()
        with self._lock:
            if now < self._open_until:
                return False
            self._open_until = now + (self.cooldown or 0.0)  # the others wait while this one tries
        return True

    def failed(self, exc: BaseException) -> None:
        """A call raised ``exc``: open the breaker when it says Redis cannot be reached; any other
        error is Redis answering, which closes it."""
        if self.cooldown is not None and isinstance(exc, (redis_py.ConnectionError, redis_py.TimeoutError, OSError)):
            self._error = f"{type(exc).__name__}: {exc}"
            self._open_until = time.monotonic() + self.cooldown
        else:
            self._open_until = 0.0

    def why(self) -> str:
        """Why a call was turned away, for its exception."""
        return (
            f"softfactory_obs: Redis failed ({self._error}); calls fail fast for {self.cooldown} s "
            "after a failure, then one tries again"
        )

    def succeeded(self) -> None:
        """A call reached Redis: close the breaker."""
        self._open_until = 0.0


def cached(
    client: Any,
    *,
    ttl: float,
    cache: str = "default",
    key: Callable[..., str] | None = None,
    serializer: Any = json,
    registry: Registry | None = None,
    cooldown: float = 5.0,
) -> Callable[[Callable[..., Any]], Any]:
    """Read-through cache: a hit returns the stored value; a miss (or Redis down) calls the function.

    The cache never makes a call fail that would succeed without it: Redis errors, a stored value
    ``serializer`` cannot read (another version's format, a truncated write: it is replaced) and
    arguments the default key cannot spell call the function, and are counted in
    ``cache_errors_total`` (operation ``get``, ``set``, ``decode`` or ``key``). ``serializer`` has
    ``dumps``/``loads`` (json by default); ``ttl`` is in seconds.

    Redis failing costs one call, not every call: the cache talks to Redis through a second client
    with the same settings and no retries (redis-py's default retries with backoff cost seconds per
    call), and after a connection error or timeout it leaves Redis alone for ``cooldown`` seconds
    (counted in ``cache_bypassed_total``), then tries once. A client without ``socket_timeout``
    can still hang that one call on a Redis that accepts and never answers: set one.
    """
    _check_seconds("ttl", ttl)
    _check_seconds("cooldown", cooldown)
    metrics = cache_metrics(registry)
    try:
        fast = _client_like(client)
    except Exception:  # a client of another shape (a cluster client, a stand-in): used as it is, retries and all
        fast = client
    breaker = Breaker(cooldown)
    ttl_ms = max(1, int(ttl * 1000))

    def error(operation: str, exc: Exception) -> None:
        _safely(lambda: metrics.errors.labels(cache, operation, type(exc).__name__).inc())

    def count(counter: Counter) -> None:
        _safely(lambda: counter.labels(cache).inc())

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        prefix = f"{fn.__module__}.{fn.__qualname__}:"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if key is not None:
                name = key(*args, **kwargs)  # the caller's own function: its errors are theirs
            else:
                try:
                    name = prefix + json.dumps([args, kwargs], default=str, sort_keys=True)
                except Exception as exc:  # e.g. a dict argument with str and int keys: sort_keys cannot order them
                    error("key", exc)
                    return fn(*args, **kwargs)
            if not breaker.allow():
                count(metrics.bypassed)
                return fn(*args, **kwargs)
            try:
                stored = fast.get(name)
            except Exception as exc:
                breaker.failed(exc)
                error("get", exc)
                return fn(*args, **kwargs)
            breaker.succeeded()
            if stored is not None:
                try:
                    value = serializer.loads(stored)
                except Exception as exc:
                    error("decode", exc)  # recomputed below, and the unreadable value replaced
                else:
                    count(metrics.hits)
                    return value
            else:
                count(metrics.misses)
            value = fn(*args, **kwargs)
            try:
                fast.set(name, serializer.dumps(value), px=ttl_ms)
            except Exception as exc:  # Redis down, or a value the serializer cannot write
                breaker.failed(exc)
                error("set", exc)
            else:
                count(metrics.puts)
            return value

        return wrapper

    return decorate


def _check_seconds(name: str, seconds: object) -> None:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name}: expected a number of seconds > 0, got {seconds!r}")


def _client_like(client: Any, **overrides: Any) -> Any:
    """A second client to the same server with ``client``'s settings, no retries, and ``overrides``."""
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(retry=Retry(NoBackoff(), 0), **overrides)
    kwargs.pop("retry_on_error", None)
    pool = client.connection_pool.__class__(connection_class=client.connection_pool.connection_class, **kwargs)
    return redis_py.Redis(connection_pool=pool)


def probe_client(client: Any, timeout: float = 0.5) -> Any:
    """A second client to the same server with short timeouts and no retries, for INFO and PING."""
    return _client_like(client, socket_timeout=timeout, socket_connect_timeout=timeout)


class RedisInfoCollector:
    """Scrape-time gauges from INFO, named as redis_exporter names them, so dashboards work."""

    def __init__(self, client: Any, cache: str = "default", timeout: float = 0.5) -> None:
        self.probe = probe_client(client, timeout)
        self.cache = cache

    def collect(self) -> Iterable[Family]:
        """Redis INFO as gauges at scrape time, with a short timeout; nothing when Redis is down."""
        up = Family("redis_up", "1 when the last INFO to Redis succeeded", "gauge", ["cache"])
        try:
            info = self.probe.info()
        except Exception:
            up.add([self.cache], 0)
            yield up
            return
        up.add([self.cache], 1)
        yield up
        for name, field, kind in (
            ("redis_keyspace_hits_total", "keyspace_hits", "counter"),
            ("redis_keyspace_misses_total", "keyspace_misses", "counter"),
            ("redis_evicted_keys_total", "evicted_keys", "counter"),
            ("redis_commands_processed_total", "total_commands_processed", "counter"),
            ("redis_connected_clients", "connected_clients", "gauge"),
            ("redis_memory_used_bytes", "used_memory", "gauge"),
        ):
            family = Family(name, f"Redis INFO {field}", kind, ["cache"])
            family.add([self.cache], float(info.get(field, 0)))
            yield family

    def ping(self) -> dict[str, Any]:
        """The health check: PING on the collector's own connection."""
        started = time.perf_counter()
        self.probe.ping()
        return {"ping_ms": round((time.perf_counter() - started) * 1000, 3)}

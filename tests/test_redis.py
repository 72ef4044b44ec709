"""Cache hit/miss metrics against a real redis-server, and what happens when it dies or hangs."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from helpers import call_wsgi, free_port, make_environ, samples
from servers import Gunicorn, RedisServer, get, scrape

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.redis import RedisUnavailableError, cached, instrument_redis
from softfactory_obs.store.metrics import Registry


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(server.url())
    c.flushdb()
    yield c
    c.close()


def one(registry: Registry, name: str, **labels: str) -> float:
    return samples(registry).get((name, tuple(sorted(labels.items()))), 0.0)


def test_reads_writes_and_deletes_are_counted(client: redis.Redis) -> None:
    registry = Registry()
    r = instrument_redis(client, "main", registry=registry)
    assert r is client and instrument_redis(client, "other", registry=registry) is client
    r.set("a", "1")
    r.mset({"b": "2", "c": "3"})
    assert r.get("a") == b"1" and r.get("zz") is None
    assert r.mget("a", "b", "nope") == [b"1", b"2", None]
    r.hset("h", mapping={"f1": "v"})
    assert r.hget("h", "f1") == b"v" and r.hget("h", "f2") is None
    assert r.hmget("h", "f1", "f2") == [b"v", None]
    assert r.hgetall("h") == {b"f1": b"v"} and r.hgetall("empty") == {}
    assert r.delete("a", "b", "nope") == 2
    assert one(registry, "cache_hits_total", cache="main") == 1 + 2 + 1 + 1 + 1
    assert one(registry, "cache_misses_total", cache="main") == 1 + 1 + 1 + 1 + 1
    assert one(registry, "cache_puts_total", cache="main") == 1 + 2 + 1
    assert one(registry, "cache_evictions_total", cache="main") == 2
    assert one(registry, "cache_operation_duration_seconds_count", cache="main", operation="get") == 2


def test_pipelines_and_prefix_map(client: redis.Redis) -> None:
    registry = Registry()
    r = instrument_redis(client, prefixes={"user:": "users", "sess:": "sessions"}, registry=registry)
    r.set("user:1", "x")
    pipe = r.pipeline()
    pipe.get("user:1").get("user:2").get("sess:9").get("other")
    assert pipe.execute() == [b"x", None, None, None]
    assert one(registry, "cache_hits_total", cache="users") == 1
    assert one(registry, "cache_misses_total", cache="users") == 1
    assert one(registry, "cache_misses_total", cache="sessions") == 1
    assert one(registry, "cache_misses_total", cache="default") == 1


def test_known_workload_gives_the_exact_hit_ratio(client: redis.Redis) -> None:
    registry = Registry()
    r = instrument_redis(client, registry=registry)
    for n in range(30):
        r.set(f"k{n}", n)
    for n in range(100):  # keys 0..29 exist: 30 % of the reads hit
        r.get(f"k{n % 100}")
    hits, misses = (
        one(registry, "cache_hits_total", cache="default"),
        one(registry, "cache_misses_total", cache="default"),
    )
    assert (hits, misses) == (30, 70)
    assert hits / (hits + misses) == 0.3


def test_cached_decorator_reads_through(client: redis.Redis) -> None:
    registry = Registry()
    calls = []

    @cached(client, ttl=60, cache="prices", registry=registry)
    def price(sku: str) -> dict[str, Any]:
        calls.append(sku)
        return {"sku": sku, "cents": 199}

    assert price("a") == price("a") == {"sku": "a", "cents": 199}
    assert calls == ["a"]
    assert one(registry, "cache_hits_total", cache="prices") == 1
    assert one(registry, "cache_misses_total", cache="prices") == 1
    assert one(registry, "cache_puts_total", cache="prices") == 1


def test_cached_replaces_a_value_it_cannot_read_and_keys_it_cannot_spell(client: redis.Redis) -> None:
    """Another version's format or a truncated value under the key, or arguments the default key
    cannot spell: the function answers (counted as errors), as it would without the cache."""
    registry = Registry()
    calls = []

    @cached(client, ttl=60, cache="prices", key=lambda sku: f"price:{sku}", registry=registry)
    def price(sku: str) -> dict[str, Any]:
        calls.append(sku)
        return {"sku": sku, "cents": 199}

    client.set("price:a", b"\xff{not json")
    assert price("a") == {"sku": "a", "cents": 199}
    assert one(registry, "cache_errors_total", cache="prices", operation="decode", error="UnicodeDecodeError") == 1
    assert json.loads(client.get("price:a") or b"") == {"sku": "a", "cents": 199}  # replaced
    assert price("a") == {"sku": "a", "cents": 199} and calls == ["a"]  # and read back: a hit
    assert one(registry, "cache_hits_total", cache="prices") == 1

    @cached(client, ttl=60, cache="mixed", registry=registry)
    def size(options: dict[Any, Any]) -> int:
        return len(options)

    assert size({1: "a", "b": 2}) == 2  # json.dumps(sort_keys=True) cannot order 1 and "b"
    assert one(registry, "cache_errors_total", cache="mixed", operation="key", error="TypeError") == 1

    @cached(client, ttl=60, cache="objects", registry=registry)
    def unserializable() -> object:
        return {1, 2}

    assert unserializable() == {1, 2}  # json cannot store a set: computed every time, never raised
    assert one(registry, "cache_errors_total", cache="objects", operation="set", error="TypeError") == 1


@pytest.mark.parametrize("ttl", [0, -5, float("nan"), float("inf"), "60", None, True])
def test_cached_rejects_a_ttl_that_is_not_a_positive_number_of_seconds(client: redis.Redis, ttl: Any) -> None:
    with pytest.raises(ValueError, match=r"ttl: expected a number of seconds > 0, got"):
        cached(client, ttl=ttl)


def test_an_asyncio_client_is_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"synchronous redis-py client.*redis\.asyncio"):
        instrument_redis(redis.asyncio.Redis(port=free_port()), registry=Registry())


def test_redis_down_app_keeps_serving_and_errors_are_counted() -> None:
    registry = Registry()
    port = free_port()  # nothing listens here
    dead = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=0.2)
    r = instrument_redis(dead, registry=registry)
    with pytest.raises(redis.ConnectionError):
        r.get("x")  # the app's own call fails exactly as it would without us
    assert one(registry, "cache_errors_total", cache="default", operation="get", error="ConnectionError") == 1

    @cached(dead, ttl=5, registry=registry)
    def compute() -> int:
        return 42

    assert compute() == 42  # falls back to the function


def _middleware_with_redis(url: str, critical: bool) -> tuple[ObservabilityMiddleware, Registry]:
    registry = Registry()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = ObservabilityMiddleware(
        app, registry=registry, auto_configure_logging=False, access_log=False, health_cache_seconds=0
    )
    mw.add_redis(redis.Redis.from_url(url), critical=critical, timeout=0.3)
    return mw, registry


def test_info_metrics_and_health_follow_the_server_up_down_and_back() -> None:
    with RedisServer() as srv:
        mw, registry = _middleware_with_redis(srv.url(), critical=True)
        assert one(registry, "redis_up", cache="default") == 1
        assert one(registry, "redis_commands_processed_total", cache="default") > 0
        assert call_wsgi(mw, make_environ(PATH_INFO="/ready")).status.startswith("200")
        port = srv.port
    # Killed: the scrape is still prompt, redis_up is 0, readiness fails (critical).
    t0 = time.perf_counter()
    assert one(registry, "redis_up", cache="default") == 0
    assert time.perf_counter() - t0 < 2.0
    assert call_wsgi(mw, make_environ(PATH_INFO="/ready")).status.startswith("503")
    assert call_wsgi(mw, make_environ(PATH_INFO="/health")).status.startswith("503")
    # Back on the same port: recovered without a restart.
    srv2 = RedisServer()
    srv2.port = port
    with srv2:
        assert one(registry, "redis_up", cache="default") == 1
        assert call_wsgi(mw, make_environ(PATH_INFO="/ready")).status.startswith("200")


def test_paused_redis_is_bounded_and_non_critical_only_degrades() -> None:
    with RedisServer() as srv:
        mw, registry = _middleware_with_redis(srv.url(), critical=False)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            resp = call_wsgi(mw, make_environ(PATH_INFO="/health"))
            assert time.perf_counter() - t0 < 2.0
            assert resp.status.startswith("200") and b'"degraded"' in resp.body
            t0 = time.perf_counter()
            assert one(registry, "redis_up", cache="default") == 0
            assert time.perf_counter() - t0 < 2.0
        finally:
            srv.proc.send_signal(signal.SIGCONT)


def test_garbage_speaking_server_gives_clear_errors() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.recv(1024)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        registry = Registry()
        r = instrument_redis(redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5), registry=registry)
        with pytest.raises(redis.RedisError):
            r.get("x")
        errors = {dict(lb)["error"] for (name, lb), _ in samples(registry).items() if name == "cache_errors_total"}
        assert errors and errors <= {"InvalidResponse", "ConnectionError", "ResponseError"}
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.gunicorn
def test_hit_ratio_is_exact_across_4_gunicorn_workers(tmp_path: Any, server: RedisServer) -> None:
    redis.Redis.from_url(server.url()).flushdb()
    env = {"SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "store"), "SOFTFACTORY_OBS_REDIS_URL": server.url()}
    with Gunicorn(tmp_path, workers=4, **env) as gunicorn:
        for _ in range(20):  # one miss fills the cache (10 s ttl), the other 19 hit, whichever worker answers
            assert get(gunicorn.port, "/api/products")[0] == 200
        metrics = scrape(gunicorn.port)
        summary = json.loads(get(gunicorn.port, "/api/metrics/summary")[1])
    assert summary["cache"]["products"] == {"hits": 19, "misses": 1, "hit_ratio": 0.95}
    hits = metrics[("cache_hits_total", (("cache", "products"),))]
    misses = metrics[("cache_misses_total", (("cache", "products"),))]
    assert (hits, misses) == (19, 1)
    assert metrics[("redis_up", (("cache", "products"),))] == 1


def test_auth_errors_are_counted_and_raised() -> None:
    with RedisServer() as srv:
        secured = redis.Redis(port=srv.port)
        secured.config_set("requirepass", "s3cret")
        registry = Registry()
        r = instrument_redis(redis.Redis(port=srv.port, socket_timeout=0.5), registry=registry)
        with pytest.raises(redis.AuthenticationError):
            r.get("x")
        errors = {dict(lb)["error"] for (name, lb), _ in samples(registry).items() if name == "cache_errors_total"}
        assert errors == {"AuthenticationError"}


def _cached_app(client: redis.Redis, registry: Registry, **options: Any) -> ObservabilityMiddleware:
    """A one-worker app whose answer comes through cached(): what a Redis outage must not slow down."""

    @cached(client, ttl=60, cache="pages", registry=registry, **options)
    def page(n: str) -> str:
        return f"page {n}"

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [page(environ["QUERY_STRING"]).encode()]

    return ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)


@pytest.mark.parametrize("outage", ["down", "hung"])
def test_a_redis_outage_costs_the_cache_one_call_not_every_call(outage: str) -> None:
    """With a client made as users make it (short socket timeouts, redis-py's default retries with
    backoff), 20 requests took 78 s with Redis down and 143 s with it hung (SIGSTOP)."""
    registry = Registry()
    with RedisServer() as srv:
        assert srv.proc is not None
        client = redis.Redis(port=srv.port, socket_timeout=0.3, socket_connect_timeout=0.3)
        mw = _cached_app(client, registry)
        assert call_wsgi(mw, make_environ(QUERY_STRING="0")).body == b"page 0"
        assert one(registry, "cache_puts_total", cache="pages") == 1  # the control: the cache was in use
        if outage == "hung":
            srv.proc.send_signal(signal.SIGSTOP)
        else:
            srv.__exit__()
        try:
            t0 = time.monotonic()
            bodies = [call_wsgi(mw, make_environ(QUERY_STRING=str(i))).body for i in range(1, 21)]
            spent = time.monotonic() - t0
        finally:
            if outage == "hung":
                srv.proc.send_signal(signal.SIGCONT)
    assert bodies == [f"page {i}".encode() for i in range(1, 21)]  # the answers did not change
    assert spent < 4.0, f"20 requests took {spent:.1f} s"
    assert one(registry, "cache_bypassed_total", cache="pages") >= 18  # Redis was left alone after one failure
    errors = {dict(lb)["error"] for (name, lb), _ in samples(registry).items() if name == "cache_errors_total"}
    assert errors and errors <= {"ConnectionError", "TimeoutError"}


def test_the_cache_tries_redis_again_after_the_cooldown_and_recovers() -> None:
    registry = Registry()
    port = free_port()
    client = redis.Redis(port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    mw = _cached_app(client, registry, cooldown=0.2)
    assert call_wsgi(mw, make_environ(QUERY_STRING="a")).body == b"page a"  # Redis down: the function answers
    srv = RedisServer()
    srv.port = port
    with srv:
        deadline = time.monotonic() + 30
        while samples(registry).get(("cache_puts_total", (("cache", "pages"),)), 0) < 1:
            assert time.monotonic() < deadline, "the cache never went back to Redis"
            assert call_wsgi(mw, make_environ(QUERY_STRING="a")).body == b"page a"
            time.sleep(0.05)
        assert call_wsgi(mw, make_environ(QUERY_STRING="a")).body == b"page a"
        assert one(registry, "cache_hits_total", cache="pages") >= 1  # served from Redis again


def test_cached_takes_a_client_of_another_shape_as_it_is() -> None:
    """A client without a connection pool to copy (a cluster client, a stand-in) still caches."""

    class DictClient:
        def __init__(self) -> None:
            self.data: dict[str, bytes] = {}

        def get(self, name: str) -> bytes | None:
            return self.data.get(name)

        def set(self, name: str, value: str | bytes, px: int) -> None:
            self.data[name] = value.encode() if isinstance(value, str) else value

    registry = Registry()
    store = DictClient()

    @cached(store, ttl=60, cache="plain", registry=registry)
    def square(n: int) -> int:
        return n * n

    assert square(3) == square(3) == 9
    assert one(registry, "cache_hits_total", cache="plain") == 1 and len(store.data) == 1


def test_an_instrumented_client_fails_fast_while_redis_is_down_and_recovers() -> None:
    """The app's own calls through instrument_redis: one failure pays the client's timeouts and
    retries; the next calls raise at once (a redis.ConnectionError the app already handles), until
    a trial call after the cool-down finds Redis back."""
    registry = Registry()
    with RedisServer() as srv:
        port = srv.port
        r = instrument_redis(
            redis.Redis(port=port, socket_timeout=0.3, socket_connect_timeout=0.3), registry=registry, cooldown=0.5
        )
        r.set("k", "v")
        assert r.get("k") == b"v"  # the control: reaching Redis
    with pytest.raises(redis.ConnectionError) as first:
        r.get("k")
    assert not isinstance(first.value, RedisUnavailableError)  # the first failure is Redis's own
    t0 = time.monotonic()
    for _ in range(20):
        with pytest.raises(RedisUnavailableError, match="calls fail fast"):
            r.get("k")
    with pytest.raises(RedisUnavailableError):
        r.pipeline().get("k").execute()
    assert time.monotonic() - t0 < 0.25 * 21  # each well under one socket timeout; no Redis call made
    assert one(registry, "cache_bypassed_total", cache="default") == 21
    again = RedisServer()
    again.port = port
    with again:
        deadline = time.monotonic() + 30
        while True:
            try:
                r.set("k", "back")
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the client never went back to Redis"
                time.sleep(0.05)
        assert r.get("k") == b"back"


def test_the_breaker_can_be_turned_off_and_a_bad_cooldown_is_refused() -> None:
    with pytest.raises(ValueError, match="cooldown: expected a number of seconds > 0"):
        instrument_redis(redis.Redis(port=free_port()), registry=Registry(), cooldown=0)
    registry = Registry()
    r = instrument_redis(
        redis.Redis(port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2), registry=registry, cooldown=None
    )
    for _ in range(3):
        with pytest.raises(redis.ConnectionError) as raised:
            r.get("k")
        assert not isinstance(raised.value, RedisUnavailableError)  # every call goes to Redis
    assert one(registry, "cache_errors_total", cache="default", operation="get", error="ConnectionError") == 3

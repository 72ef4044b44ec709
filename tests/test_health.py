"""Liveness, readiness, health checks, detail visibility and the telemetry guard."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from typing import Any

import pytest
from helpers import LogCapture, call_wsgi, make_environ, samples
from servers import Gunicorn
from servers import get as http_get

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.health import disk_space_check, memory_check, sanitise, sql_check
from softfactory_obs.store.metrics import Registry

TEXT = [("Content-Type", "text/plain")]


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", TEXT)
    return [b"app"]


def make(**options: Any) -> ObservabilityMiddleware:
    options.setdefault("auto_configure_logging", False)
    options.setdefault("access_log", False)
    return ObservabilityMiddleware(app, registry=Registry(), **options)


def get(mw: Any, path: str, **env: Any) -> tuple[int, dict[str, str], Any]:
    resp = call_wsgi(mw, make_environ(PATH_INFO=path, **env))
    headers = {k.lower(): v for k, v in resp.headers}
    body = json.loads(resp.body) if resp.body and "json" in headers.get("content-type", "") else resp.body
    return int(resp.status[:3]), headers, body


@pytest.mark.parametrize("path", ["/live", "/livez", "/api/metrics/live"])
def test_live_never_runs_checks(path: str) -> None:
    mw = make()
    calls = []
    mw.add_health_check("db", lambda: calls.append(1) or False)
    status, _, body = get(mw, path)
    assert status == 200 and body["alive"] is True and body["pid"] == os.getpid()
    assert calls == []


def test_ready_follows_critical_checks_and_start_up() -> None:
    mw = make(ready_on_start=False, health_cache_seconds=0)
    state = {"db": True}
    mw.add_health_check("db", lambda: state["db"])
    mw.add_health_check("cache", lambda: False, critical=False)
    assert get(mw, "/ready")[0] == 503  # not started yet
    mw.mark_ready()
    assert get(mw, "/readyz")[0] == 200  # a failing non-critical check does not matter here
    state["db"] = False
    status, _, body = get(mw, "/api/metrics/ready", REMOTE_ADDR="127.0.0.1")
    assert status == 503 and body["failing"] == ["db"]


def test_health_aggregates_healthy_degraded_unhealthy() -> None:
    mw = make(health_cache_seconds=0)
    state = {"critical": True, "optional": True}
    mw.add_health_check("critical", lambda: state["critical"])
    mw.add_health_check("optional", lambda: {"lag_seconds": 3} if state["optional"] else False, critical=False)
    status, _, body = get(mw, "/health", REMOTE_ADDR="127.0.0.1")
    assert (status, body["status"]) == (200, "healthy")
    assert body["checks"]["optional"]["details"] == {"lag_seconds": 3}
    assert body["service"] == "app" and body["uptime_seconds"] >= 0 and body["timestamp"].endswith("Z")
    state["optional"] = False
    assert get(mw, "/healthz")[2]["status"] == "degraded" and get(mw, "/healthz")[0] == 200
    state["critical"] = False
    status, _, body = get(mw, "/api/metrics/health")
    assert (status, body["status"]) == (503, "unhealthy")


def test_hung_check_is_reported_at_its_timeout_and_not_piled_up() -> None:
    mw = make(health_cache_seconds=0)
    release = threading.Event()
    started = []

    def hangs() -> bool:
        started.append(1)
        release.wait(30)
        return True

    mw.add_health_check("hangs", hangs, timeout=0.3)
    mw.add_health_check("quick", lambda: True, timeout=2.0)
    try:
        t0 = time.perf_counter()
        status, _, body = get(mw, "/health", REMOTE_ADDR="127.0.0.1")
        elapsed = time.perf_counter() - t0
        assert status == 503 and body["checks"]["hangs"]["error"] == "timed out after 0.3 s"
        assert body["checks"]["quick"]["status"] == "pass"
        assert elapsed < 2.0  # bounded by the hung check's own timeout, not by the hang
        for _ in range(5):
            get(mw, "/health")
        assert len(started) == 1  # still running: not started again
    finally:
        release.set()


def test_raising_check_is_sanitised() -> None:
    mw = make(health_cache_seconds=0)

    def leaks() -> None:
        raise ConnectionError("could not connect to postgres://app:hunter2@db:5432/x password=hunter2")

    mw.add_health_check("db", leaks)
    _, _, body = get(mw, "/health", REMOTE_ADDR="127.0.0.1")
    error = body["checks"]["db"]["error"]
    assert error.startswith("ConnectionError: ") and "hunter2" not in error
    assert sanitise(ValueError("token=abc def")) == "ValueError: token=*** def"


def test_details_json_cannot_write_as_they_are_still_give_valid_json() -> None:
    mw = make(health_cache_seconds=0)
    mw.add_health_check("replica", lambda: {"lag_seconds": float("nan"), ("shard", 1): "up", "ok": True})
    resp = call_wsgi(mw, make_environ(PATH_INFO="/health", REMOTE_ADDR="127.0.0.1"))
    assert resp.status.startswith("200")  # the tuple key made json raise: the probe answered 500

    def strict(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")  # json.loads takes a bare NaN; JSON does not

    body = json.loads(resp.body, parse_constant=strict)
    assert body["checks"]["replica"]["details"] == {"lag_seconds": "nan", "('shard', 1)": "up", "ok": True}


def test_results_are_cached_for_the_ttl() -> None:
    mw = make(health_cache_seconds=60)
    calls = []
    mw.add_health_check("db", lambda: calls.append(1) or True)
    for _ in range(10):
        get(mw, "/health")
    assert len(calls) == 1
    body = get(mw, "/health", REMOTE_ADDR="127.0.0.1")[2]
    assert body["checks"]["db"]["age_seconds"] >= 0


def test_details_only_for_loopback_token_or_allowed_networks() -> None:
    open_mw = make(health_cache_seconds=0)
    open_mw.add_health_check("db", lambda: {"pool": 5})
    assert "details" in get(open_mw, "/health", REMOTE_ADDR="127.0.0.1")[2]["checks"]["db"]
    assert "details" not in get(open_mw, "/health", REMOTE_ADDR="203.0.113.5")[2]["checks"]["db"]
    guarded = make(health_cache_seconds=0, telemetry_token="s3cret", telemetry_allow=("10.0.0.0/8",))
    guarded.add_health_check("db", lambda: {"pool": 5})
    assert "details" not in get(guarded, "/health", REMOTE_ADDR="127.0.0.1")[2]["checks"]["db"]
    assert "details" in get(guarded, "/health", REMOTE_ADDR="10.1.1.1")[2]["checks"]["db"]
    assert (
        "details"
        in get(guarded, "/health", REMOTE_ADDR="203.0.113.5", HTTP_AUTHORIZATION="Bearer s3cret")[2]["checks"]["db"]
    )


def test_ietf_health_json_when_asked() -> None:
    mw = make(health_cache_seconds=0, service_name="shop", service_version="1.4")
    mw.add_health_check("redis", lambda: True)
    mw.add_health_check("search", lambda: False, critical=False)
    status, headers, body = get(mw, "/health", HTTP_ACCEPT="application/health+json")
    assert headers["content-type"] == "application/health+json"
    assert (status, body["status"], body["serviceId"], body["version"]) == (200, "warn", "shop", "1.4")
    assert body["checks"]["redis:responseTime"][0]["status"] == "pass"
    assert body["checks"]["search:responseTime"][0]["observedUnit"] == "ms"


def test_head_and_methods() -> None:
    mw = make()
    status, headers, body = get(mw, "/live", REQUEST_METHOD="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, _ = get(mw, "/health", REQUEST_METHOD="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_metrics_guarded_by_token_and_network_probes_stay_open(logs: LogCapture) -> None:
    mw = make(telemetry_token="s3cret", telemetry_allow=("10.0.0.0/8", "127.0.0.1/32"))
    assert get(mw, "/metrics", REMOTE_ADDR="10.0.0.7")[0] == 401
    status, headers, _ = get(mw, "/metrics", REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer wrong")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert get(mw, "/metrics", REMOTE_ADDR="203.0.113.9", HTTP_AUTHORIZATION="Bearer s3cret")[0] == 403
    assert get(mw, "/metrics", REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer s3cret")[0] == 200
    assert get(mw, "/metrics", REMOTE_ADDR="10.0.0.7", QUERY_STRING="token=s3cret")[0] == 401  # header only
    assert get(mw, "/live", REMOTE_ADDR="203.0.113.9")[0] == 200
    assert get(mw, "/ready", REMOTE_ADDR="203.0.113.9")[0] == 200
    refused = [r for r in logs.lines() if r["logger"] == "softfactory_obs.security"]
    assert [r["status"] for r in refused] == [401, 401, 403, 401]
    assert all(r["request_id"] for r in refused) and "s3cret" not in logs.raw()


@pytest.mark.parametrize("metrics", [True, False], ids=["with-metrics", "metrics-off"])
def test_readiness_flips_on_sigterm_before_exit(metrics: bool) -> None:
    # The SIGTERM hook belongs to readiness, not to the metrics' maintenance thread: it must not
    # depend on metrics being on (it did: metrics=False never hooked SIGTERM).
    mw = make(metrics=metrics)
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        assert get(mw, "/ready")[0] == 200  # the first request hooks SIGTERM (main thread)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        status, _, body = get(mw, "/ready")
        assert (status, body["reason"]) == (503, "shutting down")
        assert seen == [signal.SIGTERM]  # the server's own handler still ran
        assert get(mw, "/live")[0] == 200
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_built_in_checks(tmp_path: Any) -> None:
    assert disk_space_check(str(tmp_path), min_free_percent=0)()["free_percent"] >= 0
    with pytest.raises(RuntimeError, match="below 101%"):
        disk_space_check(str(tmp_path), min_free_percent=101)()
    assert "used_percent" in memory_check(100)()
    with pytest.raises(RuntimeError, match="above 0%"):
        memory_check(0)()
    assert sql_check(lambda: sqlite3.connect(str(tmp_path / "x.db")))() == {"query": "SELECT 1"}
    with pytest.raises(sqlite3.OperationalError):
        sql_check(lambda: sqlite3.connect(str(tmp_path / "x.db")), "SELECT nope FROM missing")()


def test_bad_check_registrations_are_refused() -> None:
    mw = make()
    mw.add_health_check("db", lambda: True)
    with pytest.raises(ValueError, match="already registered"):
        mw.add_health_check("db", lambda: True)
    with pytest.raises(ValueError, match="use letters"):
        mw.add_health_check("bad name", lambda: True)
    for timeout in (0, -1, float("nan"), float("inf"), "2"):  # inf would overflow the probe's wait
        with pytest.raises(ValueError, match="timeout must be > 0 seconds and finite"):
            mw.add_health_check("t", lambda: True, timeout=timeout)  # type: ignore[arg-type]
    for interval in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="interval must be None or > 0 seconds"):
            mw.add_health_check("i", lambda: True, interval=interval)
    assert list(mw.health_checks.checks) == ["db"]  # nothing half-registered


@pytest.mark.gunicorn
def test_health_under_gunicorn_hung_and_failing_checks(tmp_path: Any) -> None:
    flag = tmp_path / "fail"
    tests_dir = os.path.dirname(__file__)
    with Gunicorn(
        tmp_path,
        app="health_app:app",
        workers=2,
        HEALTH_FLAG_FILE=str(flag),
        PYTHONPATH=f"{tests_dir}{os.pathsep}{os.path.dirname(tests_dir)}",
    ) as server:
        t0 = time.perf_counter()
        status, body = http_get(server.port, "/health")
        assert time.perf_counter() - t0 < 3.0  # the hung check is cut at its 0.5 s timeout
        data = json.loads(body)
        assert (status, data["status"]) == (200, "degraded")
        assert data["checks"]["hangs"]["error"] == "timed out after 0.5 s"
        assert http_get(server.port, "/ready")[0] == 200
        flag.write_text("x")
        time.sleep(1.1)  # past the 1 s result cache
        assert http_get(server.port, "/ready")[0] == 503
        assert http_get(server.port, "/health")[0] == 503
        flag.unlink()
        time.sleep(1.1)
        assert http_get(server.port, "/ready")[0] == 200


@pytest.mark.gunicorn
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_readiness_flips_on_sigterm_under_gunicorn_before_the_worker_exits(tmp_path: Any, worker_class: str) -> None:
    tests_dir = os.path.dirname(__file__)
    server = Gunicorn(
        tmp_path,
        app="drain_app:app",
        workers=1,
        GUNICORN_CMD_ARGS=f"--worker-class {worker_class}",
        PYTHONPATH=f"{tests_dir}{os.pathsep}{os.path.dirname(tests_dir)}",
    )
    with server:
        assert server.proc is not None
        result: list[tuple[int, bytes]] = []
        in_flight = threading.Thread(target=lambda: result.append(http_get(server.port, "/slow?s=1.5")))
        in_flight.start()
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)  # graceful stop: the in-flight request still finishes
        in_flight.join(10)
        server.proc.wait(timeout=15)
    assert result and result[0][0] == 200
    assert json.loads(result[0][1]) == {"draining": True}


def test_app_ready_metric_follows_readiness() -> None:
    registry = Registry()
    mw = ObservabilityMiddleware(
        app,
        registry=registry,
        auto_configure_logging=False,
        access_log=False,
        ready_on_start=False,
        health_cache_seconds=0,
    )
    assert samples(registry)[("app_ready", ())] == 0
    mw.mark_ready()
    assert samples(registry)[("app_ready", ())] == 1


def test_a_hung_check_costs_one_timeout_not_one_per_probe() -> None:
    """F5: after the first probe gave up on a hung check, probes answer at once from the known
    state while that one run stays in flight; the scrape never waits; the answer moves on as soon
    as the check does."""
    release = threading.Event()
    started: list[float] = []

    def hangs() -> bool:
        started.append(time.monotonic())
        release.wait(60)
        return True

    mw = make(health_cache_seconds=0.05)
    mw.add_health_check("db", hangs, timeout=2.0)
    try:
        t0 = time.monotonic()
        status, _, body = get(mw, "/ready", REMOTE_ADDR="127.0.0.1")
        assert status == 503 and body["failing"] == ["db"], body
        assert time.monotonic() - t0 >= 1.9  # the control: the first probe did wait the check's timeout
        t1 = time.monotonic()
        for path in ("/ready", "/health", "/ready", "/metrics", "/ready", "/health", "/ready", "/metrics"):
            assert get(mw, path, REMOTE_ADDR="127.0.0.1")[0] in (200, 503)
        # Eight probes waiting 2 s each would take 16 s; from the known state they take none of it.
        assert time.monotonic() - t1 < 2.0
        assert len(started) == 1  # one run in flight, never a pile of hung threads
        assert samples(mw.registry)[("app_ready", ())] == 0.0
        release.set()
        deadline = time.monotonic() + 30
        while get(mw, "/ready", REMOTE_ADDR="127.0.0.1")[0] != 200:
            assert time.monotonic() < deadline, "the check answered, /ready never followed"
            time.sleep(0.05)
    finally:
        release.set()


@pytest.mark.gunicorn
def test_live_stays_fast_while_8_probers_poll_ready_on_a_hung_check(tmp_path: Any) -> None:
    """F5 under gunicorn: 4 sync workers, a critical check that hangs (timeout 1 s), 8 load
    balancers polling /ready every 0.5 s. At db2d9f8 every /ready waited the full second, the
    workers were always busy, and 5 of 10 /live probes hit the kubelet's 1 s timeout."""
    tests_dir = os.path.dirname(__file__)
    pythonpath = f"{tests_dir}{os.pathsep}{os.path.dirname(tests_dir)}"
    results: dict[str, list[tuple[int | str, float]]] = {"ready": [], "live": []}
    stop = threading.Event()

    def probe(path: str, every: float, timeout: float, into: list[tuple[int | str, float]]) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                status: int | str = http_get(server.port, path, timeout=timeout)[0]
            except OSError as exc:  # the probe's own timeout
                status = type(exc).__name__
            into.append((status, time.perf_counter() - t0))
            stop.wait(every)

    with Gunicorn(tmp_path, app="hang_app:app", workers=4, PYTHONPATH=pythonpath) as server:
        probers = [threading.Thread(target=probe, args=("/ready", 0.5, 10.0, results["ready"])) for _ in range(8)]
        for thread in probers:
            thread.start()
        deadline = time.monotonic() + 60
        # Each worker's first probe waits out the check's timeout (nothing is known yet); measure after.
        while len(results["ready"]) < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        probers.append(threading.Thread(target=probe, args=("/live", 0.25, 1.0, results["live"])))
        probers[-1].start()
        while len(results["live"]) < 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        for thread in probers:
            thread.join()
    live = results["live"]
    ready = results["ready"]
    assert len(live) >= 30 and len(ready) >= 40, (len(live), len(ready))
    assert {status for status, _ in ready} == {503}  # the control: the check hung all along
    assert {status for status, _ in live} == {200}, live  # none timed out
    slow_live = sorted(seconds for _, seconds in live)[int(len(live) * 0.99) - 1]
    assert slow_live < 0.5, f"/live p99 {slow_live * 1000:.0f} ms"  # far from the 1 s timeout
    # Only each worker's first probe waits out the check's timeout (and those queued behind it on
    # a busy worker); the rest answer from the known state.
    assert sum(seconds >= 0.9 for _, seconds in ready) <= 8, sorted(s for _, s in ready)[-10:]

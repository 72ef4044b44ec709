"""The JSON summary and errors endpoints agree with /metrics, in-process and across gunicorn workers."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import call_wsgi, make_environ, samples
from servers import Gunicorn, get, scrape

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.metrics import summary
from softfactory_obs.metrics.summary import History, human, quantile
from softfactory_obs.store.metrics import Gauge, Registry


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    status = "500 Internal Server Error" if environ["PATH_INFO"] == "/fail" else "200 OK"
    if environ["PATH_INFO"] == "/missing":
        status = "404 Not Found"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"x"]


def fetch(mw: Any, path: str) -> dict[str, Any]:
    resp = call_wsgi(mw, make_environ(PATH_INFO=path))
    assert resp.status == "200 OK"
    return json.loads(resp.body)  # type: ignore[no-any-return]


@pytest.mark.parametrize(("q", "expected"), [(0.5, 0.15), (0.9, 0.19), (1.0, 0.2)])
def test_quantile_interpolates_like_histogram_quantile(q: float, expected: float) -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (float("inf"), 10.0)]
    assert quantile(q, buckets) == pytest.approx(expected)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 0.0), (float("inf"), 5.0)]) == 0.1  # in +Inf: the highest finite bound


def test_human_uptime() -> None:
    assert human(3725) == "01h 02m 05s"
    assert human(90061) == "1d 01h 01m 01s"


def test_summary_and_errors_agree_with_the_store() -> None:
    registry = Registry()
    Gauge("active_users", "Users online", registry=registry).set(7)
    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    for path, n in (("/ok", 6), ("/fail", 2), ("/missing", 1)):
        for _ in range(n):
            call_wsgi(mw, make_environ(PATH_INFO=path))
    summary = fetch(mw, "/api/metrics/summary")
    assert summary["application"] == {"requests_total": 9, "errors_total": 2, "error_rate_percent": 22.222}
    assert summary["endpoints"]["/ok"]["count"] == 6
    assert summary["endpoints"]["/fail"]["error_percent"] == 100.0
    assert summary["endpoints"]["/ok"]["p50_ms"] is not None
    assert summary["gauges"] == {"active_users": {"value": 7.0}}
    assert summary["uptime"]["seconds"] > 0
    assert summary["queue_wait"] is None  # queue_time_header is off
    store = samples(registry)
    assert summary["application"]["requests_total"] == sum(
        v for (name, _), v in store.items() if name == "http_requests_total"
    )
    errors = fetch(mw, "/api/metrics/errors")
    assert errors["lifetime"]["by_status"] == {"404": 1, "500": 2}
    assert errors["lifetime"]["by_endpoint"] == {"/fail": 2, "__unmatched__": 1}
    assert errors["last_1m"]["covered_seconds"] >= 0


def test_summary_shows_the_wait_for_a_free_worker() -> None:
    registry = Registry()
    mw = ObservabilityMiddleware(
        app,
        registry=registry,
        auto_configure_logging=False,
        access_log=False,
        queue_time_header="X-Request-Start",
        default_labels={"zone": "a"},
    )
    assert fetch(mw, "/api/metrics/summary")["queue_wait"] is None  # on, nothing stamped yet
    for waited in (0.02, 0.02, 0.02, 0.3):
        call_wsgi(mw, make_environ(PATH_INFO="/ok", HTTP_X_REQUEST_START=f"t={time.time() - waited:.3f}"))
    wait = fetch(mw, "/api/metrics/summary")["queue_wait"]
    assert wait["requests"] == 4
    assert 10 <= wait["p50_ms"] <= 25  # three of four in the (0.01, 0.025] bucket
    assert 250 <= wait["p99_ms"] <= 500


@pytest.mark.gunicorn
def test_summary_matches_metrics_across_workers(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=3, SOFTFACTORY_OBS_METRICS_DIR=str(tmp_path / "store")) as server:
        paths = ["/api/users/1"] * 30 + ["/api/error"] * 6 + ["/api/products"] * 12
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda p: get(server.port, p), paths))
        metrics = scrape(server.port)
        status, body = get(server.port, "/api/metrics/summary")
        summary = json.loads(body)
        errors = json.loads(get(server.port, "/api/metrics/errors")[1])
    assert status == 200
    total = sum(v for (name, _), v in metrics.items() if name == "http_requests_total")
    assert summary["application"]["requests_total"] == total == 48
    assert summary["application"]["errors_total"] == 6
    assert summary["endpoints"]["/api/users/{user_id}"]["count"] == 30
    assert errors["lifetime"]["by_endpoint"] == {"/api/error": 6}
    assert len(summary["system"]["workers"]) >= 1


def test_recent_windows_count_only_what_happened_inside_them() -> None:
    registry = Registry()
    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    history = History(registry, "")  # sampled only by this test
    for _ in range(5):
        call_wsgi(mw, make_environ(PATH_INFO="/fail"))
    first = history.sample()
    assert history.window(60, first)[0] == {}  # nothing since the only sample
    time.sleep(1.05)  # samples are at least a second apart
    for _ in range(3):
        call_wsgi(mw, make_environ(PATH_INFO="/fail"))
    later = history.sample()
    window, covered = history.window(60, later)
    assert window == {("/fail", "500"): 3.0} and covered >= 1.0
    assert later[("/fail", "500")] == 8


def test_history_samples_every_interval_only_while_the_summary_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A background sample merges the whole store, in every worker: every interval only while the
    # summary is read, else once a minute (so a first read still has its windows).
    registry = Registry()
    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    history = History(registry, "")
    merges: list[int] = []
    snapshot = registry.snapshot
    monkeypatch.setattr(registry, "snapshot", lambda *a, **k: merges.append(1) or snapshot(*a, **k))
    start = time.monotonic()

    def at(seconds: float) -> None:
        monkeypatch.setattr(time, "monotonic", lambda: start + seconds)

    history.sample_in_background()  # nothing kept yet: sampled
    at(5)
    history.sample_in_background()  # unread, a sample 5 s old: not sampled
    assert len(merges) == 1
    call_wsgi(mw, make_environ(PATH_INFO="/fail"))
    at(6)
    first = history.sample()  # a read of the summary
    call_wsgi(mw, make_environ(PATH_INFO="/fail"))
    at(11)
    history.sample_in_background()  # read 5 s ago: sampled
    assert len(merges) == 3
    now_totals = {("/fail", "500"): first[("/fail", "500")] + 1}
    assert history.window(1, now_totals)[0] == {}  # the background sample saw the second request
    assert history.window(60, now_totals)[0] != {}  # (older samples did not)
    at(6 + summary.WATCHED_SECONDS + 1)
    history.sample_in_background()  # unread for long, last sample over a minute old: sampled
    at(6 + summary.WATCHED_SECONDS + 6)
    history.sample_in_background()  # unread, last sample 5 s old: not sampled
    assert len(merges) == 4

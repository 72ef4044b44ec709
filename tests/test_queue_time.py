"""http_request_queue_seconds: the proxy's X-Request-Start stamp against the worker's clock."""

from __future__ import annotations

import http.client
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import call_wsgi, make_environ, samples, wrap
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import Gunicorn, scrape

from softfactory_obs import Settings
from softfactory_obs.metrics.queue_time import request_start
from softfactory_obs.store.metrics import Registry

NOW = 1_763_800_000.25  # 2025-11-22, in seconds


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("t=1763800000.250", NOW),  # nginx's ${msec}
        ("1763800000250", NOW),  # milliseconds (Heroku)
        ("t=1763800000250000", NOW),  # microseconds
        ("1763800000250000000", NOW),  # nanoseconds
        ("1763800000.25", NOW),
        ("t=1763800000", 1_763_800_000.0),
        (" t=1763800000.250 ", NOW),
    ],
)
def test_stamps_in_every_unit(value: str, seconds: float) -> None:
    assert request_start(value) == pytest.approx(seconds, abs=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(min_value=1_000_000_000.0, max_value=7_000_000_000.0),
    st.sampled_from([1, 1_000, 1_000_000]),
    st.booleans(),
)
def test_any_stamp_of_this_century_reads_back(seconds: float, per_second: int, prefixed: bool) -> None:
    """Whole units (as proxies write them: nginx's seconds with 3 decimals, integer ms or µs) read
    back as the same moment; the unit is never mistaken for another."""
    if per_second == 1:
        text = f"{seconds:.3f}"
        expected = float(text)
    else:
        whole = int(seconds * per_second)
        text, expected = str(whole), whole / per_second
    parsed = request_start(("t=" if prefixed else "") + text)
    assert parsed == pytest.approx(expected, rel=0, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "t=",
        "t=abc",
        "nan",
        "inf",
        "1e12",
        "-1763800000",
        "1_763_800_000",
        "0x1763800000",
        "t=1763800000.",
        "\uff11\uff17\uff16\uff13\uff18\uff10\uff10\uff10\uff10\uff10",  # fullwidth digits: str.isdigit() says yes
        "12345",  # a duration, not a point in time
        "1" * 20,  # longer than nanoseconds
        "t=1763800000.250 t=1763800001",
        None,
        1763800000,
        b"1763800000",
    ],
)
def test_anything_else_is_no_stamp(value: Any) -> None:
    assert request_start(value) is None


def queue_samples(registry: Registry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {k: v for k, v in samples(registry).items() if k[0].startswith("http_request_queue_seconds")}


def observed(registry: Registry, **labels: str) -> tuple[float, float]:
    """(count, sum) of the queue histogram's series with these labels; (0, 0) when absent."""
    found = queue_samples(registry)
    key = tuple(sorted(labels.items()))
    return (
        found.get(("http_request_queue_seconds_count", key), 0.0),
        found.get(("http_request_queue_seconds_sum", key), 0.0),
    )


def test_wait_observed_from_the_stamp() -> None:
    registry = Registry()
    app = wrap(hello, registry=registry, queue_time_header="X-Request-Start")
    arrived = time.time() - 0.3
    call_wsgi(app, make_environ(HTTP_X_REQUEST_START=f"t={arrived:.3f}"))
    count, total = observed(registry)
    assert count == 1
    assert 0.29 <= total < 2.0
    found = queue_samples(registry)
    assert found[("http_request_queue_seconds_bucket", (("le", "0.25"),))] == 0
    assert found[("http_request_queue_seconds_bucket", (("le", "0.5"),))] == 1
    call_wsgi(app, make_environ(HTTP_X_REQUEST_START=str(int(time.time() * 1000))))  # ms, as Heroku sends
    assert observed(registry)[0] == 2


def test_stamps_that_are_not_this_requests_arrival_are_left_out() -> None:
    registry = Registry()
    app = wrap(hello, registry=registry, queue_time_header="X-Request-Start")
    now = time.time()
    for value in ("garbage", f"t={now + 30:.3f}", f"t={now - 7200:.3f}", "t=1763800000.250.1"):
        assert call_wsgi(app, make_environ(HTTP_X_REQUEST_START=value)).status == "200 OK"
    call_wsgi(app, make_environ())  # no header
    assert observed(registry) == (0, 0)
    # The proxy's clock a little ahead of ours: a request that did not wait.
    call_wsgi(app, make_environ(HTTP_X_REQUEST_START=f"t={time.time() + 0.5:.3f}"))
    assert observed(registry) == (1, 0)


def test_off_by_default_and_skipped_requests_are_not_observed() -> None:
    registry = Registry()
    stamp = f"t={time.time():.3f}"
    call_wsgi(wrap(hello, registry=registry), make_environ(HTTP_X_REQUEST_START=stamp))
    assert queue_samples(registry) == {}
    registry = Registry()
    app = wrap(
        hello,
        registry=registry,
        queue_time_header="X-Queue-Start",
        skip_paths=("/internal",),
        default_labels={"region": "eu"},
    )
    call_wsgi(app, make_environ(PATH_INFO="/internal", HTTP_X_QUEUE_START=stamp))
    call_wsgi(app, make_environ(HTTP_X_REQUEST_START=stamp))  # not the configured header
    assert observed(registry, region="eu") == (0, 0)
    call_wsgi(app, make_environ(HTTP_X_QUEUE_START=stamp))
    assert observed(registry, region="eu")[0] == 1


def test_setting_is_checked() -> None:
    assert (
        Settings.from_env({"SOFTFACTORY_OBS_QUEUE_TIME_HEADER": "X-Request-Start"}).queue_time_header
        == "X-Request-Start"
    )
    with pytest.raises(ValueError, match="queue_time_header: expected an HTTP header name"):
        Settings(queue_time_header="X Request Start")


def _request(port: int, path: str, headers: dict[str, str], results: list[int]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        results.append(resp.status)
    finally:
        conn.close()


def test_gunicorn_backlog_wait_is_seen(tmp_path: Path) -> None:
    """Two sync workers busy for 1.2 s: a third request waits in the listen backlog, which no
    timer inside a worker sees and the proxy's stamp does."""
    with Gunicorn(tmp_path, workers=2, SOFTFACTORY_OBS_QUEUE_TIME_HEADER="X-Request-Start") as g:
        results: list[int] = []
        busy = [
            threading.Thread(target=_request, args=(g.port, "/api/slow?seconds=1.2", {}, results)) for _ in range(2)
        ]
        for thread in busy:
            thread.start()
        time.sleep(0.4)  # both workers have taken theirs
        stamp = {"X-Request-Start": f"t={time.time():.3f}"}
        _request(g.port, "/api/users/7", stamp, results)
        for thread in busy:
            thread.join()
        assert results == [200, 200, 200]
        metrics = scrape(g.port)
        count = sum(v for (name, _), v in metrics.items() if name == "http_request_queue_seconds_count")
        waited = sum(v for (name, _), v in metrics.items() if name == "http_request_queue_seconds_sum")
        assert count == 1
        assert 0.5 <= waited < 5.0  # about 0.8 s

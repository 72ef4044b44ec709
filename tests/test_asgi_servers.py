"""The ASGI front under real multi-process servers, with nothing configured: uvicorn --workers,
gunicorn with uvicorn's worker class (the README's FastAPI recipe), hypercorn --workers. N
requests give N distinct ids, every scrape counts exactly N whichever worker answers, the route
template is the endpoint, and the access lines are JSON with the response's id."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from servers import (
    NOT_SERVED,
    ROOT,
    Command,
    Gunicorn,
    Server,
    exact_under_load,
    fetch_id_retrying,
    get,
    scrape,
    scrape_until,
    served,
    uvicorn,
)

PATH = f"{ROOT / 'tests'}{os.pathsep}{ROOT}"
USER = "/users/{user_id}"

SERVERS: dict[str, Callable[[Path], Server]] = {
    "uvicorn-workers": lambda tmp: Command(
        tmp,
        "uvicorn",
        [sys.executable, "-m", "uvicorn", "--port", "{port}", "--host", "127.0.0.1", "--workers", "3",
         "--no-access-log", "asgi_app:app"],
        PYTHONPATH=PATH,
    ),
    "gunicorn-uvicorn-worker": lambda tmp: Gunicorn(
        tmp, "asgi_app:app", workers=3, PYTHONPATH=PATH, GUNICORN_CMD_ARGS="-k uvicorn_worker.UvicornWorker"
    ),
    "hypercorn-workers": lambda tmp: Command(
        tmp,
        "hypercorn",
        [sys.executable, "-m", "hypercorn", "--bind", "127.0.0.1:{port}", "--workers", "2", "asgi_app:app"],
        PYTHONPATH=PATH,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(SERVERS))
def test_asgi_servers_count_exactly_with_distinct_ids(tmp_path: Path, name: str) -> None:
    with SERVERS[name](tmp_path) as server:
        # ?block holds a worker's event loop for 20 ms, so the other workers take connections too.
        ids = exact_under_load(server, lambda n: f"/users/{n + 1}?block=0.02", USER)
        assert get(server.port, "/health")[0] == 200
        lines = server.log_lines(wait_for=len(ids))
    assert all(ids) and len(set(ids)) == len(ids) == 120
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access" and x["path"].startswith("/users/")]
    assert sorted(x["request_id"] for x in access) == sorted(ids)
    assert all(x["status"] == 200 and x["endpoint"] == USER and x["service"] == "asgi-shop" for x in access)
    assert len({x["pid"] for x in access}) >= 2, "one worker served everything: the test means nothing"


def test_websockets_under_uvicorn_workers_are_counted_and_carry_ids(tmp_path: Path) -> None:
    from websockets.exceptions import InvalidStatus  # noqa: PLC0415
    from websockets.sync.client import connect  # noqa: PLC0415

    with uvicorn(tmp_path, "--workers", "2") as server:
        url = f"ws://127.0.0.1:{server.port}/ws/lobby"
        for n in range(6):
            with connect(url, additional_headers={"X-Request-Id": f"ws-{n}"}) as ws:
                assert ws.response.headers["X-Request-Id"] == f"ws-{n}"  # in the accept
                ws.send("hi")
                assert ws.recv(timeout=10) == f"lobby hi ws-{n}"  # the id in the app's context
                ws.send("bye")  # the app closes
        with pytest.raises(InvalidStatus) as denied:
            connect(url + "?deny=1")
        assert denied.value.response.status_code == 403
        endpoint = ("endpoint", "/ws/{room}")
        ended = ("websocket_connection_duration_seconds_count", (endpoint,))
        # The last connection's end is recorded as its worker sees the close.
        metrics = scrape_until(server.port, lambda m: m.get(ended) == 6)
    assert metrics[("websocket_connections_total", (endpoint, ("outcome", "accepted")))] == 6
    assert metrics[("websocket_connections_total", (endpoint, ("outcome", "denied")))] == 1
    assert metrics.get(ended) == 6
    assert metrics[("websocket_connections_open", (endpoint,))] == 0
    assert served(metrics, "/ws/{room}") == 0  # not HTTP requests


def test_uvicorn_workers_restarted_by_limit_max_requests_keep_every_count(tmp_path: Path) -> None:
    # Each worker stops after 15 requests and the supervisor starts another: dead workers' shards
    # fold into the totals, so every scrape, whichever worker answers, counts every request once.
    with uvicorn(tmp_path, "--workers", "2", "--limit-max-requests", "15") as server:
        sent: list[str] = []
        for done in range(1, 4):
            ids = [f"restart-{done}-{n}" for n in range(40)]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda i: fetch_id_retrying(server.port, "/users/1?block=0.01", i), ids))
            assert answers == [(200, i) for i in ids]
            sent += ids
            for _ in range(3):
                deadline = time.monotonic() + 60
                while True:
                    try:
                        counted = served(scrape(server.port), USER)
                        break
                    except NOT_SERVED:  # the worker that took the scrape was stopping
                        assert time.monotonic() < deadline
                        time.sleep(0.05)
                assert counted == len(sent)
        lines = server.log_lines(wait_for=len(sent))
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access" and x["path"].startswith("/users/")]
    # Every request served once: a retried request had not been (else its id would show twice).
    assert sorted(x["request_id"] for x in access) == sorted(sent)
    assert len({x["pid"] for x in access}) >= 4, "no worker was restarted: the test means nothing"


def test_sigterm_under_uvicorn_drains_finishes_the_request_in_flight_and_exits(tmp_path: Path) -> None:
    server = uvicorn(tmp_path)
    with server:
        assert server.proc is not None
        # The first request hooks SIGTERM in the worker, chained to uvicorn's own handler.
        assert get(server.port, "/users/1")[0] == 200
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(get, server.port, "/slow?seconds=2", 30)
            deadline = time.monotonic() + 20
            while scrape(server.port).get(("http_requests_in_progress", (("method", "GET"),)), 0) < 1:
                assert time.monotonic() < deadline, "the slow request never arrived"
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)
            status, body = slow.result(timeout=30)
        # Answered in full after the signal, by a worker that knew it was draining (/ready: 503).
        assert status == 200 and json.loads(body) == {"draining": True}
        # uvicorn's handler ran too: the server shut down and exited (it re-raises the signal it
        # caught once it is done, so the status may be the signal's).
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        lines = server.log_lines(wait_for=2)
    assert [x["status"] for x in lines if x.get("path", "").startswith("/slow")] == [200]
    assert "Finished server process" in server.stderr_path.read_text()

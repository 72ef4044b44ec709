"""The demo under a real gunicorn with several workers, checked from outside over HTTP."""

from __future__ import annotations

import http.client
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import ROOT, Gunicorn

pytestmark = pytest.mark.gunicorn
HEX32 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    with Gunicorn(tmp_path_factory.mktemp("gunicorn"), workers=3) as g:
        yield g


def get(
    server: Gunicorn, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def access_for(server: Gunicorn, request_id: str) -> list[dict[str, Any]]:
    lines = server.log_lines()
    for _ in range(100):
        found = [r for r in lines if r.get("request_id") == request_id and r["logger"] == "softfactory_obs.access"]
        if found:
            return found
        lines = server.log_lines(wait_for=len(lines) + 1, timeout=0.1)
    return []


def test_ids_are_echoed_and_generated_and_logged_by_every_worker(server: Gunicorn) -> None:
    sent = [f"it-{n}" for n in range(40)]
    for rid in sent:
        status, headers, _ = get(server, "/api/search?q=product&token=abc", {"X-Request-Id": rid})
        assert status == 200 and headers["x-request-id"] == rid
    status, headers, _ = get(server, "/api/products")
    generated = headers["x-request-id"]
    assert HEX32.fullmatch(generated)
    assert access_for(server, generated)  # waits until the last line is written
    lines = server.log_lines()
    access = {r["request_id"]: r for r in lines if r["logger"] == "softfactory_obs.access"}
    app_lines = [r for r in lines if r["logger"] == "demo" and r["message"] == "search"]
    assert set(sent) | {generated} <= set(access)
    assert {r["request_id"] for r in app_lines} >= set(sent)  # the handler's own lines carry the id
    assert all(access[rid]["path"] == "/api/search?q=product&token=[REDACTED]" for rid in sent)
    assert all(access[rid]["endpoint"] == "/api/search" for rid in sent)


def test_concurrent_requests_are_logged_by_several_workers(server: Gunicorn) -> None:
    # A sync worker serves one request at a time: six concurrent slow ones must spread out.
    ids = [f"conc-{n}" for n in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda rid: get(server, "/api/slow?seconds=0.3", {"X-Request-Id": rid}), ids))
    assert [r[1]["x-request-id"] for r in results] == ids
    pids = {access_for(server, rid)[0]["pid"] for rid in ids}
    assert len(pids) >= 2


def test_hostile_id_over_the_wire_is_replaced(server: Gunicorn) -> None:
    answer = server.raw_request(
        b'GET /api/products HTTP/1.1\r\nHost: x\r\nX-Request-Id: evil value"<script>\r\nConnection: close\r\n\r\n'
    )
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    [echoed] = re.findall(r"(?im)^x-request-id: (.*)$", head)
    assert HEX32.fullmatch(echoed.strip())
    [line] = access_for(server, echoed.strip())
    assert line["request_id_rejected"] is True
    assert "<script>" not in server.stdout_path.read_text()


def test_app_error_gets_json_500_with_the_id_and_a_logged_traceback(server: Gunicorn) -> None:
    status, headers, body = get(server, "/api/error", {"X-Request-Id": "err-1"})
    assert status == 500
    assert headers["x-request-id"] == "err-1"
    assert json.loads(body) == {"error": "internal server error", "request_id": "err-1"}
    [line] = access_for(server, "err-1")
    assert line["status"] == 500 and line["level"] == "ERROR"
    assert "deliberate failure for the demo" in line["traceback"]


def test_streamed_body_is_timed_to_the_end(server: Gunicorn) -> None:
    status, _, body = get(server, "/api/stream?chunks=6", {"X-Request-Id": "stream-1"})
    assert status == 200
    assert body.count(b"stream-1") == 6
    [line] = access_for(server, "stream-1")
    assert line["latency_ms"] >= 250  # six chunks 50 ms apart
    assert line["content_length"] == len(body)
    chunk_lines = [r for r in server.log_lines() if r["logger"] == "demo" and r.get("request_id") == "stream-1"]
    assert len(chunk_lines) == 6


def test_file_wrapper_download_and_head(server: Gunicorn) -> None:
    status, _, body = get(server, "/api/download", {"X-Request-Id": "dl-1"})
    assert status == 200
    assert body == (Path(__file__).parent.parent / "examples" / "demo.py").read_bytes()
    assert access_for(server, "dl-1")[0]["content_length"] == len(body)
    status, headers, body = get(server, "/api/products", {"X-Request-Id": "head-1"}, method="HEAD")
    assert status == 200 and body == b"" and headers["x-request-id"] == "head-1"
    assert access_for(server, "head-1")[0]["method"] == "HEAD"


def test_non_utf8_and_huge_headers_are_served_and_logged_safely(server: Gunicorn) -> None:
    answer = server.raw_request(
        b"GET /caf%C3%A9/%FF HTTP/1.1\r\nHost: x\r\nX-Request-Id: utf-1\r\nUser-Agent: "
        + b"u" * 7000
        + b"\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 404")
    [line] = access_for(server, "utf-1")
    assert line["path"] == "/café/\ufffd"
    assert line["user_agent"].endswith("...[truncated]")


def test_health_routes_under_gunicorn(server: Gunicorn) -> None:
    status, _, body = get(server, "/live")
    assert status == 200 and json.loads(body)["alive"] is True
    status, _, body = get(server, "/ready")
    assert status == 200 and json.loads(body)["ready"] is True
    status, _, body = get(server, "/health")
    data = json.loads(body)
    assert status == 200 and data["status"] in ("healthy", "degraded") and data["service"] == "demo-shop"
    assert set(data["checks"]) == {"disk", "memory"}
    status, _, _ = get(server, "/health", method="POST")
    assert status == 405


def test_metrics_token_under_gunicorn(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=2, SOFTFACTORY_OBS_TELEMETRY_TOKEN="t0ken") as guarded:
        assert get(guarded, "/metrics")[0] == 401
        assert get(guarded, "/metrics", {"Authorization": "Bearer t0ken"})[0] == 200
        assert get(guarded, "/live")[0] == 200


def test_metrics_allow_list_under_gunicorn(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=2, SOFTFACTORY_OBS_TELEMETRY_ALLOW="10.0.0.0/8") as guarded:
        assert get(guarded, "/metrics")[0] == 403  # we come from 127.0.0.1
        assert get(guarded, "/api/metrics/summary")[0] == 403
        assert get(guarded, "/ready")[0] == 200
    with Gunicorn(tmp_path, workers=2, SOFTFACTORY_OBS_TELEMETRY_ALLOW="10.0.0.0/8,127.0.0.0/8") as allowed:
        assert get(allowed, "/metrics")[0] == 200


@pytest.mark.gunicorn
def test_instrument_log_settings_win_over_the_shipped_gunicorn_config(tmp_path: Path) -> None:
    # configs/gunicorn.conf.py sets logconfig_dict, which gunicorn applies in the master before the
    # app is loaded; instrument(service_name=..., log_schema=..., log_file=...) must still be obeyed.
    log_file = tmp_path / "logs" / "shop.log"
    server = Gunicorn(
        tmp_path,
        app="logging_app:app",
        config=ROOT / "softfactory_obs" / "configs" / "gunicorn.conf.py",
        PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}",
        TEST_LOG_FILE=str(log_file),
        WORKERS="2",
    )
    server.args = ("--bind", f"127.0.0.1:{server.port}")
    with server:
        for _ in range(6):
            assert get(server, "/")[0] == 200
        served = len(_lines_in(log_file.parent, want=12))
    lines = _lines_in(log_file.parent, want=served + 1)  # and the workers' exit lines, once stopped
    assert len(lines) >= 13, lines
    assert all(line["service.name"] == "shop" and line["ecs.version"] for line in lines), lines
    access = [x for x in lines if x["log.logger"] == "softfactory_obs.access"]
    assert len(access) == 6 and all(x["http.response.status_code"] == 200 for x in access)
    assert sum(x["message"] == "order placed" for x in lines) == 6  # the app's own records
    # gunicorn's own lines from the workers, in the same JSON and file:
    assert any(x["log.logger"] == "gunicorn.error" for x in lines), [x["log.logger"] for x in lines]


def _lines_in(directory: Path, want: int, timeout: float = 15.0) -> list[dict[str, object]]:
    """The JSON lines of every file in ``directory`` (dated files: shop-<date>.log), polled until ``want``."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(directory.glob("*.log")) if directory.exists() else []
        lines = [json.loads(x) for f in files for x in f.read_text().splitlines()]
        if len(lines) >= want or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)

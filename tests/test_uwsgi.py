"""uWSGI's default prefork mode: the app (and a metric written at import) lives in the master, which
forks its workers from C, so Python's at-fork hooks never run in them. Per-process state must still
be each worker's own: request ids, the pid on log lines, the store's shard."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from servers import USERS, Uwsgi, fetch_id, get, scrape, served

from softfactory_obs.cli.configs import SHIPPED


def test_uwsgi_prefork_workers_each_have_their_own_ids_pids_and_shards(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    requests_per_round, rounds = 50, 4
    with Uwsgi(tmp_path, "preload_app:app", processes=4, SOFTFACTORY_OBS_METRICS_DIR=str(store)) as server:
        assert server.proc is not None
        master = psutil.Process(server.proc.pid)
        ids: list[str] = []
        for done in range(1, rounds + 1):
            # Eight clients at once: every worker serves some, so ids drawn by different workers meet.
            with ThreadPoolExecutor(8) as pool:
                answers = list(
                    pool.map(lambda n: fetch_id(server.port, f"/api/users/{n + 1}"), range(requests_per_round))
                )
            assert all(status == 200 for status, _ in answers)
            ids += [request_id for _, request_id in answers]
            for _ in range(3):  # each scrape is answered by whichever worker is free: all must agree
                metrics = scrape(server.port)
                assert served(metrics, USERS) == done * requests_per_round
                assert metrics[("app_imports_total", ())] == 1  # written in the master, before the fork
        workers = {p.pid for p in master.children()}
        lines = [x for x in server.log_lines(wait_for=len(ids)) if x.get("logger") == "softfactory_obs.access"]

    assert len(ids) == rounds * requests_per_round
    assert len(set(ids)) == len(ids), f"{len(ids) - len(set(ids))} request ids were handed out twice"
    pids = {line["pid"] for line in lines if line["path"].startswith("/api/users/")}
    assert len(pids) >= 2, f"only {pids} served: the test needs several workers to mean anything"
    assert pids <= workers and master.pid not in pids, (pids, workers, master.pid)
    assert {line["request_id"] for line in lines if line["path"].startswith("/api/users/")} == set(ids)


def test_uwsgi_worker_cpu_is_exact_under_max_requests_recycling(tmp_path: Path) -> None:
    """F4 under uWSGI: workers recycled every 40 requests (uWSGI's own --max-requests) still add
    up, since the scrape reads the CPU the master reaped plus its living workers'."""
    store = tmp_path / "store"
    store.mkdir()
    args = ("--max-requests", "40")
    with Uwsgi(tmp_path, "cpu_app:app", processes=4, args=args, SOFTFACTORY_OBS_METRICS_DIR=str(store)) as server:
        assert server.proc is not None
        for _ in range(400):
            assert get(server.port, "/burn")[0] == 200
        exposed = scrape(server.port)[("process_cpu_seconds_total", ())]
        master = server.proc.pid
        master_own = psutil.Process(master).cpu_times()
        server.proc.send_signal(signal.SIGTERM)  # --die-on-term: the master stops its workers and exits
        _, status, usage = os.wait4(master, 0)
        server.proc.returncode = os.waitstatus_to_exitcode(status)
    workers_real = usage.ru_utime + usage.ru_stime - master_own.user - master_own.system
    assert workers_real > 8  # the control: 400 requests of 20 ms over ten generations of workers
    assert 0.95 <= exposed / workers_real <= 1.0, (exposed, workers_real)


@pytest.mark.parametrize(
    "mode",
    [(), ("--lazy-apps",), ("--threads", "4")],
    ids=["prefork", "lazy-apps", "threads"],
)
def test_uwsgi_finds_its_store_without_configuration_and_recycling_keeps_every_count(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    """Without SOFTFACTORY_OBS_METRICS_DIR each scrape showed the one worker that answered (115-152
    of 500) and recycling reset it. Now every process of one master, the master included, finds
    the master's private directory: in the default prefork mode (the app imported in the master),
    with --lazy-apps (imported in each worker) and with threads."""
    args = ("--ini", str(SHIPPED / "uwsgi.ini"), "--max-requests", "25", *mode)  # the shipped config
    with Uwsgi(tmp_path, "preload_app:app", processes=4, args=args) as server:
        assert server.proc is not None
        store = Path(f"/dev/shm/softfactory_obs-{server.proc.pid}")
        sent = 0
        for _ in range(4):
            with ThreadPoolExecutor(8) as pool:
                sent += sum(
                    code == 200 for code in pool.map(lambda n: get(server.port, f"/api/users/{n + 1}")[0], range(50))
                )
            for _ in range(3):  # whichever worker answers (recycled ones included) sees every count
                metrics = scrape(server.port)
                assert served(metrics, USERS) == sent
                # Written at import: once in the master, or once by each worker that imported the app.
                imports = metrics[("app_imports_total", ())]
                assert imports == 1 if "--lazy-apps" not in mode else imports >= 1
        assert sent == 200
        assert store.is_dir() and store.stat().st_mode & 0o077 == 0  # private to the service's user
        assert any(name.endswith(".shard") for name in os.listdir(store))
        lines = [x for x in server.log_lines(wait_for=sent) if x.get("logger") == "softfactory_obs.access"]
        assert len(lines) >= sent  # our JSON access lines, in uWSGI's log


def test_instrument_log_settings_hold_under_uwsgi(tmp_path: Path) -> None:
    """instrument(service_name=, log_schema=, log_file=) under uWSGI's prefork mode, where the app
    (and its logging set-up) is imported in the master and its workers are forked from C."""
    log_file = tmp_path / "logs" / "shop.log"
    with Uwsgi(tmp_path, "logging_app:app", processes=2, TEST_LOG_FILE=str(log_file)) as server:
        for _ in range(6):
            assert get(server.port, "/")[0] == 200
        deadline = time.monotonic() + 30
        while True:  # dated files: shop-<date>.log
            lines = [json.loads(x) for f in sorted(log_file.parent.glob("*.log")) for x in f.read_text().splitlines()]
            if len(lines) >= 12 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert len(lines) >= 12, lines
    assert all(line["service.name"] == "shop" and line["ecs.version"] for line in lines), lines
    access = [x for x in lines if x["log.logger"] == "softfactory_obs.access"]
    assert len(access) == 6 and all(x["http.response.status_code"] == 200 for x in access)
    assert len({x["process.pid"] for x in access}) >= 1 and server.proc is not None
    assert all(x["process.pid"] != server.proc.pid for x in access)  # the workers', not the master's pid
    assert sum(x["message"] == "order placed" for x in lines) == 6  # the app's own records


def test_uwsgi_stops_and_reloads_workers_on_its_own_signals(tmp_path: Path) -> None:
    """uWSGI's C handlers own its workers' signals. A Python SIGTERM handler (ours, for /ready)
    swallowed them and could only run once Python ran again: a worker told to stop served on
    until the master's reload mercy (60 s) killed it. Now SIGTERM to a worker replaces it at
    once, and a graceful reload (SIGHUP to the master) lets the request in flight finish; no count
    is lost through either."""
    with Uwsgi(tmp_path, "preload_app:app", processes=2, args=("--enable-threads",)) as server:
        assert server.proc is not None
        master = psutil.Process(server.proc.pid)
        with ThreadPoolExecutor(8) as pool:
            sent = sum(
                code == 200 for code in pool.map(lambda n: get(server.port, f"/api/users/{n + 1}")[0], range(40))
            )
        first = {p.pid for p in master.children()}
        served_by = {x["pid"] for x in server.log_lines(wait_for=sent) if x.get("logger") == "softfactory_obs.access"}
        victim = next(iter(first & served_by))  # a worker that served, so any hook of ours is in it
        os.kill(victim, signal.SIGTERM)
        _wait_until(lambda: victim not in {p.pid for p in master.children()} and len(master.children()) == 2, 20)

        with ThreadPoolExecutor(1) as pool:  # a request in flight through a graceful reload
            slow = pool.submit(get, server.port, "/api/slow?seconds=1.5", 30)
            before = {p.pid for p in master.children()}
            _wait_until(lambda: any(_serving(pid) for pid in before), 10)  # a worker holds it: reload now
            master.send_signal(signal.SIGHUP)
            assert slow.result()[0] == 200
        _wait_until(lambda: not before & {p.pid for p in master.children()} and len(master.children()) == 2, 30)
        for _ in range(4):
            assert served(scrape(server.port), USERS) == sent == 40
        assert get(server.port, "/ready")[0] == 200


def _serving(pid: int) -> bool:
    try:  # a connection accepted by this worker (idle workers hold only the listening socket)
        return any(c.status == psutil.CONN_ESTABLISHED for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.NoSuchProcess:
        return False


def _wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.05)


def test_uwsgi_sends_a_wrapped_file_with_sendfile(tmp_path: Path) -> None:
    """uWSGI's wsgi.file_wrapper is a function returning the file itself, sent with sendfile only
    if the app returns that very object. Iterated by the middleware instead, a 64 MiB file with no
    newline went through Python as one 64 MiB line: the worker's peak memory grew by its size."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(64):
            f.write(b"x" * (1 << 20))
    with Uwsgi(tmp_path, "bigfile_app:app", processes=1, TEST_BIG_FILE=str(big)) as server:
        before = int(get(server.port, "/peak")[1])
        for _ in range(3):
            status, body = get(server.port, "/big", timeout=60)
            assert status == 200 and len(body) == 64 << 20
        after = int(get(server.port, "/peak")[1])
        metrics = scrape(server.port)
    assert after - before < 16 << 10, f"peak memory grew by {after - before} kB: the file went through Python"
    assert metrics[("http_requests_total", (("endpoint", "/big"), ("method", "GET"), ("status", "200")))] == 3
    assert metrics[("http_response_size_bytes_sum", (("endpoint", "/big"), ("method", "GET")))] == 3 * (64 << 20)

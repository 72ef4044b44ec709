"""The store under a real gunicorn: exact sums over workers, bounded scrapes under churn, kill -9."""

from __future__ import annotations

import http.client
import os
import pwd
import random
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import skip_or_fail, tmpfs
from servers import USERS, Gunicorn, get, scrape, served, worker_pids

NO_HOOKS = Path(__file__).parent / "gunicorn_nohooks.conf.py"

pytestmark = pytest.mark.gunicorn


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_every_worker_answers_with_the_sum_over_all_workers(tmp_path: Path, store: Path) -> None:
    with Gunicorn(tmp_path, workers=4, SOFTFACTORY_OBS_METRICS_DIR=str(store)) as server:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda n: get(server.port, f"/api/users/{n % 100 + 1}")[0], range(400)))
        assert statuses == [200] * 400
        # Concurrent scrapes land on different workers; each must show the same exact total.
        with ThreadPoolExecutor(8) as pool:
            totals = list(pool.map(lambda _: served(scrape(server.port)), range(16)))
        assert totals == [400.0] * 16
        shards = [n for n in os.listdir(store) if n.endswith(".shard")]
        assert 1 <= len(shards) <= 4  # one per worker that wrote; none for dead ones


def test_churn_keeps_scrapes_bounded_and_counts_exact(tmp_path: Path, store: Path) -> None:
    # --max-requests 1: every request ends its worker, so N requests make N worker incarnations.
    requests = int(os.environ.get("SOFTFACTORY_OBS_CHURN_REQUESTS", "2000"))
    env = {"SOFTFACTORY_OBS_METRICS_DIR": str(store), "GUNICORN_CMD_ARGS": "--preload --max-requests 1"}
    with Gunicorn(tmp_path, workers=4, config=NO_HOOKS, **env) as server:  # exact without any hook
        ok = 0
        scrapes = []
        with ThreadPoolExecutor(4) as pool:
            for start in range(0, requests, 500):
                batch = range(start, min(start + 500, requests))
                codes = pool.map(lambda n: get(server.port, f"/api/users/{n % 7 + 1}")[0], batch)
                ok += sum(code == 200 for code in codes)
                metrics = scrape(server.port)
                scrapes.append(metrics)
                files_in_dir = len(os.listdir(store))
                # Work per scrape tracks live workers, not the hundreds that died since the last one.
                assert metrics[("softfactory_obs_scrape_files_read", ())] <= 4 + 1 + 64
                assert files_in_dir <= 4 + 64 + 6, sorted(os.listdir(store))
        assert ok == requests
        # Let the last incarnations die and be compacted, then count exactly.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and served(scrape(server.port)) != requests:
            time.sleep(0.2)
        final = scrape(server.port)
        assert served(final) == requests
        assert final[("http_request_duration_seconds_count", (("endpoint", USERS), ("method", "GET")))] == requests
        assert final[("softfactory_obs_store_compactions_total", ())] > 0
        assert len({k for k in final if k[0] == "http_requests_total"}) == 1  # no per-worker or per-pid series
        for metrics in [*scrapes, final]:
            # Per-worker gauges carry a reused slot number, so their label set stays bounded under churn.
            slots = {dict(labels)["worker"] for name, labels in metrics if name == "process_resident_memory_bytes"}
            assert slots <= {"0", "1", "2", "3", "4", "5", "6", "7"}, slots
        # Monotone: no counter-like sample ever went down between scrapes.
        for before, after in zip(scrapes, [*scrapes[1:], final], strict=True):
            for key, v in before.items():
                if key[0].endswith(("_total", "_bucket", "_count", "_sum")) and key in after:
                    assert after[key] >= v, key


def test_kill_9_during_load_counts_between_served_and_attempted(tmp_path: Path, store: Path) -> None:
    with Gunicorn(tmp_path, workers=4, SOFTFACTORY_OBS_METRICS_DIR=str(store)) as server:
        attempted = 0
        ok = 0
        lock = threading.Lock()
        stop = threading.Event()

        def load() -> None:
            nonlocal attempted, ok
            while not stop.is_set():
                with lock:
                    attempted += 1
                try:
                    status, _ = get(server.port, "/api/users/5", timeout=5)
                except (OSError, http.client.HTTPException):  # the worker died mid-response
                    continue
                if status == 200:
                    with lock:
                        ok += 1

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        rng = random.Random(7)
        kills = 0
        try:
            for _ in range(10):
                time.sleep(0.3)
                pids = worker_pids(server)
                if pids:
                    os.kill(rng.choice(pids), signal.SIGKILL)
                    kills += 1
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert kills >= 5
        time.sleep(1.5)  # replacement workers boot; the killed ones' shards stay counted
        exposed = served(scrape(server.port))
        assert ok <= exposed <= attempted, (ok, exposed, attempted)
        assert ok > 100


@pytest.fixture
def gthread_server(tmp_path: Path, store: Path) -> Iterator[Gunicorn]:
    env = {"SOFTFACTORY_OBS_METRICS_DIR": str(store), "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 8"}
    with Gunicorn(tmp_path, workers=2, **env) as server:
        yield server


def test_concurrent_scrapes_in_threaded_workers_all_parse(gthread_server: Gunicorn) -> None:
    port = gthread_server.port
    for n in range(50):
        assert get(port, f"/api/users/{n + 1}")[0] == 200
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: served(scrape(port)), range(64)))
    assert results == [50.0] * 64


def test_no_directory_configured_and_no_hooks_still_aggregates(tmp_path: Path) -> None:
    # Each worker infers the same private directory from its master's pid.
    with Gunicorn(tmp_path, workers=3, config=NO_HOOKS) as server:
        assert server.proc is not None
        auto = Path(f"/dev/shm/softfactory_obs-{server.proc.pid}")
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda n: get(server.port, "/api/slow?seconds=0.05"), range(30)))
        totals = {served(scrape(server.port), "/api/slow") for _ in range(10)}
        assert totals == {30.0}
        assert auto.is_dir() or not Path("/dev/shm").is_dir()


@pytest.mark.parametrize("preload", [False, True], ids=["import-per-worker", "preload"])
def test_workers_running_as_another_user_share_the_store(tmp_path: Path, preload: bool) -> None:
    """A master started as root with --user/--group (as in many containers) makes the directory;
    its workers, running as that user, must be able to use it (they could not: every scrape
    failed with "not writable" and each worker counted alone). Under --preload the app's first
    metric makes it, and files in it, before the hooks run."""
    if os.getuid() != 0:
        skip_or_fail("starting gunicorn with --user nobody needs root")
    # Debian's interpreter: user nobody may not read this one's installation (pyenv under /root).
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(python, os.X_OK):
        skip_or_fail(f"{python} is needed to run workers as user nobody (apt-get install python3)")
    site = sysconfig.get_paths()["purelib"]
    tests = Path(__file__).parent
    args = ("--user", "nobody", "--group", "nogroup", *(("--preload",) if preload else ()))
    with Gunicorn(
        tmp_path,
        "preload_app:app",
        workers=3,
        python=python,
        args=args,
        PYTHONPATH=f"{site}:{tests.parent}:{tests}",
        SOFTFACTORY_OBS_METRICS_DIR="",
    ) as server:
        assert server.proc is not None
        for _ in range(30):
            get(server.port, "/api/users/1")
        metrics = [scrape(server.port) for _ in range(10)]
        assert {served(m) for m in metrics} == {30.0}  # every worker's share, in every scrape
        if preload:  # the master's one import, in the master's own shard, read by every worker
            assert {sum(v for (name, _), v in m.items() if name == "app_imports_total") for m in metrics} == {1.0}
        auto = Path(f"/dev/shm/softfactory_obs-{server.proc.pid}")
        assert {p.stat().st_uid for p in (auto, *auto.iterdir())} == {pwd.getpwnam("nobody").pw_uid}
    assert not auto.exists()  # removed at exit, also when a preloaded app made it


def test_hooks_pick_the_directory_once_and_remove_it_at_exit(tmp_path: Path) -> None:
    with Gunicorn(tmp_path, workers=2) as server:
        assert server.proc is not None
        master = server.proc.pid
        get(server.port, "/api/users/1")
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(os.environ.get("TMPDIR", "/tmp"))
        auto = base / f"softfactory_obs-{master}"
        assert any(p.name.endswith(".shard") for p in auto.iterdir())
    assert not auto.exists()


def _no_control_socket() -> str:
    # gunicorn >= 25 runs a control-socket thread in the master; switch it off so the thread count
    # below measures only what we might start there.
    helptext = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return " --no-control-socket" if "--no-control-socket" in helptext else ""


@pytest.mark.parametrize("preload", [True, False], ids=["preload", "import-per-worker"])
def test_increments_made_at_import_are_counted_once_per_process(tmp_path: Path, preload: bool) -> None:
    args = ("--preload" if preload else "") + _no_control_socket()
    env = {"SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "store"), "GUNICORN_CMD_ARGS": args}
    with Gunicorn(
        tmp_path,
        app="preload_app:app",
        workers=3,
        config=NO_HOOKS,
        PYTHONPATH=f"{Path(__file__).parent}{os.pathsep}{Path(__file__).parent.parent}",
        **env,
    ) as server:
        with ThreadPoolExecutor(6) as pool:  # make every worker serve, so every worker has imported/written
            list(pool.map(lambda n: get(server.port, "/api/slow?seconds=0.1"), range(12)))
        imports = scrape(server.port)[("app_imports_total", ())]
        assert imports == (1.0 if preload else 3.0)
        assert server.proc is not None
        assert len(os.listdir(f"/proc/{server.proc.pid}/task")) == 1  # we never start a thread in the master
        assert served(scrape(server.port), "/api/slow") == 12


@pytest.mark.soak
def test_soak_churn_8000_restarts(tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOFTFACTORY_OBS_CHURN_REQUESTS", "8000")
    test_churn_keeps_scrapes_bounded_and_counts_exact(tmp_path, store)


def test_scrape_storm_during_churn_and_compaction(tmp_path: Path, store: Path) -> None:
    # Workers recycle every ~10 requests (scrapes included) while 6 scrapers and 4 loaders run.
    env = {
        "SOFTFACTORY_OBS_METRICS_DIR": str(store),
        "GUNICORN_CMD_ARGS": "--worker-class gthread --threads 4 --max-requests 10 --max-requests-jitter 5",
    }
    with Gunicorn(tmp_path, workers=3, config=NO_HOOKS, **env) as server:
        stop = threading.Event()
        failures: list[str] = []
        decreases: list[str] = []
        ok = 0
        lock = threading.Lock()

        scrapes = []

        def scraper() -> None:
            previous: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
            while not stop.is_set():
                try:
                    current = scrape(server.port)
                    scrapes.append(1)
                except (OSError, http.client.HTTPException) as exc:  # a recycled worker may drop a connection
                    failures.append(type(exc).__name__)
                    continue
                except AssertionError as exc:
                    failures.append(str(exc)[:200])
                    continue
                for key, v in previous.items():
                    if key[0].endswith(("_total", "_bucket", "_count", "_sum")) and current.get(key, v) < v:
                        decreases.append(f"{key}: {v} -> {current[key]}")
                previous = current

        def loader() -> None:
            nonlocal ok
            while not stop.is_set():
                try:
                    if get(server.port, "/api/users/3")[0] == 200:
                        with lock:
                            ok += 1
                except (OSError, http.client.HTTPException):
                    pass

        threads = [threading.Thread(target=scraper) for _ in range(6)] + [
            threading.Thread(target=loader) for _ in range(4)
        ]
        for t in threads:
            t.start()
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join()
        assert len(scrapes) > 50
        assert decreases == []
        assert [
            f
            for f in failures
            if not f.startswith(("ConnectionResetError", "RemoteDisconnected", "BadStatusLine", "IncompleteRead"))
        ] == []
        assert ok > 100
        final = served(scrape(server.port))
        assert ok <= final


def _fill(path: Path) -> None:
    """Write ``path`` until its file system is full."""
    chunk = b"x" * 4096
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, chunk):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def _total(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in metrics.items() if name == "http_requests_total")


def test_a_full_store_shows_the_fault_and_loses_no_count_once_space_returns(tmp_path: Path) -> None:
    """F2 under gunicorn: new endpoints on a full tmpfs count in each worker's memory; the fault is
    on /metrics at once (from every worker); once the space is freed every request is counted."""
    tests_dir = Path(__file__).parent
    with tmpfs(tmp_path / "small", "size=4m") as mount:
        env = {
            "SOFTFACTORY_OBS_METRICS_DIR": str(mount / "store"),
            "SOFTFACTORY_OBS_MAX_ENDPOINTS": "5000",
            "SOFTFACTORY_OBS_ACCESS_LOG": "0",
            "PYTHONPATH": f"{tests_dir}:{tests_dir.parent}",
        }
        with Gunicorn(tmp_path, app="catchall_app:app", workers=2, **env) as server:
            sent = 0
            with ThreadPoolExecutor(4) as pool:  # both workers make their shard while there is room
                sent += sum(code == 200 for code in pool.map(lambda _: get(server.port, "/")[0], range(40)))
            _fill(mount / "filler")
            words = ["".join(chr(97 + (n // 26**k) % 26) for k in range(4)) for n in range(200)]
            with ThreadPoolExecutor(4) as pool:
                sent += sum(code == 200 for code in pool.map(lambda w: get(server.port, f"/{w}")[0], words))
            assert sent == 240  # the app never noticed
            metrics = scrape(server.port)
            assert metrics[("softfactory_obs_internal_errors_total", (("component", "metrics store"),))] >= 1
            assert metrics[("softfactory_obs_store_free_bytes", ())] < 64 * 1024
            assert _total(metrics) < sent  # the control: counts were held back while it was full
            (mount / "filler").unlink()
            deadline = time.monotonic() + 60
            while True:  # each worker moves what it holds after one of its next requests
                sent += get(server.port, "/")[0] == 200
                counted = _total(scrape(server.port))
                if counted == sent or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert counted == sent

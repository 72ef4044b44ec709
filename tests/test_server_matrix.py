"""The same checks on every server a user runs, with nothing configured: N requests give N
distinct request ids, every scrape (whichever worker answers) counts exactly N, /health is 200,
each request's access line is valid JSON carrying the id its response gave, and every worker
that served has its own process metrics."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import ROOT, USERS, Apache, Gunicorn, Server, Uwsgi, Waitress, exact_under_load, get, scrape

TESTS = str(ROOT / "tests")
PATH = f"{TESTS}{os.pathsep}{ROOT}"


def _gunicorn(worker_class: str) -> Callable[[Path], Server]:
    args = f"--worker-class {worker_class}" + (" --threads 4" if worker_class == "gthread" else "")
    return lambda tmp: Gunicorn(tmp, "preload_app:app", workers=3, PYTHONPATH=PATH, GUNICORN_CMD_ARGS=args)


SERVERS: dict[str, Callable[[Path], Server]] = {
    "gunicorn-sync": _gunicorn("sync"),
    "gunicorn-gthread": _gunicorn("gthread"),
    "gunicorn-gevent": _gunicorn("gevent"),
    "uwsgi-prefork": lambda tmp: Uwsgi(tmp, "preload_app:app", processes=3, args=("--enable-threads",)),
    "uwsgi-lazy-apps": lambda tmp: Uwsgi(tmp, "preload_app:app", processes=3, args=("--lazy-apps", "--enable-threads")),
    "mod_wsgi-daemon": lambda tmp: Apache(tmp, "from preload_app import app as application\n", processes=2, threads=4),
    "waitress": lambda tmp: Waitress(tmp, "preload_app:app", PYTHONPATH=PATH),
}


def _sampled_pids(port: int) -> set[int]:
    metrics = scrape(port)
    return {int(value) for (name, _), value in metrics.items() if name == "softfactory_obs_worker_pid"}


@pytest.mark.parametrize("name", list(SERVERS))
def test_every_server_counts_exactly_with_distinct_ids_and_json_lines(tmp_path: Path, name: str) -> None:
    with SERVERS[name](tmp_path) as server:
        ids = exact_under_load(server, lambda n: f"/api/users/{n + 1}", USERS)
        assert get(server.port, "/health")[0] == 200
        lines = server.log_lines(wait_for=len(ids))  # every line starting with "{" must parse
        raw = server.log_path.read_text().splitlines()
        serving = {x["pid"] for x in lines if x.get("logger") == "softfactory_obs.access"}
        deadline = time.monotonic() + 60
        while not serving <= (sampled := _sampled_pids(server.port)):  # process metrics, one slot per worker
            assert time.monotonic() < deadline, f"workers {serving} served, process metrics cover {sampled}"
            time.sleep(0.2)
    assert all(ids) and len(set(ids)) == len(ids) == 120
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access" and x["path"].startswith("/api/users/")]
    assert sorted(x["request_id"] for x in access) == sorted(ids)
    assert all(x["status"] == 200 and x["endpoint"] == USERS for x in access)
    if isinstance(server, Gunicorn | Waitress):  # stdout is ours alone: every line is JSON
        assert [json.loads(line) for line in raw if line.strip()] == lines

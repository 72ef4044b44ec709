"""Apache mod_wsgi, daemon and embedded mode, with nothing configured: the store is found per
process group (Apache's ``SetEnv`` never reaches ``os.environ``, so users could not set it there),
and JSON lines reach Apache's error log whole and valid, tracebacks and quotes included."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from servers import USERS, Apache, fetch_id, get, scrape, served

DEMO = "from preload_app import app as application\n"


def _wait_live(server: Apache) -> None:
    deadline = time.monotonic() + 60
    while get(server.port, "/live", timeout=30)[0] != 200:  # a daemon process may still be starting
        assert time.monotonic() < deadline, server.error_log.read_text()[-3000:]
        time.sleep(0.1)


def _json_lines(server: Apache, wait_for: int) -> list[dict[str, Any]]:
    """Every line of the error log that is not Apache's own ("[date] [module:level] ...")."""
    deadline = time.monotonic() + 30
    while True:
        raw = server.error_log.read_text(encoding="utf-8").splitlines()
        ours = [line for line in raw if not line.startswith("[")]
        lines = [json.loads(line) for line in ours]  # each must be a whole JSON document
        if sum(x.get("logger") == "softfactory_obs.access" for x in lines) >= wait_for or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("mode", "options"),
    [("daemon", "maximum-requests=25"), ("embedded", "")],
    ids=["daemon-recycling", "embedded"],
)
def test_mod_wsgi_counts_every_process_without_configuration(tmp_path: Path, mode: str, options: str) -> None:
    """Before, each scrape showed the one process that answered (278 or 22 of 300) and recycled
    daemon processes took their counts with them."""
    with Apache(tmp_path, DEMO, mode=mode, processes=2, threads=4, daemon_options=options) as server:
        assert server.proc is not None
        _wait_live(server)
        ids: list[str] = []
        for done in range(1, 4):
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda n: fetch_id(server.port, f"/api/users/{n + 1}"), range(60)))
            assert all(status == 200 for status, _ in answers), answers
            ids += [request_id for _, request_id in answers]
            for _ in range(4):  # whichever process answers (recycled ones included) sees every count
                assert served(scrape(server.port), USERS) == done * 60
        assert get(server.port, "/health")[0] == 200
        stores = list(Path("/dev/shm").glob(f"softfactory_obs-{server.proc.pid}-*"))
        lines = _json_lines(server, wait_for=len(ids))
    assert len(set(ids)) == len(ids) == 180 and all(ids)
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access" and x["path"].startswith("/api/users/")]
    assert {x["request_id"] for x in access} == set(ids)
    pids = {x["pid"] for x in access}
    assert len(pids) >= (3 if options else 2), f"only processes {pids} served: the test needs several"
    assert server.proc.pid not in pids
    assert len(stores) == 1, stores  # one store for the process group, named after Apache's parent
    tag = "app" if mode == "daemon" else "embedded"
    assert stores[0].name.startswith(f"softfactory_obs-{server.proc.pid}-{tag}-"), stores


WSGI_LOGGING = r"""
import logging
import softfactory_obs

log = logging.getLogger("shop")


def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise ValueError('bad "input" \\ é ' + "x" * 20000)
    log.warning('quoted "word", back\\slash, é, \u2603')
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


application = softfactory_obs.instrument(app)
"""


def test_mod_wsgi_log_lines_stay_valid_json_in_apaches_error_log(tmp_path: Path) -> None:
    """Through mod_wsgi's sys.stdout, Apache escaped every backslash (so every traceback, quote and
    non-ASCII character made the line invalid JSON) and cut lines at 8,190 characters."""
    with Apache(tmp_path, WSGI_LOGGING, mode="daemon", processes=1, threads=2) as server:
        _wait_live(server)
        statuses = [
            fetch_id(server.port, "/", {"User-Agent": 'agent "quoted" back\\slash'})[0],
            fetch_id(server.port, "/boom")[0],
            fetch_id(server.port, "/")[0],
        ]
        lines = _json_lines(server, wait_for=3)
        raw = server.error_log.read_text(encoding="utf-8")
    assert statuses == [200, 500, 200]
    access = [x for x in lines if x.get("logger") == "softfactory_obs.access"]
    assert [x["status"] for x in access] == [200, 500, 200]
    assert access[0]["user_agent"] == 'agent "quoted" back\\slash'
    warnings = [x for x in lines if x.get("logger") == "shop"]
    assert [x["message"] for x in warnings] == ['quoted "word", back\\slash, é, \u2603'] * 2
    assert {x["request_id"] for x in warnings} == {access[0]["request_id"], access[2]["request_id"]}
    errors = [x for x in lines if x.get("level") == "ERROR"]
    assert errors, raw[-3000:]
    text = json.dumps(errors)
    assert 'bad \\"input\\" \\\\ \\u00e9 ' + "x" * 20000 in text  # whole: more than 8,190 characters
    assert "Traceback" in text


def test_instrument_log_settings_hold_under_mod_wsgi(tmp_path: Path) -> None:
    """instrument(service_name=, log_schema=, log_file=) in a mod_wsgi daemon process: the lines go
    to the dated files, in the ECS schema, none to Apache's error log."""
    logs = Path(tempfile.mkdtemp(prefix="sfo-logs-"))
    try:
        logs.chmod(0o755)
        if os.getuid() == 0:
            shutil.chown(logs, "www-data", "www-data")  # the daemon processes' user writes there
        log_file = logs / "shop.log"
        wsgi = (
            f"import os\nos.environ['TEST_LOG_FILE'] = {str(log_file)!r}\nfrom logging_app import app as application\n"
        )
        with Apache(tmp_path, wsgi, processes=2, threads=2) as server:
            _wait_live(server)
            for _ in range(6):
                assert get(server.port, "/")[0] == 200
            deadline = time.monotonic() + 30
            while True:  # dated files: shop-<date>.log
                lines = [json.loads(x) for f in sorted(logs.glob("*.log")) for x in f.read_text().splitlines()]
                if sum(x.get("url.path") == "/" for x in lines) >= 6 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            error_log = server.error_log.read_text()
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    access = [x for x in lines if x["log.logger"] == "softfactory_obs.access" and x.get("url.path") == "/"]
    assert len(access) == 6 and all(x["http.response.status_code"] == 200 for x in access), lines
    assert all(x["service.name"] == "shop" and x["ecs.version"] for x in lines), lines
    assert sum(x["message"] == "order placed" for x in lines) == 6  # the app's own records
    assert "order placed" not in error_log and "softfactory_obs.access" not in error_log
    assert "Loading Python script file" in error_log  # the control: the error log is the right one

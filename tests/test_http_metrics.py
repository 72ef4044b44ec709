"""HTTP metrics: every family, endpoint resolution, the cardinality cap, skips, and the access line."""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import LogCapture, call_wsgi, in_child, make_environ, samples, wrap
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from servers import Gunicorn, scrape
from servers import get as http_get

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs._failures import failure_counts
from softfactory_obs.routes import OVERFLOW, UNMATCHED, EndpointCap, RouteTable, normalise
from softfactory_obs.store.metrics import Registry

TEXT = [("Content-Type", "text/plain")]


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """Status from the path: /status/<code>; /raise; /slow; /stream; anything else 200."""
    path = environ["PATH_INFO"]
    if path == "/raise":
        raise KeyError("boom")
    if path.startswith("/status/"):
        start_response(f"{path[8:]} X", TEXT)
        return [b""]
    if path == "/slow":
        time.sleep(0.15)
    if path == "/stream":
        start_response("200 OK", TEXT)
        return iter([b"ab", b"cde"])
    start_response("200 OK", [*TEXT, ("Content-Length", "2")])
    return [b"ok"]


def metrics_app(registry: Registry, **options: Any) -> Any:
    options.setdefault("auto_configure_logging", False)
    return wrap(app, registry=registry, **options)


def get(wsgi: Any, path: str, **env: Any) -> Any:
    return call_wsgi(wsgi, make_environ(PATH_INFO=path, **env))


def series(registry: Registry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples(registry).items() if n == name}


def one(registry: Registry, name: str, **labels: str) -> float:
    return samples(registry)[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def registry() -> Registry:
    return Registry()


def test_each_family_records_what_it_says(registry: Registry, logs: LogCapture) -> None:
    wsgi = metrics_app(registry, slow_request_seconds=0.1)
    get(wsgi, "/users/42", REQUEST_METHOD="POST", CONTENT_LENGTH="1234")
    get(wsgi, "/slow")
    get(wsgi, "/stream")
    get(wsgi, "/raise")
    get(wsgi, "/status/503")
    # Not through the validator, which rejects unknown methods; the server may still pass them on.
    call_wsgi(
        ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False),
        make_environ(PATH_INFO="/x", REQUEST_METHOD="BREW"),
    )
    assert one(registry, "http_requests_total", method="POST", endpoint="/users/{id}", status="200") == 1
    assert one(registry, "http_requests_total", method="GET", endpoint="/raise", status="500") == 1
    assert one(registry, "http_requests_total", method="GET", endpoint="/status/{id}", status="503") == 1
    assert one(registry, "http_requests_total", method="_OTHER", endpoint="/x", status="200") == 1
    assert one(registry, "http_request_duration_seconds_count", method="GET", endpoint="/slow") == 1
    assert one(registry, "http_request_duration_seconds_sum", method="GET", endpoint="/slow") >= 0.15
    assert one(registry, "http_slow_requests_total", method="GET", endpoint="/slow") == 1
    assert ("http_slow_requests_total", (("endpoint", "/users/{id}"), ("method", "POST"))) not in samples(registry)
    assert one(registry, "http_request_exceptions_total", method="GET", endpoint="/raise", exception="KeyError") == 1
    assert one(registry, "http_request_size_bytes_sum", method="POST", endpoint="/users/{id}") == 1234
    assert one(registry, "http_response_size_bytes_sum", method="GET", endpoint="/stream") == 5  # counted
    assert one(registry, "http_response_size_bytes_sum", method="POST", endpoint="/users/{id}") == 2  # declared
    assert one(registry, "http_requests_in_progress", method="GET") == 0
    assert [r["endpoint"] for r in logs.access()] == ["/users/{id}", "/slow", "/stream", "/raise", "/status/{id}", "/x"]


@pytest.mark.parametrize("threaded", [True, False], ids=["multithread-locked", "single-writer-unlocked"])
def test_every_write_path_counts_exactly(registry: Registry, threaded: bool) -> None:
    """wsgi.multithread true: 8 threads at once through the locked writes; false: the server
    promises one request thread, and the unlocked writes must record exactly the same."""
    wsgi = metrics_app(registry)
    per_thread, threads = 300, 8 if threaded else 1

    def serve() -> None:
        for i in range(per_thread):
            get(wsgi, f"/users/{i}", REQUEST_METHOD="POST", CONTENT_LENGTH="10", **{"wsgi.multithread": threaded})

    workers = [threading.Thread(target=serve) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    n = per_thread * threads
    labels = {"method": "POST", "endpoint": "/users/{id}"}
    assert one(registry, "http_requests_total", status="200", **labels) == n
    assert one(registry, "http_request_duration_seconds_count", **labels) == n
    assert one(registry, "http_request_size_bytes_sum", **labels) == 10 * n
    assert one(registry, "http_response_size_bytes_sum", **labels) == 2 * n
    assert one(registry, "http_response_size_bytes_bucket", le="100.0", **labels) == n
    assert one(registry, "http_requests_in_progress", method="POST") == 0


@pytest.mark.parametrize("threaded", [True, False], ids=["multithread-locked", "single-writer-unlocked"])
@pytest.mark.parametrize("length", ["\u00b2", " 7", "7_0", "-7", "\u0663", "9" * 19])
def test_a_content_length_that_is_no_plausible_size_is_ignored(registry: Registry, threaded: bool, length: str) -> None:
    """'²' passes str.isdigit() and makes int() raise; ' 7' and '7_0' int() takes; 19 nines
    overflow the int64 size sums at once (18 nines in ten requests). None of them is a size: the
    response's falls back to the bytes sent, the request's is not observed, and nothing fails (a
    raise in finish once left the request unfinished and its gauge up)."""

    def odd(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [*TEXT, ("Content-Length", length)])
        return [b"abc"]

    wsgi = ObservabilityMiddleware(odd, registry=registry, auto_configure_logging=False, access_log=False)
    for _ in range(2):  # the second request meets the parsed-lengths cache
        response = call_wsgi(
            wsgi,
            make_environ(
                PATH_INFO="/odd", REQUEST_METHOD="POST", CONTENT_LENGTH=length, **{"wsgi.multithread": threaded}
            ),
        )
        assert response.body == b"abc"
    labels = {"method": "POST", "endpoint": "/odd"}
    assert one(registry, "http_requests_total", status="200", **labels) == 2
    assert one(registry, "http_response_size_bytes_sum", **labels) == 6
    assert sum(series(registry, "http_request_size_bytes_count").values()) == 0
    assert one(registry, "http_requests_in_progress", method="POST") == 0
    assert failure_counts() == {}


@pytest.mark.parametrize("threaded", [True, False], ids=["multithread-locked", "single-writer-unlocked"])
def test_sizes_on_a_bucket_bound_fall_in_that_bucket(registry: Registry, threaded: bool) -> None:
    """le is inclusive: 100 bytes are in le=100, 101 in le=1000, on both write paths."""

    def sized(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = b"x" * int(environ["PATH_INFO"][1:])
        start_response("200 OK", [*TEXT, ("Content-Length", str(len(body)))])
        return [body]

    wsgi = ObservabilityMiddleware(
        sized, registry=registry, auto_configure_logging=False, access_log=False, routes=["/{n}"]
    )
    for n in (0, 100, 101, 1000, 10_001):
        call_wsgi(
            wsgi,
            make_environ(
                PATH_INFO=f"/{n}", REQUEST_METHOD="PUT", CONTENT_LENGTH=str(n), **{"wsgi.multithread": threaded}
            ),
        )
    labels = {"method": "PUT", "endpoint": "/{n}"}
    for name in ("http_response_size_bytes_bucket", "http_request_size_bytes_bucket"):
        cumulative = {le: one(registry, name, le=le, **labels) for le in ("100.0", "1000.0", "10000.0", "+Inf")}
        assert cumulative == {"100.0": 2, "1000.0": 4, "10000.0": 4, "+Inf": 5}, name


def test_in_progress_counts_requests_being_served(registry: Registry) -> None:
    inside = threading.Event()
    release = threading.Event()
    seen = []

    def blocking(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", TEXT)
        inside.set()
        release.wait(5)
        yield b"done"

    wsgi = ObservabilityMiddleware(blocking, registry=registry, auto_configure_logging=False)
    threads = [threading.Thread(target=call_wsgi, args=(wsgi, make_environ(PATH_INFO="/b"))) for _ in range(3)]
    for t in threads:
        t.start()
    inside.wait(5)
    time.sleep(0.1)
    seen.append(one(registry, "http_requests_in_progress", method="GET"))
    release.set()
    for t in threads:
        t.join()
    seen.append(one(registry, "http_requests_in_progress", method="GET"))
    assert seen == [3, 0]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/users/42", "/users/{id}"),
        ("/users/42/orders/7", "/users/{id}/orders/{id}"),
        ("/orders/3f2b1c9e-8a7d-4c6b-9e1f-0a2b3c4d5e6f", "/orders/{uuid}"),
        ("/orders/3f2b1c9e8a7d4c6b9e1f0a2b3c4d5e6f", "/orders/{uuid}"),
        ("/blobs/deadbeefdeadbeef1234", "/blobs/{hex}"),
        ("/users/alice@example.com/profile", "/users/{email}/profile"),
        ("/keys/AKIAIOSFODNN7EXAMPLE1", "/keys/{token}"),
        ("/reports/2026-11-22", "/reports/{id}"),
        ("/api/v2/search", "/api/v2/search"),
        ("/", "/"),
        ("/static/app.css", "/static/app.css"),
    ],
)
def test_normaliser(path: str, expected: str) -> None:
    assert normalise(path) == expected


def test_route_table_wins_over_the_normaliser(registry: Registry) -> None:
    wsgi = metrics_app(registry, routes=("/files/{path:path}", "/users/{name}"))
    get(wsgi, "/files/a/b/c.txt")
    get(wsgi, "/users/alice")
    get(wsgi, "/users/alice/")
    endpoints = {dict(lb)["endpoint"] for lb in series(registry, "http_requests_total")}
    assert endpoints == {"/files/{path}", "/users/{name}"}  # every endpoint spells a parameter {name}
    get(wsgi, "/scanner/probe.php")  # matches no declared route: unmatched, whatever it answered
    endpoints = {dict(lb)["endpoint"] for lb in series(registry, "http_requests_total")}
    assert endpoints == {"/files/{path}", "/users/{name}", UNMATCHED}
    table = RouteTable(["/a/{x}"])
    assert table.match("/a/1") == "/a/{x}" and table.match("/a/1/2") is None


def test_adapter_template_wins_and_mount_point_is_kept(registry: Registry) -> None:
    def routed(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["softfactory_obs.route"] = "/items/<int:id>"
        start_response("200 OK", TEXT)
        return [b""]

    wsgi = ObservabilityMiddleware(routed, registry=registry, auto_configure_logging=False, routes=("/items/{x}",))
    call_wsgi(wsgi, make_environ(SCRIPT_NAME="/shop", PATH_INFO="/items/9"))
    assert one(registry, "http_requests_total", method="GET", endpoint="/shop/items/<int:id>", status="200") == 1


def test_unmatched_404s_from_scanners_add_no_series(registry: Registry) -> None:
    def not_found(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", TEXT)
        return [b"no"]

    wsgi = ObservabilityMiddleware(not_found, registry=registry, auto_configure_logging=False)
    for path in ["/.env", "/wp-admin/setup.php", "/../../etc/passwd", "/${jndi:ldap://x}", "/caf\xc3\xa9/\xff"]:
        call_wsgi(wsgi, make_environ(PATH_INFO=path))
    assert set(series(registry, "http_requests_total")) == {
        (("endpoint", UNMATCHED), ("method", "GET"), ("status", "404"))
    }
    assert one(registry, "http_requests_total", method="GET", endpoint=UNMATCHED, status="404") == 5


def test_head_and_options_share_the_get_template(registry: Registry) -> None:
    wsgi = metrics_app(registry, routes=("/users/{name}",))
    for method in ("GET", "HEAD", "OPTIONS"):
        get(wsgi, "/users/bob", REQUEST_METHOD=method)
    endpoints = {(dict(lb)["method"], dict(lb)["endpoint"]) for lb in series(registry, "http_requests_total")}
    assert endpoints == {("GET", "/users/{name}"), ("HEAD", "/users/{name}"), ("OPTIONS", "/users/{name}")}


def test_skip_paths_and_methods(registry: Registry) -> None:
    wsgi = metrics_app(
        registry, skip_paths=("/healthcheck", "^/static/", re.compile(r".*\.ico$")), skip_methods=("options",)
    )
    for path in ("/healthcheck", "/static/a.js", "/favicon.ico"):
        get(wsgi, path)
    get(wsgi, "/counted", REQUEST_METHOD="OPTIONS")
    get(wsgi, "/counted")
    assert {dict(lb)["endpoint"] for lb in series(registry, "http_requests_total")} == {"/counted"}
    assert one(registry, "http_requests_in_progress", method="GET") == 0


def test_telemetry_routes_are_not_counted(registry: Registry) -> None:
    wsgi = metrics_app(registry)
    get(wsgi, "/metrics")
    get(wsgi, "/metrics")
    assert series(registry, "http_requests_total") == {}


def test_cap_folds_new_endpoints_into_overflow(registry: Registry, logs: LogCapture) -> None:
    wsgi = metrics_app(registry, max_endpoints=10)
    for _ in range(2):  # the second pass finds every path's series in the per-path cache
        for n in range(40):
            get(wsgi, f"/page-{chr(97 + n % 26)}{chr(97 + n // 26)}")
    endpoints = {dict(lb)["endpoint"] for lb in series(registry, "http_requests_total")}
    assert len(endpoints) == 11 and OVERFLOW in endpoints
    assert one(registry, "softfactory_obs_endpoint_overflow_total") == 60
    assert one(registry, "http_requests_total", method="GET", endpoint=OVERFLOW, status="200") == 60
    assert sum(series(registry, "http_requests_total").values()) == 80
    warnings = [r for r in logs.lines() if r["level"] == "WARNING" and "cap" in r["message"]]
    assert len(warnings) == 1


def test_cap_holds_across_processes(tmp_path: Path) -> None:
    directory = str(tmp_path)
    caps = EndpointCap(25, lambda: directory)
    rng = random.Random(3)
    words = [f"/w{rng.randrange(10**9)}" for _ in range(200)]

    def worker(n: int) -> None:
        cap = EndpointCap(25, lambda: directory)
        for w in words[n::4]:
            cap.admit(w)

    for n in range(4):
        assert in_child(lambda n=n: worker(n)) == 0
    admitted = (tmp_path / "endpoints.txt").read_text().splitlines()
    assert len(admitted) == 25 and len(set(admitted)) == 25
    assert caps.admit(admitted[0]) and not caps.admit("/brand-new")


def test_a_value_the_file_cannot_hold_as_it_is_takes_one_slot(tmp_path: Path) -> None:
    """A newline or a lone surrogate is written respelled; every worker must know that spelling,
    or each one meeting the value appends its own line and uses up another slot."""
    directory = str(tmp_path)
    odd = ["/a\nb", "/c\udcffd"]

    def worker() -> None:
        cap = EndpointCap(10, lambda: directory)
        assert all(cap.admit(v) for v in odd)

    for _ in range(3):
        assert in_child(worker) == 0
    assert (tmp_path / "endpoints.txt").read_text().splitlines() == ["/a b", "/c?d"]


def test_huge_paths_never_become_labels(registry: Registry) -> None:
    wsgi = metrics_app(registry)
    get(wsgi, "/" + "segment" * 100)
    assert {dict(lb)["endpoint"] for lb in series(registry, "http_requests_total")} == {OVERFLOW}


@pytest.mark.gunicorn
def test_10000_random_paths_at_4_workers_stay_under_the_cap(tmp_path: Path) -> None:
    env = {
        "SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "store"),
        "SOFTFACTORY_OBS_MAX_ENDPOINTS": "50",
        "SOFTFACTORY_OBS_ACCESS_LOG": "0",
    }
    tests_dir = Path(__file__).parent
    with Gunicorn(
        tmp_path, app="catchall_app:app", workers=4, PYTHONPATH=f"{tests_dir}:{tests_dir.parent}", **env
    ) as server:
        rng = random.Random(11)
        paths = [
            f"/{rng.choice(['a', 'b', 'c', 'd'])}{rng.randrange(10**6):x}z/{rng.randrange(9)}" for _ in range(10_000)
        ]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda p: http_get(server.port, p)[0], paths))
        assert statuses.count(200) == 10_000
        metrics = scrape(server.port)
        endpoints = {dict(lb)["endpoint"] for name, lb in metrics if name == "http_requests_total"}
        assert len(endpoints) <= 50 + 1 and OVERFLOW in endpoints
        total = sum(v for (name, _), v in metrics.items() if name == "http_requests_total")
        assert total == 10_000  # folded, never dropped
        folded = metrics[("softfactory_obs_endpoint_overflow_total", ())]
        assert folded == 10_000 - sum(
            v for (name, lb), v in metrics.items() if name == "http_requests_total" and dict(lb)["endpoint"] != OVERFLOW
        )


@pytest.mark.gunicorn
def test_mixed_workload_counts_are_exact_across_4_workers(tmp_path: Path) -> None:
    workload = {  # path -> (endpoint, status, count)
        "/api/users/5": ("/api/users/{user_id}", "200", 60),
        "/api/users/abc": ("__unmatched__", "404", 25),
        "/api/error": ("/api/error", "500", 15),
        "/api/stream?chunks=3": ("/api/stream", "200", 10),
        "/api/slow?seconds=1.05": ("/api/slow", "200", 4),
        "/api/products": ("/api/products", "200", 40),
    }
    with Gunicorn(tmp_path, workers=4, SOFTFACTORY_OBS_METRICS_DIR=str(tmp_path / "store")) as server:
        jobs = [path for path, (_, _, n) in workload.items() for _ in range(n)]
        random.Random(5).shuffle(jobs)
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda p: http_get(server.port, p)[0], jobs))
        assert sorted(statuses) == sorted(int(workload[p][1]) for p in jobs)
        metrics = scrape(server.port)
    for endpoint, status, n in workload.values():
        assert metrics[("http_requests_total", (("endpoint", endpoint), ("method", "GET"), ("status", status)))] == n
        assert metrics[("http_request_duration_seconds_count", (("endpoint", endpoint), ("method", "GET")))] == n
    assert (
        metrics[
            (
                "http_request_exceptions_total",
                (("endpoint", "/api/error"), ("exception", "RuntimeError"), ("method", "GET")),
            )
        ]
        == 15
    )
    assert metrics[("http_slow_requests_total", (("endpoint", "/api/slow"), ("method", "GET")))] == 4
    assert metrics[("http_requests_in_progress", (("method", "GET"),))] == 0


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def openmetrics(wsgi: Any) -> dict[str, Any]:
    body = call_wsgi(wsgi, make_environ(PATH_INFO="/metrics", HTTP_ACCEPT="application/openmetrics-text")).body
    return {f.name: f for f in parse_openmetrics(body.decode())}


def test_exemplars_carry_the_trace_id_in_openmetrics_only(registry: Registry) -> None:
    wsgi = metrics_app(registry, routes=("/users/{id}",), exemplar_interval_seconds=0)
    get(wsgi, "/users/1", HTTP_TRACEPARENT=TRACEPARENT)
    get(wsgi, "/users/2", HTTP_X_REQUEST_ID="req-abc")  # no traceparent: the request id is the exemplar
    body = call_wsgi(
        wsgi, make_environ(PATH_INFO="/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    ).body.decode()
    families = {f.name: f for f in parse_openmetrics(body)}
    [counter] = [s for s in families["http_requests"].samples if s.name == "http_requests_total"]
    assert counter.exemplar is not None and counter.exemplar.labels == {"request_id": "req-abc"}
    buckets = [s for s in families["http_request_duration_seconds"].samples if s.exemplar is not None]
    assert {tuple(s.exemplar.labels.items()) for s in buckets} <= {
        (("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736"),),
        (("request_id", "req-abc"),),
    }
    assert all(0 <= s.exemplar.value < 1 for s in buckets)
    text = call_wsgi(wsgi, make_environ(PATH_INFO="/metrics")).body.decode()
    assert "4bf92f35" not in text and "req-abc" not in text  # the text format has no exemplars


def test_newest_exemplar_wins_across_processes(tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "store"))
    wsgi = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)

    def one_request(rid: str) -> None:
        call_wsgi(wsgi, make_environ(PATH_INFO="/users/9", HTTP_X_REQUEST_ID=rid))

    one_request("parent")  # within the exemplar interval of what follows: a forked worker must not inherit it
    answered, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # a live worker that answered first
        try:
            one_request("older")
        finally:
            os.write(answered[1], b"x")
            os.read(release[0], 1)
            os._exit(0)
    os.read(answered[0], 1)
    time.sleep(0.01)
    try:
        assert in_child(lambda: one_request("newer")) == 0  # a worker that answered later, then died
        body = call_wsgi(wsgi, make_environ(PATH_INFO="/metrics", HTTP_ACCEPT="application/openmetrics-text")).body
        families = {f.name: f for f in parse_openmetrics(body.decode())}
        [counter] = [s for s in families["http_requests"].samples if s.name == "http_requests_total"]
        assert counter.value == 3
        assert counter.exemplar is not None and counter.exemplar.labels == {"request_id": "newer"}
    finally:
        os.write(release[1], b"x")
        os.waitpid(pid, 0)


@pytest.mark.parametrize("threaded", [True, False], ids=["multithread-locked", "single-writer-unlocked"])
def test_an_exemplar_is_kept_for_the_interval_and_each_bucket_has_its_own(registry: Registry, threaded: bool) -> None:
    # A second apart at least: a busy CI host must not stretch the first two requests past the interval.
    wsgi = metrics_app(registry, exemplar_interval_seconds=1.0, duration_buckets=(0.1, 1.0))

    def request(path: str, rid: str) -> None:
        get(wsgi, path, HTTP_X_REQUEST_ID=rid, **{"wsgi.multithread": threaded})

    def exemplars() -> dict[tuple[str, str], str]:
        families = openmetrics(wsgi)
        found = [s for s in families["http_requests"].samples if s.name == "http_requests_total"]
        found += [s for s in families["http_request_duration_seconds"].samples if s.name.endswith("_bucket")]
        return {
            (s.labels["endpoint"], s.labels.get("le", "count")): s.exemplar.labels["request_id"]
            for s in found
            if s.exemplar
        }

    request("/users/1", "first")
    request("/users/1", "second")  # within the interval: the first stays
    request("/slow", "slow")  # another series has its own
    slow = {("/slow", "count"): "slow", ("/slow", "1.0"): "slow"}
    assert exemplars() == {("/users/{id}", "count"): "first", ("/users/{id}", "0.1"): "first", **slow}
    time.sleep(1.0)
    request("/users/1", "third")
    assert exemplars() == {("/users/{id}", "count"): "third", ("/users/{id}", "0.1"): "third", **slow}
    assert one(registry, "http_requests_total", method="GET", endpoint="/users/{id}", status="200") == 3


def test_a_slow_request_gets_its_bucket_exemplar_within_the_interval(registry: Registry) -> None:
    wsgi = metrics_app(registry, exemplar_interval_seconds=60, duration_buckets=(0.1, 1.0), routes=("/{page}",))
    get(wsgi, "/fast", HTTP_X_REQUEST_ID="fast")
    get(wsgi, "/slow", HTTP_X_REQUEST_ID="slow")  # the same series (/{page}), another bucket
    buckets = [s for s in openmetrics(wsgi)["http_request_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["le"]: s.exemplar.labels["request_id"] for s in buckets if s.exemplar} == {
        "0.1": "fast",
        "1.0": "slow",
    }


def test_exemplars_can_be_switched_off(registry: Registry) -> None:
    wsgi = metrics_app(registry, exemplars=False)
    get(wsgi, "/users/1", HTTP_TRACEPARENT=TRACEPARENT)
    body = call_wsgi(wsgi, make_environ(PATH_INFO="/metrics", HTTP_ACCEPT="application/openmetrics-text")).body
    assert b'http_requests_total{endpoint="/users/{id}"' in body  # the control: the request was counted
    assert b"trace_id" not in body


def test_default_labels_static_and_allow_listed(registry: Registry) -> None:
    tenants = ("acme", "globex")
    wsgi = metrics_app(
        registry,
        default_labels={
            "region": "eu-west-1",
            "tenant": (lambda environ: environ.get("HTTP_X_TENANT"), set(tenants)),
        },
    )
    get(wsgi, "/users/1", HTTP_X_TENANT="acme")
    for n in range(50):  # a client inventing tenants cannot add series
        get(wsgi, "/users/1", HTTP_X_TENANT=f"evil-{n}")
    get(wsgi, "/raise", HTTP_X_TENANT="globex")
    got = series(registry, "http_requests_total")
    assert {(dict(lb)["tenant"], dict(lb)["region"]) for lb in got} == {
        ("acme", "eu-west-1"),
        ("other", "eu-west-1"),
        ("globex", "eu-west-1"),
    }
    assert (
        one(
            registry,
            "http_requests_total",
            method="GET",
            endpoint="/users/{id}",
            status="200",
            region="eu-west-1",
            tenant="other",
        )
        == 50
    )
    assert (
        one(
            registry,
            "http_request_exceptions_total",
            method="GET",
            endpoint="/raise",
            exception="KeyError",
            region="eu-west-1",
            tenant="globex",
        )
        == 1
    )
    assert one(registry, "http_requests_in_progress", method="GET", region="eu-west-1", tenant="acme") == 0


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"status": "x"}, "already used by the HTTP metrics"),
        ({"bad-name": "x"}, "not a valid label name"),
        ({"tenant": lambda environ: "x"}, "allowed values"),
        ({"tenant": (lambda environ: "x", "acme")}, "allowed values"),
    ],
)
def test_default_labels_are_validated(labels: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ObservabilityMiddleware(app, registry=Registry(), auto_configure_logging=False, default_labels=labels)

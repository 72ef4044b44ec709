"""/metrics: content negotiation, gzip, methods, escaping, and the real promtool's verdict."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from helpers import call_wsgi, make_environ, require_binary
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as their_text
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.openmetrics import exposition as their_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Exemplar as TheirExemplar

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.metrics.exposition import MetricsApp
from softfactory_obs.metrics.families import Exemplar, Family
from softfactory_obs.metrics.formats import OPENMETRICS, TEXT, encode_openmetrics, encode_text, negotiate
from softfactory_obs.store.metrics import Counter, Gauge, Histogram, Registry

HOSTILE_LABELS = [
    'quote"d',
    "back\\slash",
    "new\nline",
    "carriage\rreturn",
    "caf\u00e9 \u2603",
    "/caf\udcff",
    "nul\x00byte",
    "tab\there",
]


@pytest.fixture
def registry() -> Registry:
    registry = Registry()
    c = Counter("orders_total", "Orders placed", ["shop"], registry=registry)
    h = Histogram("render_seconds", "Page render time", ["shop"], buckets=(0.1, 1.0), registry=registry)
    Gauge("inventory_items", "Items in stock", ["shop"], registry=registry)
    for label in HOSTILE_LABELS:
        c.labels(label).inc()
        h.labels(label).observe(0.5)
    return registry


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", TEXT),
        ("*/*", TEXT),
        ("text/plain;version=0.0.4", TEXT),
        ("text/plain; version=1.0.0", TEXT),
        ("application/openmetrics-text;version=1.0.0", OPENMETRICS),
        ("application/openmetrics-text; version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1", OPENMETRICS),
        ("text/plain;q=1,application/openmetrics-text;q=0.1", TEXT),
        ("application/openmetrics-text;q=0,text/plain", TEXT),
        ("application/openmetrics-text; version=abc", OPENMETRICS),  # prometheus_client raises here (a 500)
        ("text/plain; version=x.y", TEXT),
        ("application/openmetrics-text;q=banana", TEXT),
        ("garbage;;;,,", TEXT),
    ],
)
def test_negotiation_never_fails(accept: str, expected: str) -> None:
    assert negotiate(accept) == expected


def _get(app: Any, **env: Any) -> tuple[str, dict[str, str], bytes]:
    resp = call_wsgi(app, make_environ(PATH_INFO="/metrics", **env))
    return resp.status, {k.lower(): v for k, v in resp.headers}, resp.body


def test_text_and_openmetrics_bodies_parse_strictly(registry: Registry) -> None:
    app = MetricsApp(registry)
    status, headers, body = _get(app)
    assert status == "200 OK" and headers["content-type"] == TEXT
    assert headers["cache-control"] == "no-store"
    text_labels = {s.labels.get("shop") for f in parse_text(body.decode()) for s in f.samples if "shop" in s.labels}
    status, headers, body = _get(app, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert headers["content-type"] == OPENMETRICS
    assert body.endswith(b"# EOF\n")
    om_families = parse_openmetrics(body.decode())
    om_labels = {s.labels.get("shop") for f in om_families for s in f.samples if "shop" in s.labels}
    expected = {label.encode("utf-8", "replace").decode("utf-8") for label in HOSTILE_LABELS}
    assert text_labels == expected
    assert om_labels == expected
    assert b"_created" not in body


def test_openmetrics_drops_sums_that_cannot_be_counters(registry: Registry) -> None:
    """OpenMetrics: a histogram's _sum is a counter (never negative) and absent with a negative
    bucket threshold; _count goes with it (a strict parser wants both or neither). Buckets, the
    other label sets and the text format are untouched."""
    offsets = Histogram("offset_seconds", "Clock offset", ["peer"], buckets=(-1.0, 0.0, 1.0), registry=registry)
    Histogram("signed_zero_seconds", "A -0.0 bound is no negative one", buckets=(-0.0, 1.0), registry=registry).observe(
        0.5
    )
    offsets.labels("a").observe(-5.0)
    offsets.labels("a").observe(0.5)
    deltas = Histogram("delta_bytes", "Size change", ["kind"], buckets=(0.0, 10.0), registry=registry)
    deltas.labels("shrunk").observe(-3.0)
    deltas.labels("grown").observe(4.0)
    app = MetricsApp(registry)
    _, _, body = _get(app, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in parse_openmetrics(body.decode())}  # raised before: negative _sum
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for name in ("offset_seconds", "delta_bytes")
        for s in families[name].samples
    }
    assert samples[("offset_seconds_bucket", (("le", "-1.0"), ("peer", "a")))] == 1
    assert samples[("offset_seconds_bucket", (("le", "+Inf"), ("peer", "a")))] == 2
    assert ("offset_seconds_sum", (("peer", "a"),)) not in samples
    assert ("offset_seconds_count", (("peer", "a"),)) not in samples
    assert samples[("delta_bytes_bucket", (("kind", "shrunk"), ("le", "0.0")))] == 1
    assert ("delta_bytes_sum", (("kind", "shrunk"),)) not in samples
    assert ("delta_bytes_count", (("kind", "shrunk"),)) not in samples
    assert samples[("delta_bytes_sum", (("kind", "grown"),))] == 4.0
    assert samples[("delta_bytes_count", (("kind", "grown"),))] == 1
    for kept in ("render_seconds", "signed_zero_seconds"):
        assert {s.name for s in families[kept].samples} >= {f"{kept}_sum", f"{kept}_count"}
    _, _, text = _get(app)
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_text(text.decode()) for s in f.samples}
    assert by_name[("offset_seconds_sum", (("peer", "a"),))] == -4.5
    assert by_name[("delta_bytes_count", (("kind", "shrunk"),))] == 1


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda x: round(x, 3))


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=6, unique=True), st.lists(st.lists(finite, max_size=8), max_size=3))
def test_any_histogram_is_a_valid_openmetrics_scrape(bounds: list[float], series: list[list[float]]) -> None:
    """Whatever the bounds and observations (negatives too), a strict OpenMetrics parser accepts
    the scrape, every bucket is exact, and _sum/_count appear exactly where the format allows."""
    registry = Registry()
    hist = Histogram("spread", "x", ["s"], buckets=bounds, registry=registry)  # no unit: micro-unit sums
    for i, values in enumerate(series):
        for v in values:
            hist.labels(str(i)).observe(v)
    _, _, body = _get(MetricsApp(registry), HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    family = next(f for f in parse_openmetrics(body.decode()) if f.name == "spread")
    got = {(s.name, s.labels.get("s"), s.labels.get("le")): s.value for s in family.samples}
    negative_bound = min(bounds) < 0
    for i, values in enumerate(series):
        label = str(i)
        if not values:
            continue
        for bound in [*sorted(bounds), float("inf")]:
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            assert got[("spread_bucket", label, le)] == sum(1 for v in values if v <= bound)
        total = sum(round(v * 1_000_000) for v in values)  # as the store sums them
        has_sum = ("spread_sum", label, None) in got
        assert has_sum == (not negative_bound and total >= 0)
        assert has_sum == (("spread_count", label, None) in got)


def test_name_filter_as_prometheus_client_answers_it(registry: Registry) -> None:
    app = MetricsApp(registry)

    def names(query: str, **env: Any) -> dict[str, set[str]]:
        status, _, body = _get(app, QUERY_STRING=query, **env)
        assert status == "200 OK"
        parse = parse_openmetrics if env else parse_text
        return {f.name: {s.name for s in f.samples} for f in parse(body.decode())}

    assert names("name[]=orders_total") == {"orders": {"orders_total"}}
    histogram = {"render_seconds_bucket", "render_seconds_count", "render_seconds_sum"}
    assert names("name[]=render_seconds&name%5B%5D=orders_total") == {
        "render_seconds": histogram,
        "orders": {"orders_total"},
    }
    assert names("name[]=render_seconds_count") == {"render_seconds": {"render_seconds_count"}}
    assert names("name[]=nothing_by_that_name") == {}
    assert names("name[]=render_seconds", HTTP_ACCEPT="application/openmetrics-text") == {"render_seconds": histogram}
    everything = names("")
    assert {"orders", "render_seconds", "inventory_items"} <= set(everything)
    assert names("other=1") == everything  # no name[]: no filter
    # The parameter is the public's: undecodable and many names answer 200, filtered.
    assert names("name[]=%ff&name[]=caf%C3%A9&name[]=orders_total&name[]") == {"orders": {"orders_total"}}
    assert names("&".join(f"name[]=x{i}" for i in range(5000)) + "&name[]=orders_total") == {"orders": {"orders_total"}}


def test_gzip_only_when_accepted(registry: Registry) -> None:
    app = MetricsApp(registry)
    _, _, plain = _get(app)
    _, headers, zipped = _get(app, HTTP_ACCEPT_ENCODING="br, gzip;q=0.8")
    assert headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in headers["vary"]
    strip = lambda b: [x for x in b.decode().splitlines() if "softfactory_obs_scrape" not in x]  # noqa: E731
    assert strip(gzip.decompress(zipped)) == strip(plain)
    for refusal in ("gzip;q=0", "identity", ""):
        _, headers, _ = _get(app, HTTP_ACCEPT_ENCODING=refusal)
        assert "content-encoding" not in headers


def test_methods(registry: Registry) -> None:
    app = MetricsApp(registry)
    status, headers, body = _get(app, REQUEST_METHOD="HEAD")
    assert status == "200 OK" and body == b"" and int(headers["content-length"]) > 0
    status, headers, _ = _get(app, REQUEST_METHOD="POST")
    assert status.startswith("405") and headers["allow"] == "GET, HEAD"


def test_mounted_only_at_the_exact_path(registry: Registry) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"app"]

    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    for variant in ("/metrics/", "/metrics/x", "//metrics", "/METRICS", "/metrics;x"):
        assert call_wsgi(mw, make_environ(PATH_INFO=variant)).body == b"app", variant
    assert b"orders_total" in call_wsgi(mw, make_environ(PATH_INFO="/metrics")).body


def test_promtool_finds_no_problem(registry: Registry) -> None:
    promtool = require_binary("promtool")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        environ["softfactory_obs.route"] = "/api/items/{id}"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = ObservabilityMiddleware(app, registry=registry, auto_configure_logging=False, access_log=False)
    for _ in range(3):
        call_wsgi(mw, make_environ(PATH_INFO="/api/items/1"))
    body = call_wsgi(mw, make_environ(PATH_INFO="/metrics")).body
    assert b"http_requests_total" in body and b"softfactory_obs_store_shards" in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert result.stdout.decode().strip() == "" and result.stderr.decode().strip() == ""


COEXIST = """
import os, sys
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from prometheus_client import Counter as PromCounter
legacy = PromCounter(sys.argv[2], "An app metric kept in prometheus_client")
legacy.inc(3)
from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.store.metrics import Registry

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

try:
    mw = ObservabilityMiddleware(app, registry=Registry(), auto_configure_logging=False)
except ValueError as exc:
    print("REFUSED", exc)
    sys.exit(0)
body = b"".join(mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics"}, lambda s, h, e=None: None))
sys.stdout.write(body.decode())
"""


def test_prometheus_client_multiprocess_metrics_are_exposed_beside_ours(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-c", COEXIST, str(tmp_path), "legacy_jobs_total"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "legacy_jobs_total 3.0" in out
    assert "# TYPE http_requests_total counter" in out
    assert out.count("# TYPE legacy_jobs_total") == 1


def test_a_name_clash_with_prometheus_client_is_refused_at_start(tmp_path: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-c", COEXIST, str(tmp_path), "http_requests_total"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out.startswith("REFUSED metric name(s) http_requests exist both in softfactory_obs and in prometheus_client")


def held_open(registry: Registry) -> threading.Event:
    """Every merge of ``registry`` waits (at most 5 s) until the returned event is set."""
    original = registry.snapshot
    gate = threading.Event()

    def slow_snapshot() -> Any:
        gate.wait(5)
        return original()

    registry.snapshot = slow_snapshot  # type: ignore[method-assign]
    return gate


def test_simultaneous_scrapes_in_one_process_share_one_merge(registry: Registry) -> None:
    app = MetricsApp(registry, max_concurrent=32)
    gate = held_open(registry)  # the first merge stays open until every scraper has arrived
    bodies: list[bytes] = []
    threads = [threading.Thread(target=lambda: bodies.append(app.render()[0])) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join()
    # The first scrape leads a merge; the 15 that arrive while it runs share the next one (a merge
    # that started before a request arrived is never reused: it could be older than what that
    # scraper already saw from another worker).
    assert app.merges == 2
    unstamped = {b"\n".join(x for x in b.splitlines() if b"softfactory_obs_scrape" not in x) for b in bodies}
    assert len(bodies) == 16 and len(unstamped) == 1


def test_scrapes_beyond_the_limit_get_503(registry: Registry) -> None:
    app = MetricsApp(registry, max_concurrent=2, timeout=0.2)
    gate = held_open(registry)
    statuses: list[str] = []
    threads = [threading.Thread(target=lambda: statuses.append(_get(app)[0])) for _ in range(5)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the waiting follower gives up after 0.2 s; the others were refused at once
    gate.set()
    for t in threads:
        t.join()
    assert statuses.count("200 OK") == 1
    assert statuses.count("503 Service Unavailable") == 4


def test_a_scrape_waits_no_longer_than_prometheus_does(registry: Registry) -> None:
    app = MetricsApp(registry, timeout=10.0)
    gate = held_open(registry)
    answers: dict[str, tuple[str, float]] = {}

    def scrape(name: str, **env: Any) -> None:
        started = time.monotonic()
        status = _get(app, **env)[0]
        answers[name] = (status, time.monotonic() - started)

    leader = threading.Thread(target=scrape, args=("leader",))
    leader.start()
    time.sleep(0.2)  # the leader's merge is running
    waiters = [
        threading.Thread(target=scrape, args=(name,), kwargs=env)
        for name, env in (
            ("budget", {"HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS": "0.3"}),
            ("garbage", {"HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS": "nan"}),
            ("none", {}),
        )
    ]
    for t in waiters:
        t.start()
    time.sleep(1.0)
    gate.set()
    for t in [leader, *waiters]:
        t.join()
    assert answers["budget"][0] == "503 Service Unavailable" and answers["budget"][1] < 0.9
    assert answers["garbage"][0] == answers["none"][0] == answers["leader"][0] == "200 OK"
    assert answers["none"][1] >= 0.9  # waited for the next merge, within the app's own 10 s


def test_a_scrape_never_gets_a_merge_that_read_the_store_before_it_arrived() -> None:
    registry = Registry()
    counter = Counter("fresh_total", "x", registry=registry)
    counter.inc()
    app = MetricsApp(registry)
    original = registry.snapshot
    read_done, gate = threading.Event(), threading.Event()

    def read_then_stall() -> Any:
        snap = original()
        read_done.set()
        gate.wait(5)
        return snap

    registry.snapshot = read_then_stall  # type: ignore[method-assign]
    first: list[bytes] = []
    leader = threading.Thread(target=lambda: first.append(app.render()[0]))
    leader.start()
    read_done.wait(5)
    counter.inc()  # happens after the running merge read the store
    registry.snapshot = original  # type: ignore[method-assign]
    second: list[bytes] = []
    follower = threading.Thread(target=lambda: second.append(app.render()[0]))
    follower.start()
    time.sleep(0.1)
    gate.set()
    leader.join()
    follower.join()
    assert b"fresh_total 1.0" in first[0]
    assert b"fresh_total 2.0" in second[0]  # not the stale merge it could have piggy-backed on


def test_our_encoders_write_exactly_what_prometheus_client_writes() -> None:
    """The same families through both: byte for byte, in both formats (help text, label values,
    values from NaN to 1e+21, exemplars, histograms)."""
    values = [0.0, 1.0, -2.5, 0.1, 123456.0, 1234567.0, 1e21, 3.14e-7, float("inf"), float("-inf"), float("nan")]
    ours_counter = Family("jobs_total", 'Jobs "done"\\ so far\nand more', "counter", ["kind"])
    theirs_counter = CounterMetricFamily("jobs_total", 'Jobs "done"\\ so far\nand more', labels=["kind"])
    ours_gauge = Family("depth", "Queue depth", "gauge", ["queue", "zone"])
    theirs_gauge = GaugeMetricFamily("depth", "Queue depth", labels=["queue", "zone"])
    valid = [label for label in HOSTILE_LABELS if "\udcff" not in label]
    for i, label in enumerate(valid):  # a lone surrogate: prometheus_client raises, we write "?"
        value = values[i % len(values)]
        ex = Exemplar({"trace_id": label}, 0.5, 1700000000.25) if i % 2 else None
        ours_counter.add([label], abs(value) if value == value else 1.0, ex)
        theirs_counter.add_metric(
            [label],
            abs(value) if value == value else 1.0,
            exemplar=TheirExemplar({"trace_id": label}, 0.5, 1700000000.25) if i % 2 else None,
        )
    for i, value in enumerate(values):
        ours_gauge.add([f"q{i}", "z"], value)
        theirs_gauge.add_metric([f"q{i}", "z"], value)
    ours_hist = Family("render_seconds", "Render time", "histogram", ["page"])
    theirs_hist = HistogramMetricFamily("render_seconds", "Render time", labels=["page"])
    buckets = [
        ("0.1", 2.0, Exemplar({"request_id": "r1"}, 0.05, 1700000000.5)),
        ("1.0", 5.0, None),
        ("+Inf", 6.0, None),
    ]
    ours_hist.add_histogram(["/a"], buckets, 3.25)
    theirs_hist.add_metric(
        ["/a"],
        [("0.1", 2.0, TheirExemplar({"request_id": "r1"}, 0.05, 1700000000.5)), ("1.0", 5.0), ("+Inf", 6.0)],
        3.25,
    )
    ours = [ours_counter, ours_gauge, ours_hist]

    class Theirs:
        def collect(self) -> Any:
            return [theirs_counter, theirs_gauge, theirs_hist]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Theirs())
    assert encode_openmetrics(ours) == their_openmetrics.generate_latest(registry)
    for family in (theirs_counter, theirs_hist):  # the text format has no exemplars
        family.samples[:] = [s._replace(exemplar=None) for s in family.samples]
    assert encode_text(ours) == their_text.generate_latest(registry)
    stray = Family("x", "y", "gauge", ["l"])
    stray.add(["caf\udcff"], 1)
    assert encode_text([stray]).endswith(b'x{l="caf?"} 1.0\n')

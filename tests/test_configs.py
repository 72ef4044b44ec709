"""configs/ proven against the real tools: promtool, amtool, and a real Prometheus scraping the demo."""

from __future__ import annotations

import io
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from helpers import call_wsgi, free_port, make_environ, require_binary
from servers import Gunicorn, RedisServer, get, query, uvicorn

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.logs import configure_logging

CONFIGS = Path(__file__).resolve().parent.parent / "softfactory_obs" / "configs"  # configs/ links here


def run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_prometheus_config_and_rules_are_valid() -> None:
    promtool = require_binary("promtool")
    assert "SUCCESS" in run(promtool, "check", "config", str(CONFIGS / "prometheus.yml"))
    rules = CONFIGS / "rules"
    out = run(promtool, "check", "rules", *(str(rules / f) for f in ("recording.yml", "alerts.yml", "migration.yml")))
    assert out.count("SUCCESS") == 3


def test_alert_unit_tests_pass() -> None:
    promtool = require_binary("promtool")
    assert "SUCCESS" in run(promtool, "test", "rules", str(CONFIGS / "rules" / "alerts.test.yml"))


def test_kubernetes_variant_parses_and_uses_the_same_rules() -> None:
    # Debian's promtool lacks Kubernetes service discovery; check what can be checked.
    config = yaml.safe_load((CONFIGS / "prometheus-kubernetes.yml").read_text())
    assert config["rule_files"] == yaml.safe_load((CONFIGS / "prometheus.yml").read_text())["rule_files"]
    [job] = config["scrape_configs"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "pager-and-email"), ("warning", "slack-warnings"), ("info", "webhook-info")]
)
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    amtool = require_binary("amtool")
    assert "SUCCESS" in run(amtool, "check-config", str(CONFIGS / "alertmanager.yml"))
    out = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={CONFIGS / 'alertmanager.yml'}",
        f"severity={severity}",
        "job=shop",
    )
    assert out.strip().splitlines()[0] == receiver


def test_alertmanager_config_inlines_no_secret() -> None:
    text = (CONFIGS / "alertmanager.yml").read_text()
    config = yaml.safe_load(text)
    assert "smtp_auth_password" not in config["global"] and "slack_api_url" not in config["global"]
    assert config["global"]["smtp_auth_password_file"].startswith("/etc/alertmanager/secrets/")


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


def _recording_rules(file: str = "recording.yml") -> list[str]:
    groups = yaml.safe_load((CONFIGS / "rules" / file).read_text())["groups"]
    return [rule["record"] for group in groups for rule in group["rules"]]


def _dashboard_queries(job: str) -> list[str]:
    dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "softfactory.json").read_text())
    return [
        target["expr"].replace("$job", job).replace("$__rate_interval", "1m")
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def stamped() -> dict[str, str]:
    """The arrival stamp a proxy in front would add (nginx's "t=${msec}")."""
    return {"X-Request-Start": f"t={time.time():.3f}"}


def websocket_round(port: int) -> None:
    """Two accepted WebSocket connections and a denied one."""
    from websockets.exceptions import ConnectionClosedOK, InvalidStatus  # noqa: PLC0415
    from websockets.sync.client import connect  # noqa: PLC0415

    url = f"ws://127.0.0.1:{port}/ws/lobby"
    for _ in range(2):
        with connect(url) as ws:
            ws.send("bye")  # the app closes
            with pytest.raises(ConnectionClosedOK):
                ws.recv(timeout=10)
    with pytest.raises(InvalidStatus):
        connect(url + "?deny=1")


@pytest.mark.gunicorn
def test_prometheus_scrapes_the_demo_and_every_rule_and_panel_has_data(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    with (
        RedisServer() as redis_server,
        Gunicorn(
            tmp_path,
            workers=4,
            SOFTFACTORY_OBS_METRICS_DIR=str(tmp_path / "store"),
            SOFTFACTORY_OBS_REDIS_URL=redis_server.url(),
            SOFTFACTORY_OBS_QUEUE_TIME_HEADER="X-Request-Start",
        ) as app,
        uvicorn(tmp_path) as asgi,  # the WebSocket panels' data: the demo is WSGI
    ):
        config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(CONFIGS / "rules" / f) for f in ("recording.yml", "alerts.yml", "migration.yml")]
        config.pop("alerting")
        targets = [f"127.0.0.1:{app.port}", f"127.0.0.1:{asgi.port}"]  # one job: a WSGI and an ASGI instance
        config["scrape_configs"] = [{"job_name": "softfactory-app", "static_configs": [{"targets": targets}]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        server = subprocess.Popen(
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            # Traffic only once Prometheus scrapes the target, so every counter has an increase to rate().
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if len([r for r in query(port, 'up{job="softfactory-app"}') if r["value"][1] == "1"]) == 2:
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            # Healthy traffic, errors (5 of 71, above the 5 % alert) and six slow requests (over 5 %, so
            # p95 goes above 1 s), in three rounds a few scrapes apart: rate() needs growth between samples.
            paths = ["/api/users/1"] * 40 + ["/api/products"] * 20 + ["/api/error"] * 5 + ["/api/slow?seconds=1.05"] * 6
            statuses = []
            with ThreadPoolExecutor(6) as pool:
                for round_paths in (paths[0::3], paths[1::3], paths[2::3]):
                    statuses += list(pool.map(lambda p: get(app.port, p, headers=stamped())[0], round_paths))
                    websocket_round(asgi.port)
                    time.sleep(2.5)
            assert statuses.count(200) == 66
            deadline = time.monotonic() + 60
            missing = _recording_rules()
            while time.monotonic() < deadline:
                total = query(port, 'sum(http_requests_total{job="softfactory-app"})')
                # Request sizes are observed for requests with a body; this traffic sends none.
                migration = [r for r in _recording_rules("migration.yml") if "requests_body" not in r]
                queries = _recording_rules() + migration + _dashboard_queries("softfactory-app")
                missing = [q for q in queries if not _has_data(query(port, q))]
                if total and float(total[0]["value"][1]) == len(paths) and not missing:
                    break
                time.sleep(1)
            assert float(total[0]["value"][1]) == len(paths)
            # The migration rules republish the same traffic under the names the old exporters used.
            for theirs in (
                "flask_http_request_total",
                "django_http_responses_total_by_status_total",
                "starlette_requests_total",
            ):
                assert float(query(port, f'sum({theirs}{{job="softfactory-app"}})')[0]["value"][1]) == len(paths)
            errors = query(port, 'sum(flask_http_request_exceptions_total{job="softfactory-app",status="500"})')
            assert float(errors[0]["value"][1]) == paths.count("/api/error")
            # No dashboard panel shows "No data" because of a wrong metric name.
            assert missing == [], f"recording rules or dashboard queries without data (empty or NaN): {missing}"
            # The endpoint table merges its two queries (rate, p95) on their labels: one row per endpoint
            # with both values needs both queries to return the same label sets.
            dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "softfactory.json").read_text())
            [table] = [panel for panel in dashboard["panels"] if panel["title"] == "Endpoint performance"]
            assert table["transformations"][0]["id"] == "merge"
            rows = [
                sorted(
                    sorted((k, v) for k, v in r["metric"].items() if k != "__name__")
                    for r in query(port, target["expr"].replace("$job", "softfactory-app"))
                )
                for target in table["targets"]
            ]
            assert len(rows) == 2 and rows[0] == rows[1] and len(rows[0]) >= 3, rows
            wanted = {"HighErrorRate", "AvailabilityBudgetBurnFast", "HighResponseTime"}
            states: dict[str, str] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not wanted <= set(states):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=10) as resp:
                    alerts = json.load(resp)["data"]["alerts"]
                states = {a["labels"]["alertname"]: a["state"] for a in alerts}
                time.sleep(1)
            assert {states.get(name) for name in wanted} <= {"pending", "firing"}, states
        finally:
            server.terminate()
            server.wait(timeout=20)


def test_every_alert_has_severity_and_a_runbook_section() -> None:
    rules = yaml.safe_load((CONFIGS / "rules" / "alerts.yml").read_text())["groups"][0]["rules"]
    runbooks = (Path(__file__).resolve().parent.parent / "docs" / "RUNBOOKS.md").read_text()
    anchors = {line[3:].strip().lower().replace(" ", "") for line in runbooks.splitlines() if line.startswith("## ")}
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["runbook_url"].split("#")[1] in anchors, rule["alert"]
    names = {rule["alert"] for rule in rules}
    assert {
        "ServiceDown",
        "HighErrorRate",
        "HighResponseTime",
        "SlowRequests",
        "CacheHitRatioDegraded",
        "RedisDown",
        "HighMemoryUsage",
        "CriticalMemoryUsage",
        "HighCPUUsage",
        "ServiceRestart",
    } <= names


def test_dashboard_and_provisioning_are_consistent() -> None:
    dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "softfactory.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {
        "Service up",
        "Request rate",
        "Latency percentiles",
        "CPU per worker",
        "Memory per worker",
        "Errors by status",
        "Endpoint performance",
        "Cache hit ratio",
        "Uptime",
    } <= titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    datasource = yaml.safe_load((CONFIGS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"
    provider = yaml.safe_load((CONFIGS / "grafana" / "provisioning" / "dashboards" / "softfactory.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_kubernetes_deployment_probes_store_and_annotations() -> None:
    deployment = yaml.safe_load((CONFIGS / "kubernetes" / "deployment.yml").read_text())
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    [volume] = pod["spec"]["volumes"]
    assert volume["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SOFTFACTORY_OBS_METRICS_DIR"] == container["volumeMounts"][0]["mountPath"]


def test_compose_file_mounts_the_tested_configs() -> None:
    compose = yaml.safe_load((CONFIGS / "docker-compose.monitoring.yml").read_text())
    services = compose["services"]
    mounts = [v.split(":")[0] for s in services.values() for v in s.get("volumes", [])]
    for path in ("prometheus-compose.yml", "rules", "alertmanager.yml", "secrets", "grafana/provisioning"):
        assert f"./{path}" in mounts  # relative to the compose file, which lives in configs/
    for source in mounts:  # every mounted file or directory exists, the app's source (..) included
        assert (CONFIGS / source).exists(), source
    # Inside a container 127.0.0.1 is the container itself: every address is a service of the file.
    prometheus = yaml.safe_load((CONFIGS / "prometheus-compose.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    targets += [t for am in prometheus["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]]
    datasources = yaml.safe_load((CONFIGS / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    targets += [urllib.parse.urlsplit(d["url"]).netloc for d in datasources["datasources"]]
    assert targets and {t.split(":")[0] for t in targets} <= set(services), targets
    # Otherwise the same Prometheus config as the one the live tests run.
    plain = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    for config in (plain, prometheus):
        config["scrape_configs"][0]["static_configs"] = config["alerting"] = None
    assert plain == prometheus
    promtool = require_binary("promtool")
    assert "SUCCESS" in run(promtool, "check", "config", str(CONFIGS / "prometheus-compose.yml"))
    # Alertmanager starts only when every credential file it names exists: the shipped layout has them.
    alertmanager = (CONFIGS / "alertmanager.yml").read_text()
    named = set(re.findall(r"/etc/alertmanager/secrets/(\w+)", alertmanager))
    assert named and named <= {p.name for p in (CONFIGS / "secrets").iterdir()}, named


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def _access_line(schema: str) -> dict[str, Any]:
    """A real access line of this schema (a routed request with a query), from the package's formatter."""
    stream = io.StringIO()
    configure_logging(stream=stream, schema=schema, service="shop")
    environ = make_environ(PATH_INFO="/users/7", QUERY_STRING="q=1", REMOTE_USER="ann")
    call_wsgi(ObservabilityMiddleware(_hello, routes=["/users/{id}"], auto_configure_logging=False), environ)
    [line] = [json.loads(x) for x in stream.getvalue().splitlines() if "softfactory_obs.access" in x]
    return cast(dict[str, Any], line)


def test_logstash_pipeline_converts_the_fields_of_both_schemas() -> None:
    # No Logstash in Debian's archive (nor on PyPI or npm): check what ties the pipeline to our lines,
    # against real lines of each schema.
    pipeline = (CONFIGS / "logstash" / "softfactory.conf").read_text()
    assert 'index => "softfactory-logs-%{+YYYY.MM.dd}"' in pipeline
    assert "codec => json" in pipeline and "app-*.log" in pipeline  # the dated files of log_file
    assert pipeline.count("{") == pipeline.count("}")
    # if [ecs.version] { ECS conversions } else { the default schema's date and conversions }
    ecs_branch, default_branch = pipeline.split("if [ecs.version] {", 1)[1].split("} else {", 1)
    types: dict[str, Any] = {"integer": int, "float": (int, float)}
    for schema, branch in (("ecs", ecs_branch), ("default", default_branch)):
        line = _access_line(schema)
        assert ("ecs.version" in line) == (schema == "ecs")  # the branch condition tells them apart
        converted = dict(re.findall(r'"([\w.]+)" => "(integer|float)"', branch))
        assert converted, schema
        for field, kind in converted.items():
            assert field in line, f"{schema}: the pipeline converts {field}, which our lines do not have"
            assert isinstance(line[field], types[kind]) and not isinstance(line[field], bool), (field, line[field])
        # Every number of the line is converted, so the index maps it as a number.
        numbers = {k for k, v in line.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        assert numbers == set(converted), schema
    # The default schema's event time: the date filter reads our timestamp field; ECS's is @timestamp,
    # which the json codec parses itself.
    assert 'match => ["timestamp", "ISO8601"]' in default_branch and "timestamp" in _access_line("default")
    assert "@timestamp" in _access_line("ecs") and "date {" not in ecs_branch


@pytest.mark.gunicorn
def test_alertmanager_inhibits_warnings_under_a_critical_for_the_same_job(tmp_path: Path) -> None:
    binary = require_binary("prometheus-alertmanager")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("smtp_password", "slack_webhook_url", "pagerduty_routing_key", "webhook_token"):
        (secrets / name).write_text("placeholder\n")
    config = (CONFIGS / "alertmanager.yml").read_text().replace("/etc/alertmanager/secrets", str(secrets))
    (tmp_path / "alertmanager.yml").write_text(config)
    port = free_port()
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/v2/alerts"
    try:
        deadline = time.monotonic() + 30
        alerts = [
            {"labels": {"alertname": "HighErrorRate", "severity": "critical", "job": "shop"}},
            {"labels": {"alertname": "HighResponseTime", "severity": "warning", "job": "shop"}},
            {"labels": {"alertname": "HighResponseTime", "severity": "warning", "job": "other"}},
        ]
        while True:
            try:
                request = urllib.request.Request(
                    base, data=json.dumps(alerts).encode(), method="POST", headers={"Content-Type": "application/json"}
                )
                urllib.request.urlopen(request, timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        state: dict[tuple[str, str], list[str]] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(base, timeout=5) as resp:
                state = {
                    (a["labels"]["alertname"], a["labels"]["job"]): a["status"]["inhibitedBy"] for a in json.load(resp)
                }
            if state.get(("HighResponseTime", "shop")):
                break
            time.sleep(0.3)
        assert state[("HighResponseTime", "shop")]  # inhibited by the critical alert of the same job
        assert state[("HighResponseTime", "other")] == []  # another job's warning still notifies
        assert state[("HighErrorRate", "shop")] == []
    finally:
        server.terminate()
        server.wait(timeout=20)

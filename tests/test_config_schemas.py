"""The Kubernetes manifests and the Grafana dashboard checked against their published schemas.

The checkers come from the npm registry, pinned by ``tests/schema/package-lock.json``: Grafana's own
TypeScript type of a dashboard (``@grafana/schema``), and kubernetes-models' JSON schemas of the
Kubernetes API and of the prometheus-operator CRDs. The first run installs them into
``tests/schema/node_modules`` with ``npm ci``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import require_binary, skip_or_fail

from softfactory_obs.cli import prometheus_rule

CONFIGS = Path(__file__).resolve().parent.parent / "softfactory_obs" / "configs"
SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
DASHBOARD = CONFIGS / "grafana" / "dashboards" / "softfactory.json"


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/schema/node_modules, installed from the lock file unless it is already what the lock says."""
    require_binary("node")
    npm = require_binary("npm")
    modules = SCHEMA_DIR / "node_modules"
    stamp = modules / ".installed-from-lock"
    lock = (SCHEMA_DIR / "package-lock.json").read_text()
    if not stamp.exists() or stamp.read_text() != lock:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=SCHEMA_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            skip_or_fail(f"npm ci in tests/schema failed (is the npm registry reachable?): {done.stderr[-1500:]}")
        stamp.write_text(lock)
    return modules


def type_check_dashboard(dashboard_json: str, workdir: Path, node_modules: Path) -> subprocess.CompletedProcess[str]:
    """tsc on the dashboard inlined as a literal of Grafana's Dashboard type (excess keys are errors)."""
    (workdir / "node_modules").symlink_to(node_modules)
    source = workdir / "dashboard.ts"
    source.write_text(
        f'import type {{ Dashboard }} from "@grafana/schema";\nexport const dashboard: Dashboard = {dashboard_json};\n'
    )
    tsc = node_modules / ".bin" / "tsc"
    args = [str(tsc), "--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", str(source)]
    return subprocess.run(args, cwd=workdir, capture_output=True, text=True, timeout=120, check=False)


def test_the_dashboard_type_checks_against_grafanas_schema(tmp_path: Path, node_modules: Path) -> None:
    (tmp_path / "shipped").mkdir()
    checked = type_check_dashboard(DASHBOARD.read_text(), tmp_path / "shipped", node_modules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The check bites: a wrong type and a misspelt transformation key are both refused.
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["schemaVersion"] = str(dashboard["schemaVersion"])
    [table] = [panel for panel in dashboard["panels"] if panel["title"] == "Endpoint performance"]
    table["transformations"][0] = {"idd": "merge", "options": {}}
    (tmp_path / "mutated").mkdir()
    refused = type_check_dashboard(json.dumps(dashboard, indent=2), tmp_path / "mutated", node_modules)
    assert refused.returncode != 0
    assert "Type 'string' is not assignable to type 'number'" in refused.stdout, refused.stdout
    assert "'\"idd\"' does not exist in type 'DataTransformerConfig'" in refused.stdout, refused.stdout


def kubernetes_manifests() -> list[dict[str, Any]]:
    return [
        doc for path in sorted((CONFIGS / "kubernetes").glob("*.yml")) for doc in yaml.safe_load_all(path.read_text())
    ]


def validate(manifests: list[dict[str, Any]], node_modules: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    assert node is not None and node_modules.is_dir()
    return subprocess.run(
        [node, str(SCHEMA_DIR / "validate_k8s.mjs")],
        input=json.dumps(manifests),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_kubernetes_manifests_validate_against_the_api_and_operator_schemas(node_modules: Path) -> None:
    manifests = kubernetes_manifests()
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == ["Deployment", "PrometheusRule", "Service", "ServiceMonitor"]
    checked = validate(manifests, node_modules)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count(": ok") == len(manifests), checked.stdout
    # The check bites: a number where the CRD wants a duration string, a port name where the API wants
    # a number, a rule without its expression.
    by_kind = {m["kind"]: m for m in manifests}
    by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["interval"] = 15
    by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    del by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"][0]["expr"]
    refused = validate(manifests, node_modules)
    assert refused.returncode == 1
    lines = dict(line.split(": ", 1) for line in refused.stdout.splitlines())
    assert "interval must be string" in lines["monitoring.coreos.com/v1 ServiceMonitor shop"]
    assert "containerPort must be integer" in lines["apps/v1 Deployment shop"]
    assert "must have required property expr" in lines["monitoring.coreos.com/v1 PrometheusRule softfactory-obs"]
    assert lines["v1 Service shop"] == "ok"


def test_the_prometheus_rule_is_generated_from_the_rule_files() -> None:
    shipped = (CONFIGS / prometheus_rule.MANIFEST).read_text()
    generated = prometheus_rule.render(lambda name: (CONFIGS / name).read_text())
    assert shipped == generated, (
        f"regenerate: python -m softfactory_obs.cli.prometheus_rule > configs/{prometheus_rule.MANIFEST}"
    )
    groups = [g for name in prometheus_rule.RULE_FILES for g in yaml.safe_load((CONFIGS / name).read_text())["groups"]]
    assert yaml.safe_load(shipped)["spec"]["groups"] == groups
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    assert {"ServiceDown", "MetricsStoreFault", "HighErrorRate"} <= alerts


def test_the_service_monitor_reaches_the_deployments_pods() -> None:
    by_kind = {m["kind"]: m for m in kubernetes_manifests()}
    deployment, service, monitor = by_kind["Deployment"], by_kind["Service"], by_kind["ServiceMonitor"]
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    # ServiceMonitor -> Service (labels, port name) -> pods (selector, target port name).
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    [port] = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] == pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    # A scrape must end before the next one starts.
    seconds = {k: int(endpoint[k].rstrip("s")) for k in ("interval", "scrapeTimeout")}
    assert seconds["scrapeTimeout"] < seconds["interval"]

"""The command line, run as users run it: ``python -m softfactory_obs`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import require_binary
from servers import ROOT

from softfactory_obs import __version__
from softfactory_obs.cli.configs import SHIPPED


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOFTFACTORY_OBS_")}
    return subprocess.run(
        [sys.executable, "-m", "softfactory_obs", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**clean, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(env or {})},
    )


def test_version_and_help() -> None:
    assert cli("--version").stdout.strip() == f"softfactory-obs {__version__}"
    helped = cli("--help")
    assert helped.returncode == 0 and "check" in helped.stdout and "configs" in helped.stdout
    assert cli().returncode == 2  # a command is required, argparse says which


def test_check_shows_each_setting_with_its_source(tmp_path: Path) -> None:
    env = {
        "SOFTFACTORY_OBS_ACCESS_LOG": "0",
        "SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "store"),
        "TEST_LOG_FILE": str(tmp_path / "app.log"),
    }
    done = cli("check", "--app", "logging_app:app", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "access_log = False  [environment (SOFTFACTORY_OBS_ACCESS_LOG)]" in out
    assert "log_schema = 'ecs'  [keyword]" in out  # what logging_app passes instrument()
    assert "request_id_header = 'X-Request-Id'  [default]" in out
    assert f"directory: {tmp_path / 'store'}" in out and "does not exist yet" in out
    assert out.rstrip().splitlines()[-1].startswith("OK: 0 error(s)")
    broken = cli("check", "--app", "logging_app:app")  # its import fails (no TEST_LOG_FILE): said, not a traceback
    assert broken.returncode == 1 and "ERROR: --app logging_app:app: KeyError: 'TEST_LOG_FILE'" in broken.stdout


def test_check_fails_on_a_mistyped_variable_a_bad_value_and_an_unusable_store(tmp_path: Path) -> None:
    typo = cli("check", env={"SOFTFACTORY_OBS_MAX_ENDPOINT": "50"})
    assert typo.returncode == 1
    assert (
        "SOFTFACTORY_OBS_MAX_ENDPOINT is not a setting and is ignored; did you mean SOFTFACTORY_OBS_MAX_ENDPOINTS?"
        in (typo.stdout)
    )
    bad = cli("check", env={"SOFTFACTORY_OBS_MAX_ENDPOINTS": "5"})
    assert bad.returncode == 1 and "ERROR: SOFTFACTORY_OBS_MAX_ENDPOINTS='5': max_endpoints" in bad.stdout
    (tmp_path / "file").write_text("x")
    store = cli("check", env={"SOFTFACTORY_OBS_METRICS_DIR": str(tmp_path / "file" / "store")})
    assert store.returncode == 1 and "cannot be a directory" in store.stdout
    fine = cli("check", env={"SOFTFACTORY_OBS_REDIS_URL": "redis://x"})  # the app's own variable
    assert fine.returncode == 0, fine.stdout
    assert "SOFTFACTORY_OBS_REDIS_URL is not a setting (softfactory_obs ignores it" in fine.stdout


def test_configs_writes_the_shipped_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "monitoring"
    done = cli("configs", str(target))
    assert done.returncode == 0, done.stderr
    shipped = sorted(p.relative_to(SHIPPED) for p in SHIPPED.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file()) == shipped
    assert (target / "rules" / "alerts.yml").read_text() == (SHIPPED / "rules" / "alerts.yml").read_text()
    again = cli("configs", str(target))
    assert again.returncode == 1 and "pass --force to overwrite them" in again.stderr
    assert cli("configs", str(target), "--force").returncode == 0


def test_configs_fills_in_the_job_namespace_and_runbook_and_stays_valid(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    target = tmp_path / "monitoring"
    base = "https://wiki.example.com/ops/RUNBOOKS.md"
    done = cli("configs", str(target), "--job", "shop", "--namespace", "acme", "--runbook-base", base)
    assert done.returncode == 0, done.stderr
    prometheus = yaml.safe_load((target / "prometheus.yml").read_text())
    assert [job["job_name"] for job in prometheus["scrape_configs"]] == ["shop"]
    recording = (target / "rules" / "recording.yml").read_text()
    assert "acme_http_requests_total" in recording and " http_requests_total" not in recording
    assert "job:http_errors:ratio_rate5m" in recording  # rule names are not metric names
    alerts = yaml.safe_load((target / "rules" / "alerts.yml").read_text())
    rules = {rule["alert"]: rule for group in alerts["groups"] for rule in group["rules"]}
    assert "job=" not in rules["ServiceDown"]["expr"]  # it finds our targets by their metrics, not a job name
    assert rules["ServiceDown"]["annotations"]["runbook_url"] == f"{base}#servicedown"
    dashboard = (target / "grafana" / "dashboards" / "softfactory.json").read_text()
    assert "acme_http_request_queue_seconds_bucket" in dashboard and "acme_http_requests_in_progress" in dashboard
    assert "job_endpoint:http_request_duration_seconds:p95_5m" in dashboard  # recorded series keep their names
    rules_dir = target / "rules"
    # The operator's PrometheusRule carries the same rules, names filled in alike.
    operator = yaml.safe_load((target / "kubernetes" / "prometheus-rule.yml").read_text())
    written = [
        g for f in ("recording.yml", "alerts.yml") for g in yaml.safe_load((rules_dir / f).read_text())["groups"]
    ]
    assert operator["spec"]["groups"] == written
    assert f"{base}#metricsstorefault" in (target / "kubernetes" / "prometheus-rule.yml").read_text()
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules_dir / "recording.yml"), str(rules_dir / "alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(  # the shipped alert unit tests, renamed alike, still pass
        [promtool, "test", "rules", str(rules_dir / "alerts.test.yml")], capture_output=True, text=True, check=False
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_configs_refuses_names_that_would_break_the_files(tmp_path: Path) -> None:
    bad = cli("configs", str(tmp_path / "x"), "--namespace", "my-app")
    assert bad.returncode == 1 and "--namespace: 'my-app' is not a metric name prefix" in bad.stderr
    assert not (tmp_path / "x").exists()  # nothing half-written
    bad = cli("configs", str(tmp_path / "x"), "--job", 'a"b')
    assert bad.returncode == 1 and "--job" in bad.stderr

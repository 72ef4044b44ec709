"""A fleet: three instances of the service, one Prometheus with the shipped rules, and remote storage.

Three gunicorn masters on their own ports and store directories stand for three hosts. Prometheus runs
with ``configs/prometheus.yml``'s settings and the shipped rules, scrapes all three under one job and
remote-writes to a real VictoriaMetrics. The job is called ``shop``: nothing may depend on the name.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import require_binary
from servers import Command, Gunicorn, get, query

CONFIGS = Path(__file__).resolve().parent.parent / "softfactory_obs" / "configs"
JOB = "shop"
# Requests per instance, different so that a mix-up between instances shows.
USERS = (12, 18, 24)
PRODUCTS = (5, 7, 9)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` and its last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            last = check()
            if last:
                return last
        time.sleep(0.5)
    pytest.fail(f"{what} not seen within {timeout:.0f} s; last: {last!r}")


def by_instance(port: int, expr: str) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in query(port, expr)}


def legends(legend_format: str, result: list[dict[str, Any]]) -> list[str]:
    """The legend Grafana shows for each series of a panel query."""
    placeholder = re.compile(r"\{\{\s*(\w+)\s*\}\}")
    return [placeholder.sub(lambda m, labels=r["metric"]: labels.get(m.group(1), ""), legend_format) for r in result]


def prometheus_config(targets: list[str], remote_write: str) -> dict[str, Any]:
    """The shipped prometheus.yml with this fleet's targets, fast intervals and remote storage."""
    config = yaml.safe_load((CONFIGS / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(CONFIGS / "rules" / name) for name in ("recording.yml", "alerts.yml")]
    config.pop("alerting")
    [job] = config["scrape_configs"]
    job["job_name"], job["static_configs"] = JOB, [{"targets": targets}]
    config["remote_write"] = [
        {
            "url": remote_write,
            "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"},
        }
    ]
    return config


@pytest.mark.gunicorn
def test_a_fleet_of_three_aggregates_in_prometheus_and_remote_storage(tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    victoria = require_binary("victoria-metrics")
    with contextlib.ExitStack() as stack:
        hosts = []
        for i in range(3):
            home = tmp_path / f"host{i}"
            home.mkdir()
            hosts.append(
                stack.enter_context(Gunicorn(home, workers=2, SOFTFACTORY_OBS_METRICS_DIR=str(home / "store")))
            )
        vm_argv = [
            victoria,
            "-httpListenAddr=127.0.0.1:{port}",
            f"-storageDataPath={tmp_path / 'vm'}",
            "-search.latencyOffset=0s",  # by default the newest 30 s are hidden from queries
        ]
        vm = stack.enter_context(Command(tmp_path, "victoria-metrics", vm_argv))
        instances = [f"127.0.0.1:{h.port}" for h in hosts]
        config = prometheus_config(instances, f"http://127.0.0.1:{vm.port}/api/v1/write")
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom_argv = [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            "--web.listen-address=127.0.0.1:{port}",
        ]
        prom = stack.enter_context(Command(tmp_path, "prometheus", prom_argv)).port

        wait_for("all three targets up", lambda: by_instance(prom, f'up{{job="{JOB}"}}') == dict.fromkeys(instances, 1))
        requests = [
            (h.port, path)
            for h, users, products in zip(hosts, USERS, PRODUCTS, strict=True)
            for path in [f"/api/users/{n}" for n in range(1, users + 1)] + ["/api/products"] * products
        ]
        counted = f'sum by (instance) (http_requests_total{{job="{JOB}", endpoint!="/metrics"}})'
        # Two rounds, the second once Prometheus has scraped the first, so rate() sees the counters grow.
        sent: Counter[str] = Counter()
        with ThreadPoolExecutor(6) as pool:
            for round_requests in (requests[0::2], requests[1::2]):
                assert set(pool.map(lambda r: get(*r)[0], round_requests)) == {200}
                sent.update(f"127.0.0.1:{port}" for port, _ in round_requests)
                # Prometheus: each instance's count is exact, and so is the fleet's.
                wait_for("every instance's requests in Prometheus", lambda: by_instance(prom, counted) == sent)
        total = sum(sent.values())
        assert sent == {
            inst: users + products for inst, users, products in zip(instances, USERS, PRODUCTS, strict=True)
        }
        # The recording rules aggregate per job across the instances: one series per job (and endpoint),
        # no instance label, the rate of the whole fleet.
        rate = wait_for("the fleet's request rate", lambda: query(prom, f'job:http_requests:rate5m{{job="{JOB}"}}'))
        assert len(rate) == 1 and "instance" not in rate[0]["metric"], rate
        per_endpoint = query(prom, f'job_endpoint:http_requests:rate5m{{job="{JOB}"}}')
        endpoints = Counter(r["metric"]["endpoint"] for r in per_endpoint)
        assert {"/api/users/{user_id}", "/api/products"} <= set(endpoints) and set(endpoints.values()) == {1}, (
            per_endpoint
        )
        assert not [r for r in per_endpoint if "instance" in r["metric"]]
        known = query(prom, "softfactory_obs:target:known")
        assert sorted(r["metric"]["instance"] for r in known) == sorted(instances)
        # The dashboard tells the instances apart wherever it shows them: within a panel no two series
        # share a legend (worker numbers repeat across instances).
        dashboard = json.loads((CONFIGS / "grafana" / "dashboards" / "softfactory.json").read_text())
        shown: dict[str, list[str]] = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$job", JOB).replace("$__rate_interval", "1m")
                names = legends(target.get("legendFormat", ""), query(prom, expr))
                assert len(names) == len(set(names)), (panel["title"], names)
                shown[panel["title"]] = shown.get(panel["title"], []) + names
        assert sorted(shown["Service up"]) == sorted(instances)
        assert len(shown["Memory per worker"]) == 3 * 2  # every worker of every instance, each its own line

        # Remote storage: the same totals, queried back from VictoriaMetrics, recorded series included.
        wait_for("every instance's requests in VictoriaMetrics", lambda: by_instance(vm.port, counted) == sent)
        fleet = query(vm.port, f'sum(http_requests_total{{job="{JOB}", endpoint!="/metrics"}})')
        assert float(fleet[0]["value"][1]) == total
        wait_for(
            "the recorded fleet rate in VictoriaMetrics",
            lambda: query(vm.port, f'job:http_requests:rate5m{{job="{JOB}"}}'),
        )

        # One host goes away: ServiceDown for it alone (pending for its first minute; promtool's unit
        # test covers the "for:" timing).
        hosts[2].__exit__()
        down = wait_for(
            "ServiceDown for the stopped instance",
            lambda: query(prom, 'ALERTS{alertname="ServiceDown"}'),
        )
        assert [(a["metric"]["instance"], a["metric"]["job"]) for a in down] == [(instances[2], JOB)], down
        assert down[0]["metric"]["alertstate"] in ("pending", "firing")

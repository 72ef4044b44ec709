"""Components: picked from the settings, each installed through the Host methods alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from helpers import call_wsgi, make_environ

from softfactory_obs import ObservabilityMiddleware
from softfactory_obs.components import (
    Compaction,
    Component,
    Drain,
    Health,
    MetricsEndpoint,
    ProcessMetrics,
    PrometheusClientMetrics,
    Summary,
    TracerIds,
    components_for,
)
from softfactory_obs.guard import Guard
from softfactory_obs.health import HealthChecks, Readiness
from softfactory_obs.logs.access import AccessLog
from softfactory_obs.metrics.http import HttpMetrics
from softfactory_obs.metrics.queue_time import QueueTime
from softfactory_obs.request.record import RecordHook
from softfactory_obs.routes import Endpoints, RouteTable
from softfactory_obs.settings import Settings
from softfactory_obs.store.maintenance import Maintenance
from softfactory_obs.store.metrics import Registry


def ok(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class RecordingHost:
    """A host that is not the WSGI middleware: what a component installs, written down."""

    def __init__(self, **options: Any) -> None:
        self.settings = Settings.from_env(auto_configure_logging=False, **options)
        self.registry = Registry()
        self.endpoints = Endpoints(RouteTable(self.settings.routes))
        self.guard = Guard(self.settings.telemetry_token, self.settings.telemetry_allow)
        self.health_checks = HealthChecks()
        self.readiness = Readiness()
        self.maintenance = Maintenance(self.registry)
        self.mounted: dict[str, Any] = {}
        self.hooks: dict[str, list[RecordHook]] = {"start": [], "response": [], "finish": [], "telemetry": []}
        self.state_size = 0
        self.interval_tasks: list[Callable[[], object]] = []
        self.per_process: list[Callable[[], object]] = []

    def mount(self, path: str, app: Callable[..., Iterable[bytes]]) -> None:
        self.mounted[path] = app

    def add_start_hook(self, hook: RecordHook) -> None:
        self.hooks["start"].append(hook)

    def add_response_hook(self, hook: RecordHook) -> None:
        self.hooks["response"].append(hook)

    def add_finish_hook(self, hook: RecordHook, *, telemetry: bool = False) -> None:
        self.hooks["finish"].append(hook)
        if telemetry:
            self.hooks["telemetry"].append(hook)

    def remove_finish_hook(self, hook: RecordHook) -> None:
        self.hooks["finish"].remove(hook)

    def reserve_state(self, size: int = 1) -> int:
        self.state_size += size
        return self.state_size - size

    def every_interval(self, task: Callable[[], object]) -> None:
        self.interval_tasks.append(task)

    def in_each_process(self, action: Callable[[], object]) -> None:
        self.per_process.append(action)


def kinds(parts: list[Component]) -> list[type]:
    return [type(p) for p in parts]


def test_the_settings_pick_the_components_in_installation_order() -> None:
    everything = RecordingHost(queue_time_header="X-Request-Start")
    assert kinds(components_for(everything)) == [
        TracerIds,
        ProcessMetrics,
        PrometheusClientMetrics,
        HttpMetrics,
        QueueTime,
        MetricsEndpoint,
        Summary,
        Health,
        Drain,
        AccessLog,
        Compaction,
    ]
    bare = RecordingHost(metrics=False, health=False, access_log=False)
    assert kinds(components_for(bare)) == [TracerIds]  # the app's own log lines still carry the tracer's ids
    assert kinds(components_for(RecordingHost(metrics=False, access_log=False))) == [TracerIds, Health, Drain]


def test_every_component_installs_through_the_host_alone() -> None:
    """Nothing reaches into the middleware: a host of another kind gets each component's parts."""
    host = RecordingHost(queue_time_header="X-Request-Start", log_telemetry_routes=True)
    for component in components_for(host):
        component.install(host)
    assert {"/metrics", "/api/metrics/prometheus", "/live", "/ready", "/health", "/api/metrics/summary"} <= set(
        host.mounted
    )
    assert [type(getattr(h, "__self__", h)).__name__ for h in host.hooks["start"]] == ["HttpMetrics", "QueueTime"]
    assert [type(getattr(h, "__self__", h)).__name__ for h in host.hooks["response"]] == ["HttpMetrics"]
    assert [type(getattr(h, "__self__", h)).__name__ for h in host.hooks["finish"]] == [
        "HttpMetrics",
        "AccessLog",
        "Compaction",  # last: after the access line
    ]
    assert [type(h).__name__ for h in host.hooks["telemetry"]] == ["AccessLog"]
    assert host.state_size == HttpMetrics.STATE_SIZE
    # The process sampler, the prometheus_client copies, the summary's history, the health checks.
    assert len(host.interval_tasks) == 4
    assert host.readiness.watch_sigterm in host.per_process and host.maintenance.ensure_started in host.per_process


def test_the_process_sampler_is_installed_once_per_registry() -> None:
    host = RecordingHost()
    ProcessMetrics().install(host)
    ProcessMetrics().install(host)
    assert len(host.interval_tasks) == 1
    other = RecordingHost()
    ProcessMetrics().install(other)
    assert len(other.interval_tasks) == 1  # the control: another registry gets its own


@pytest.mark.parametrize("metrics", [False, True])
def test_health_checks_refresh_in_the_background_with_or_without_metrics(metrics: bool) -> None:
    calls: list[float] = []
    refreshed = threading.Event()

    def check() -> bool:
        calls.append(time.monotonic())
        if len(calls) >= 3:
            refreshed.set()
        return True

    mw = ObservabilityMiddleware(
        ok, auto_configure_logging=False, metrics=metrics, access_log=False, maintenance_interval_seconds=0.05
    )
    mw.add_health_check("cache", check, interval=0.05)
    assert call_wsgi(mw, make_environ(PATH_INFO="/")).body == b"ok"  # the first request starts the thread
    assert refreshed.wait(30), f"the check ran {len(calls)} times in 30 s"

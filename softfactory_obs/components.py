"""What an instrumented app is made of: components that each install themselves into a host.

The host is the protocol front: the WSGI middleware (an ASGI front offers the same methods). A
component's ``install(host)`` registers what it needs through the ``Host`` methods and nothing
else: request hooks (which read only the ``RequestRecord``), telemetry routes, periodic work on the
registry's maintenance thread, and work to do once in each process that serves requests (never in
a gunicorn or uWSGI master). ``components_for`` picks them from the settings; the host installs
each in order and holds no wiring of its own.

Contracts:
- ``install`` runs once, at start-up, in the process that built the host; what must happen in each
  worker goes through ``in_each_process``.
- Order matters only where stated: hooks of one moment run in installation order, and the
  compaction trigger goes last so that a request's own lines are written before it compacts.
- Something kept once per registry (the process sampler, the ``app_ready`` family), however many
  hosts share the registry, is remembered by the component in a weak set of registries.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from . import otel, procfs
from .guard import Guard
from .health import HealthChecks, Readiness
from .health.routes import HEALTH_PATHS, LIVE_PATHS, READY_PATHS, HealthRoutes
from .logs.access import AccessLog
from .metrics.exposition import MetricsApp, check_prometheus_client_registry
from .metrics.http import HttpMetrics
from .metrics.process import ProcessSampler
from .metrics.prometheus_bridge import PrometheusClientBridge
from .metrics.queue_time import QueueTime
from .metrics.summary import History, SummaryApp
from .request.record import RecordHook
from .routes import Endpoints
from .settings import Settings
from .store.maintenance import Maintenance
from .store.metrics import Registry

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class Host(Protocol):
    """What a component may use of the front it is installed into."""

    settings: Settings
    registry: Registry
    endpoints: Endpoints
    guard: Guard
    health_checks: HealthChecks
    readiness: Readiness
    maintenance: Maintenance

    def mount(self, path: str, app: WSGIApp) -> None:
        """Serve ``app`` at ``path`` ahead of the wrapped app (never counted as a request)."""

    def add_start_hook(self, hook: RecordHook) -> None:
        """Call ``hook(record)`` before the app runs."""

    def add_response_hook(self, hook: RecordHook) -> None:
        """Call ``hook(record)`` once the status is final, before the first body byte."""

    def add_finish_hook(self, hook: RecordHook, *, telemetry: bool = False) -> None:
        """Call ``hook(record)`` after the body was sent and closed; on telemetry routes too when asked."""

    def remove_finish_hook(self, hook: RecordHook) -> None:
        """Stop calling ``hook`` (from any thread; a hook that is not there is ignored)."""

    def reserve_state(self, size: int = 1) -> int:
        """``size`` positions of ``RequestRecord.state``; returns the first one's index."""

    def every_interval(self, task: Callable[[], object]) -> None:
        """Run ``task`` on the maintenance thread, every ``maintenance_interval_seconds``."""

    def in_each_process(self, action: Callable[[], object]) -> None:
        """Run ``action`` before the first request of each process that serves requests."""


class Component(Protocol):
    """A part of the instrumentation: installs itself into a host."""

    def install(self, host: Host) -> None:
        """Register hooks, routes and background work with ``host``."""


class Drain:
    """SIGTERM marks the worker draining (``/ready`` answers 503), whatever else is on."""

    def install(self, host: Host) -> None:
        """Hook SIGTERM in each worker, from its first request (the main thread, for signals);
        not where the server's own handlers stop and reload workers (uWSGI, mod_wsgi)."""
        if not procfs.server_owns_signals():
            host.in_each_process(host.readiness.watch_sigterm)


class MetricsEndpoint:
    """``/metrics`` (and the seed docs' ``/api/metrics/prometheus``), behind the telemetry guard."""

    def install(self, host: Host) -> None:
        """Mount the exposition; check a prometheus_client multiprocess directory for our names."""
        app = host.guard.protect(MetricsApp(host.registry, on_dead_shards=host.maintenance.wake))
        host.mount(host.settings.metrics_path, app)
        host.mount(host.settings.telemetry_prefix + "/api/metrics/prometheus", app)
        check_prometheus_client_registry(host.registry)


_sampled: weakref.WeakSet[Registry] = weakref.WeakSet()
_ready_exported: weakref.WeakSet[Registry] = weakref.WeakSet()


class ProcessMetrics:
    """CPU, memory, file descriptors and threads of each worker, sampled in the background."""

    def install(self, host: Host) -> None:
        """One sampler per registry, however many hosts share it."""
        if host.registry in _sampled:
            return
        _sampled.add(host.registry)
        settings = host.settings
        sampler = ProcessSampler(host.registry, settings.service_name, settings.service_version)
        host.every_interval(sampler.sample)
        host.in_each_process(sampler.watch_exit)


_bridged: weakref.WeakSet[Registry] = weakref.WeakSet()


class PrometheusClientMetrics:
    """The app's own prometheus_client metrics (its default registry) on /metrics, added up over
    every worker (``metrics/prometheus_bridge.py``)."""

    def install(self, host: Host) -> None:
        """One bridge per registry: copied now (what was counted at import), every interval,
        before each scrape and at exit."""
        if host.registry in _bridged:
            return
        _bridged.add(host.registry)
        bridge = PrometheusClientBridge(host.registry)
        bridge.copy(gauges=False)  # maybe a master that forks the workers: no pid-labelled gauges
        host.every_interval(bridge.copy)
        host.registry.before_scrape.append(bridge.copy)
        atexit.register(bridge.copy)  # inherited by forked workers: each copies its last counts


class Compaction:
    """A worker's first request compacts what dead processes left, then leaves the request path.
    It comes back while series count in memory (a full store), to move them into the shard on a
    request's own thread (see ``Registry.write_unwritten``).

    The maintenance thread compacts too, but it may not run (a container's thread limit), and the
    first scrape should not find the previous workers' shards still to merge.
    """

    def __init__(self) -> None:
        self._host: Host | None = None
        self.armed = False  # the finish hook is on the request path

    def install(self, host: Host) -> None:
        """Add the finish hook (last), and add it again in every forked worker; start the
        maintenance thread in each worker."""
        self._host = host
        self._arm()
        host.registry.on_fork(self._arm)
        host.registry.on_unwritten(self._arm)  # series counting in memory: retried after requests
        host.in_each_process(host.maintenance.ensure_started)

    def _arm(self) -> None:
        if self._host is not None and not self.armed:
            self.armed = True
            self._host.add_finish_hook(self.compact_once)

    def compact_once(self, _: object) -> None:
        """Finish hook until this process's compaction has run."""
        host = self._host
        if host is not None and not host.registry.compact_if_pending():
            self.armed = False
            host.remove_finish_hook(self.compact_once)
            if host.registry.unwritten:  # a binding failed in another thread meanwhile
                self._arm()


class TracerIds:
    """In a process that runs OpenTelemetry, the active span's trace and span ids on each request
    (``otel.take_span``); decided at each process's first request, once the app is imported."""

    def __init__(self) -> None:
        self._host: Host | None = None
        self._armed = False  # inherited by a fork together with the hooks it stands for

    def install(self, host: Host) -> None:
        """Check for OpenTelemetry in each worker, before its first request."""
        self._host = host
        host.in_each_process(self._arm_if_used)

    def _arm_if_used(self) -> None:
        if not self._armed and self._host is not None and otel.uses_opentelemetry():
            self._armed = True
            self._host.add_start_hook(otel.take_span)


class Health:
    """``/live``, ``/ready``, ``/health`` and their aliases; checks refreshed in the background."""

    def install(self, host: Host) -> None:
        """Mount the probes; export ``app_ready`` (once per registry) when metrics are on."""
        routes = HealthRoutes(host.settings, host.health_checks, host.readiness, host.guard)
        for paths, handler in ((LIVE_PATHS, routes.live), (READY_PATHS, routes.ready), (HEALTH_PATHS, routes.health)):
            for path in paths:
                host.mount(host.settings.telemetry_prefix + path, handler)
        host.every_interval(host.health_checks.refresh_background)
        if host.settings.metrics and host.registry not in _ready_exported:
            _ready_exported.add(host.registry)
            host.registry.callbacks.append(routes.ready_metric)


class Summary:
    """The JSON summary and errors endpoints, from request totals sampled in the background."""

    def install(self, host: Host) -> None:
        """Mount ``/api/metrics/summary`` and ``/api/metrics/errors``; sample the history."""
        settings = host.settings
        history = History(host.registry, f"{settings.namespace}_" if settings.namespace else "")
        host.every_interval(history.sample_in_background)
        summary = SummaryApp(settings, host.registry, history, started_at=procfs.start_time(procfs.service_pid()))
        prefix = settings.telemetry_prefix
        host.mount(prefix + "/api/metrics/summary", host.guard.protect(summary.summary))
        host.mount(prefix + "/api/metrics/errors", host.guard.protect(summary.errors))


def components_for(host: Host) -> list[Component]:
    """The components ``host.settings`` ask for, in installation order."""
    settings = host.settings
    parts: list[Component] = [TracerIds()]  # first: every recorder sees the tracer's ids
    if settings.metrics:
        http = HttpMetrics(host.registry, settings, host.endpoints)
        parts += [ProcessMetrics(), PrometheusClientMetrics(), http]
        if settings.queue_time_header:
            parts.append(QueueTime(host.registry, settings, http))
        parts.append(MetricsEndpoint())
        if settings.summary:
            parts.append(Summary())
    if settings.health:
        parts += [Health(), Drain()]
    if settings.access_log:
        parts.append(AccessLog(settings, host.endpoints))
    if settings.metrics:
        parts.append(Compaction())  # last: after the access line
    return parts

"""What the WSGI middleware and the ASGI front share: the host the components install into
(``components.py``). It holds the settings, the registry, the endpoints, the health state and the
per-request hooks the components registered; a front adds only its protocol's ``__call__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import FunctionType
from typing import TYPE_CHECKING, Any, TypeVar

from ._failures import report_failure
from .components import WSGIApp, components_for
from .guard import Guard
from .health import Check, HealthChecks, Readiness
from .logs import configure_logging, logging_configured
from .process_state import install_fork_hook, on_new_process
from .request.record import NO_HOOKS, Hooks, RecordHook
from .request_id import RequestIdPolicy
from .routes import EndpointCap, Endpoints, RouteTable
from .settings import Settings
from .store.maintenance import maintenance_for
from .store.metrics import REGISTRY, Registry

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11; only type checkers read it

    from .options import Options


_H = TypeVar("_H", bound="InstrumentationHost")


class InstrumentationHost:
    """Settings, store, endpoints, health and hooks of one instrumented app, whatever its protocol."""

    def __init__(
        self,
        app: Any,
        settings: Settings | None = None,
        *,
        registry: Registry | None = None,
        **options: Unpack[Options],
    ) -> None:
        if settings is None:
            settings = Settings.from_env(**options)
        elif options:
            settings = settings.replace(**options)
        self.app = app
        self.settings = settings
        self.request_ids = RequestIdPolicy(settings)
        self.telemetry_routes: dict[str, WSGIApp] = {}
        self.start_hooks: list[RecordHook] = []
        self.response_hooks: list[RecordHook] = []
        self.finish_hooks: list[RecordHook] = []
        self.telemetry_finish_hooks: list[RecordHook] = []  # telemetry routes are logged only when asked
        self.state_size = 0  # positions of RequestRecord.state reserved by recorders
        self.registry = registry if registry is not None else REGISTRY
        if settings.metrics and settings.metrics_dir:
            self.registry.set_directory(settings.metrics_dir)
        # The endpoint every recorder shows; capped (max_endpoints) when metrics keep the label.
        cap = EndpointCap(settings.max_endpoints, self._store_path) if settings.metrics else None
        self.endpoints = Endpoints(RouteTable(settings.routes), cap)
        self.maintenance = maintenance_for(self.registry)
        self.maintenance.interval = settings.maintenance_interval_seconds
        self.guard = Guard(settings.telemetry_token, settings.telemetry_allow)
        self.health_checks = HealthChecks(ttl=settings.health_cache_seconds)
        self.readiness = Readiness(settings.ready_on_start)
        self._per_process: list[Callable[[], object]] = []
        self._started_in_process = False
        self._rebuild_hooks()
        self.components = components_for(self)
        for component in self.components:
            component.install(self)
        on_new_process(self._forget_process, component="middleware after fork")
        install_fork_hook()
        if settings.auto_configure_logging and not logging_configured():
            configure_logging(
                settings.log_level,
                log_file=settings.log_file or None,
                file_mode=settings.log_file_mode,
                rotation=settings.log_rotation,
                backup_count=settings.log_backup_count,
                service=settings.service_name,
                schema=settings.log_schema,
            )

    def _start_in_process(self) -> None:
        """The first request of each process (never the gunicorn or uWSGI master): what the
        components asked to run once per process (the maintenance thread, the SIGTERM hook)."""
        self._started_in_process = True
        for action in self._per_process:
            try:
                action()
            except Exception as exc:
                report_failure("middleware start in process", exc)

    def _forget_process(self) -> None:
        self._started_in_process = False

    # -- extension points for the metrics, health and Redis modules ----------------------------

    def mount(self, path: str, app: WSGIApp) -> None:
        """Serve ``app`` at exactly ``path`` (no prefix or trailing-slash variants), ahead of the wrapped app."""
        if not path.startswith("/"):
            raise ValueError(f"path: expected an absolute path such as '/metrics', got {path!r}")
        self.telemetry_routes[path] = app

    def add_health_check(
        self,
        name: str,
        check: Callable[[], Any],
        *,
        critical: bool = True,
        timeout: float = 2.0,
        interval: float | None = None,
    ) -> None:
        """Register a dependency check for /ready (when critical) and /health.

        ``check()`` returns truthy (or a dict of details) when healthy, falsy or raises when not. It
        runs in a pool thread with its own ``timeout``; with ``interval`` it is refreshed in the
        background and probes read the cached result.
        """
        self.health_checks.add(Check(name, check, critical, timeout, interval))

    def add_redis(
        self,
        client: Any,
        cache: str = "default",
        *,
        critical: bool = False,
        timeout: float = 0.5,
        prefixes: dict[str, str] | None = None,
        cooldown: float | None = 5.0,
    ) -> Any:
        """Count ``client``'s cache hits and misses, expose Redis INFO at scrape time, and check it in /health.

        INFO and the health check's PING use a second connection with ``timeout`` and no retries,
        so a dead Redis costs a scrape or a probe at most ``timeout``. ``cooldown``: how long the
        client's own calls fail fast after a connection error or timeout (see ``instrument_redis``).
        Returns the instrumented client.
        """
        from .redis import RedisInfoCollector, instrument_redis  # noqa: PLC0415 - redis-py only for apps using it

        instrument_redis(client, cache, prefixes=prefixes, registry=self.registry, cooldown=cooldown)
        collector = RedisInfoCollector(client, cache, timeout)
        self.registry.callbacks.append(collector.collect)
        self.add_health_check(
            "redis" if cache == "default" else f"redis-{cache}",
            collector.ping,
            critical=critical,
            timeout=timeout + 0.5,
        )
        return client

    def mark_ready(self, ready: bool = True) -> None:
        """With ``ready_on_start=False``: tell /ready that start-up (warm caches, migrations) is done."""
        self.readiness.started = ready

    def reserve_state(self, size: int = 1) -> int:
        """``size`` positions of ``RequestRecord.state`` for a recorder's per-request values (each
        request starts them at None); returns the first one's index."""
        slot = self.state_size
        self.state_size += size
        self._rebuild_hooks()
        return slot

    def add_start_hook(self, hook: RecordHook) -> None:
        """Call ``hook(record)`` once per application request, before the app runs."""
        self.start_hooks.append(hook)
        self._rebuild_hooks()

    def add_response_hook(self, hook: RecordHook) -> None:
        """Call ``hook(record)`` once per application request, when its status is final, before the body."""
        self.response_hooks.append(hook)
        self._rebuild_hooks()

    def add_finish_hook(self, hook: RecordHook, *, telemetry: bool = False) -> None:
        """Call ``hook(record)`` once per application request, after its body was sent and closed;
        with ``telemetry``, once per request to a telemetry route (/metrics, the probes) too."""
        self.finish_hooks.append(hook)
        if telemetry:
            self.telemetry_finish_hooks.append(hook)
        self._rebuild_hooks()

    def remove_finish_hook(self, hook: RecordHook) -> None:
        """Stop calling ``hook`` (safe from any thread; a hook that is not there is ignored)."""
        for hooks in (self.finish_hooks, self.telemetry_finish_hooks):
            try:
                hooks.remove(hook)
            except ValueError:  # never added, or another thread took it out first
                continue
        self._rebuild_hooks()

    def every_interval(self, task: Callable[[], object]) -> None:
        """Run ``task`` on the registry's maintenance thread, every ``maintenance_interval_seconds``."""
        self.maintenance.tasks.append(task)
        self.in_each_process(self.maintenance.ensure_started)

    def in_each_process(self, action: Callable[[], object]) -> None:
        """Run ``action`` (once) before the first request of each process that serves requests."""
        if action not in self._per_process:
            self._per_process.append(action)

    def _rebuild_hooks(self) -> None:
        self._hooks = Hooks(
            _bound(self.response_hooks), _bound(self.finish_hooks), _bound(self.start_hooks), [None] * self.state_size
        )
        # Telemetry routes are never counted; they are logged only when asked.
        self._telemetry_hooks = (
            Hooks((), _bound(self.telemetry_finish_hooks)) if self.telemetry_finish_hooks else NO_HOOKS
        )

    def reused(self: _H, options: Mapping[str, Any], call: str) -> _H:
        """This host, for a second ``call`` (``instrument()``) on the app it already wraps: with the
        same settings or none, never with others (they would be silently ignored)."""
        if options and self.settings != self.settings.replace(**options):
            raise ValueError(
                f"app is already instrumented with other settings; pass all options to the first {call} call"
            )
        return self

    def _store_path(self) -> str | None:
        directory = self.registry.directory
        return directory.path if directory is not None else None


def _bound(hooks: Iterable[Any]) -> tuple[RecordHook, ...]:
    """Hooks as the request calls them: an object with a ``__call__`` (the access log) as its bound
    method, which skips the slot lookup calling the object costs every request."""
    return tuple(h.__call__ if isinstance(type(h).__call__, FunctionType) else h for h in hooks)

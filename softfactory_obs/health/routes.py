"""The WSGI apps behind /live, /ready and /health (and their aliases)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..guard import Guard
from ..json_text import iso_utc
from ..metrics.families import Family, gauge
from ..settings import Settings
from . import HEALTH_JSON, HealthChecks, Readiness, Result, json_body

LIVE_PATHS = ("/live", "/livez", "/api/metrics/live")
READY_PATHS = ("/ready", "/readyz", "/api/metrics/ready")
HEALTH_PATHS = ("/health", "/healthz", "/api/metrics/health")


def answer(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    status: str,
    body: bytes,
    content_type: str = "application/json",
) -> Iterable[bytes]:
    """A telemetry JSON response: GET and HEAD only (405 with Allow otherwise), never cached."""
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        start_response(
            "405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain"), ("Content-Length", "0")]
        )
        return []
    start_response(
        status, [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return [] if method == "HEAD" else [body]


class HealthRoutes:
    """The WSGI apps of /live, /ready and /health (and their aliases)."""

    def __init__(self, settings: Settings, checks: HealthChecks, readiness: Readiness, guard: Guard) -> None:
        self.settings = settings
        self.checks = checks
        self.readiness = readiness
        self.guard = guard
        self.started_at = time.time()

    def live(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """/live: 200 while the worker can answer; never runs a check."""
        body = json_body({"alive": True, "timestamp": iso_utc(time.time()), "pid": os.getpid()})
        return answer(environ, start_response, "200 OK", body)

    def _ready(self, *, wait: bool = True) -> tuple[bool, list[str]]:
        critical = [c.name for c in self.checks.checks.values() if c.critical]
        failing = [r.name for r in self.checks.run(critical, wait=wait) if not r.ok]
        return self.readiness.started and not self.readiness.draining and not failing, failing

    def ready_metric(self) -> Iterable[Family]:
        """``app_ready``: what /ready would answer from the worker serving the scrape (1 or 0), from
        what is known: a scrape never waits on a check (one that never answered yet is left out)."""
        ready = self._ready(wait=False)[0]
        yield gauge("app_ready", "1 when this service would answer /ready with 200", 1.0 if ready else 0.0)

    def ready(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """/ready: 200 when started, not draining and every critical check passes; else 503."""
        ready, failing = self._ready()
        data: dict[str, Any] = {"ready": ready, "timestamp": iso_utc(time.time())}
        if not self.readiness.started:
            data["reason"] = "starting"
        elif self.readiness.draining:
            data["reason"] = "shutting down"
        elif failing and self.guard.may_see_details(environ):
            data["failing"] = failing
        return answer(environ, start_response, "200 OK" if ready else "503 Service Unavailable", json_body(data))

    def health(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        """/health: every check's status, latency and age; 503 when a critical one fails."""
        results = self.checks.run()
        now = time.time()
        if any(not r.ok and r.critical for r in results):
            status, http = "unhealthy", "503 Service Unavailable"
        elif any(not r.ok for r in results):
            status, http = "degraded", "200 OK"
        else:
            status, http = "healthy", "200 OK"
        details = self.guard.may_see_details(environ)
        if HEALTH_JSON in str(environ.get("HTTP_ACCEPT", "")):
            return answer(
                environ, start_response, http, json_body(self._ietf(status, results, now, details)), HEALTH_JSON
            )
        data: dict[str, Any] = {
            "status": status,
            "service": self.settings.service_name,
            "version": self.settings.service_version,
            "timestamp": iso_utc(now),
            "uptime_seconds": round(now - self.started_at, 3),
            "checks": {r.name: r.as_dict(now, details) for r in results},
        }
        return answer(environ, start_response, http, json_body(data))

    def _ietf(self, status: str, results: list[Result], now: float, details: bool) -> dict[str, Any]:
        ietf_status = {"healthy": "pass", "degraded": "warn", "unhealthy": "fail"}[status]
        checks = {}
        for r in results:
            entry: dict[str, Any] = {
                "componentId": r.name,
                "status": "pass" if r.ok else "fail",
                "observedValue": round(r.latency_ms, 3),
                "observedUnit": "ms",
                "time": iso_utc(r.checked_at),
            }
            if details and r.error:
                entry["output"] = r.error
            checks[f"{r.name}:responseTime"] = [entry]
        return {
            "status": ietf_status,
            "version": self.settings.service_version,
            "serviceId": self.settings.service_name,
            "checks": checks,
        }

"""``Options``: the keywords ``instrument()`` and ``ObservabilityMiddleware`` take, typed.

Each is a field of ``Settings`` under the same name (a test holds the two in step); lists may be
given wherever ``Settings`` keeps a tuple. Type checkers and IDEs check and complete these
keywords: a misspelt option fails ``mypy``, not only the first run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from typing import Any, TypedDict

from .settings import AccessLogRoute, LogFileMode, LogRotation, LogSchema, TrustPolicy


class Options(TypedDict, total=False):
    """Every ``Settings`` field, optional; see the README's configuration table for each."""

    service_name: str
    service_version: str
    request_id_header: str
    trust_request_id: TrustPolicy
    trusted_proxies: Collection[str]
    access_log: bool
    access_log_route: AccessLogRoute
    log_telemetry_routes: bool
    redact_query_params: Collection[str]
    log_max_field_length: int
    user_id_getter: Callable[[dict[str, Any]], Any] | None
    auto_configure_logging: bool
    log_level: str
    log_file: str
    log_file_mode: LogFileMode
    log_rotation: LogRotation
    log_backup_count: int
    log_schema: LogSchema
    propagate_exceptions: bool
    metrics: bool
    metrics_path: str
    metrics_dir: str
    namespace: str
    maintenance_interval_seconds: float
    duration_buckets: Collection[float]
    slow_request_seconds: float
    routes: Collection[str]
    max_endpoints: int
    skip_paths: Collection[str | re.Pattern[str]]
    skip_methods: Collection[str]
    exemplars: bool
    exemplar_interval_seconds: float
    queue_time_header: str
    default_labels: dict[str, Any]
    summary: bool
    telemetry_prefix: str
    health: bool
    ready_on_start: bool
    health_cache_seconds: float
    telemetry_token: str
    telemetry_allow: Collection[str]

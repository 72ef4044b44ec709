"""Configuration: one frozen dataclass, filled from keyword arguments and ``SOFTFACTORY_OBS_*`` variables.

Everything here runs once, at construction. The request path only reads attributes that
``__post_init__`` has already validated and, where useful, precompiled.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from .route_templates import template_problem
from .store.metrics import DEFAULT_BUCKETS

ENV_PREFIX = "SOFTFACTORY_OBS_"

TrustPolicy = Literal["always", "never", "trusted_proxies"]
LogFileMode = Literal["dated", "watched"]
LogRotation = Literal["midnight", "hourly", "minutely", "secondly"]
LogSchema = Literal["default", "ecs"]
AccessLogRoute = Literal["direct", "logging"]

# Substrings (case-insensitive) of query parameter names whose values never reach a log line.
DEFAULT_REDACT_QUERY = (
    "password",
    "passwd",
    "pwd",
    "token",
    "secret",
    "api_key",
    "apikey",
    "access_token",
    "auth",
    "session",
    "signature",
    "sig",
    "key",
    "code",
    "state",
    "credential",
    "jwt",
    "passphrase",
    "otp",
)


_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


@dataclasses.dataclass(frozen=True)
class Settings:
    """All options of the middleware. Each field can also be set as ``SOFTFACTORY_OBS_<FIELD>``."""

    service_name: str = "app"
    service_version: str = ""

    # Request ids.
    request_id_header: str = "X-Request-Id"
    trust_request_id: TrustPolicy = "always"
    trusted_proxies: tuple[str, ...] = ()

    # Logs.
    access_log: bool = True
    # "direct": INFO access lines go straight to configure_logging's handlers, without a LogRecord
    # (handlers and filters others add to the root do not see them); "logging": every line is a record.
    access_log_route: AccessLogRoute = "direct"
    log_telemetry_routes: bool = False
    redact_query_params: tuple[str, ...] = DEFAULT_REDACT_QUERY
    log_max_field_length: int = 512
    user_id_getter: Callable[[dict[str, Any]], Any] | None = None
    # Set up JSON logging on the root logger at construction when nothing else has configured it.
    auto_configure_logging: bool = True
    log_level: str = "INFO"
    log_file: str = ""  # empty: stdout
    log_file_mode: LogFileMode = "dated"
    log_rotation: LogRotation = "midnight"
    log_backup_count: int = 30
    # Field names of every log line: ours (docs/LOG_SCHEMA.md) or Elastic Common Schema.
    log_schema: LogSchema = "default"

    # Errors.
    propagate_exceptions: bool = False

    # Metrics.
    metrics: bool = True
    metrics_path: str = "/metrics"
    # Shared by all workers; empty: a private tmpfs directory per gunicorn master, or memory outside gunicorn.
    metrics_dir: str = ""
    namespace: str = ""
    # How often each worker compacts dead shards and samples its own process metrics.
    maintenance_interval_seconds: float = 5.0

    # HTTP metrics.
    duration_buckets: tuple[float, ...] = DEFAULT_BUCKETS
    slow_request_seconds: float = 1.0
    # Route templates for apps without a framework adapter, e.g. "/api/users/{id}", "/files/{path:path}".
    routes: tuple[str, ...] = ()
    # Most distinct endpoint label values across all workers; beyond it they fold into "__overflow__".
    max_endpoints: int = 200
    # Requests not counted: exact paths, or regular expressions (strings starting with "^", or compiled).
    skip_paths: tuple[str | re.Pattern[str], ...] = ()
    skip_methods: tuple[str, ...] = ()
    # Attach the trace id (or request id) to the request counter and latency buckets (OpenMetrics only).
    exemplars: bool = True
    # Each worker replaces an exemplar (the counter's, each bucket's) at most this often, as
    # client_java's sampler does: a scrape shows one per bucket, so one per request is wasted work.
    exemplar_interval_seconds: float = 1.0
    # The header a proxy in front stamps with the request's arrival (nginx:
    # proxy_set_header X-Request-Start "t=${msec}"), for http_request_queue_seconds; empty: off.
    # Set it only behind a proxy that always overwrites the header: a client could send its own.
    queue_time_header: str = ""
    # Extra labels on every HTTP metric: {"region": "eu-west-1"} (static), or
    # {"tenant": (callable(environ) -> str, {"acme", "globex"})}: values outside the allow-list are "other".
    default_labels: dict[str, Any] = dataclasses.field(default_factory=dict)

    # JSON for humans: /api/metrics/summary and /api/metrics/errors (guarded like /metrics).
    summary: bool = True

    # Put in front of the health routes, the JSON endpoints and /api/metrics/prometheus (not
    # metrics_path, which is set on its own): "/_obs" serves /_obs/health, so an app's own /health
    # stays the app's. Empty: /health, /live, ... as they are.
    telemetry_prefix: str = ""

    # Health routes (/live, /ready, /health and aliases).
    health: bool = True
    # False: /ready answers 503 until the app calls ObservabilityMiddleware.mark_ready().
    ready_on_start: bool = True
    health_cache_seconds: float = 1.0

    # Who may read /metrics and health details: a bearer token and/or client networks (CIDRs).
    telemetry_token: str = ""
    telemetry_allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_types(self)
        _require(bool(self.service_name), "service_name", "a non-empty string", self.service_name)
        _require(
            bool(_HEADER_NAME.match(self.request_id_header)),
            "request_id_header",
            "an HTTP header name (letters, digits, '-')",
            self.request_id_header,
        )
        for name, hint in get_type_hints(Settings).items():
            if get_origin(hint) is Literal:
                _require(
                    getattr(self, name) in get_args(hint),
                    name,
                    "one of " + ", ".join(map(repr, get_args(hint))),
                    getattr(self, name),
                )
        _require(
            not self.queue_time_header or bool(_HEADER_NAME.match(self.queue_time_header)),
            "queue_time_header",
            "an HTTP header name such as 'X-Request-Start', or '' (off)",
            self.queue_time_header,
        )
        networks = []
        for cidr in self.trusted_proxies:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {cidr!r} is not an IP network; expected CIDRs such as '10.0.0.0/8' or '::1/128'"
                ) from None
        if self.trust_request_id == "trusted_proxies" and not networks:
            raise ValueError("trust_request_id='trusted_proxies' needs trusted_proxies (a list of CIDRs)")
        object.__setattr__(self, "_proxy_networks", tuple(networks))
        _require(
            64 <= self.log_max_field_length <= 65536,
            "log_max_field_length",
            "an integer from 64 to 65536",
            self.log_max_field_length,
        )
        _require(
            self.metrics_path.startswith("/"), "metrics_path", "an absolute path such as '/metrics'", self.metrics_path
        )
        _require(
            not self.telemetry_prefix
            or (self.telemetry_prefix.startswith("/") and not self.telemetry_prefix.endswith("/")),
            "telemetry_prefix",
            "empty, or a path such as '/_obs' (a leading slash, no trailing one)",
            self.telemetry_prefix,
        )
        _require(
            not self.namespace or bool(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", self.namespace)),
            "namespace",
            "a Prometheus name prefix (letters, digits, _)",
            self.namespace,
        )
        _require(
            0.05 <= self.maintenance_interval_seconds <= 3600,
            "maintenance_interval_seconds",
            "a number of seconds from 0.05 to 3600",
            self.maintenance_interval_seconds,
        )
        _require(
            len(self.duration_buckets) > 0
            and all(b > 0 for b in self.duration_buckets)
            and len(set(self.duration_buckets)) == len(self.duration_buckets),
            "duration_buckets",
            "distinct positive numbers of seconds",
            self.duration_buckets,
        )
        object.__setattr__(self, "duration_buckets", tuple(sorted(self.duration_buckets)))
        _require(
            0 <= self.exemplar_interval_seconds <= 3600,
            "exemplar_interval_seconds",
            "0 to 3600 seconds",
            self.exemplar_interval_seconds,
        )
        _require(
            self.slow_request_seconds > 0,
            "slow_request_seconds",
            "a positive number of seconds",
            self.slow_request_seconds,
        )
        _require(
            10 <= self.max_endpoints <= 100_000, "max_endpoints", "an integer from 10 to 100000", self.max_endpoints
        )
        if self.metrics_dir:
            _check_directory_path(self.metrics_dir)
        for template in self.routes:
            problem = template_problem(template)
            if problem is not None:
                raise ValueError(f"routes: {template!r} is not a route template ({problem})")
        object.__setattr__(self, "skip_methods", tuple(m.upper() for m in self.skip_methods))
        _check_default_labels(self.default_labels)
        for cidr in self.telemetry_allow:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"telemetry_allow: {cidr!r} is not an IP network; expected CIDRs") from None
        _require(
            0 <= self.health_cache_seconds <= 3600,
            "health_cache_seconds",
            "0 to 3600 seconds",
            self.health_cache_seconds,
        )
        object.__setattr__(self, "_skip", _compile_skips(self.skip_paths))
        _require(self.log_backup_count >= 0, "log_backup_count", "an integer >= 0", self.log_backup_count)
        _require(self.log_level.upper() in _LOG_LEVELS, "log_level", f"one of {_LOG_LEVELS}", self.log_level)
        object.__setattr__(self, "log_level", self.log_level.upper())
        object.__setattr__(self, "redact_query_params", tuple(p.lower() for p in self.redact_query_params if p))
        if self.user_id_getter is not None and not callable(self.user_id_getter):
            raise ValueError(f"user_id_getter: expected a callable taking the environ, got {self.user_id_getter!r}")

    @property
    def skip(self) -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
        """(exact paths, compiled patterns) from ``skip_paths``."""
        return self._skip  # type: ignore[attr-defined, no-any-return]

    @property
    def proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed into networks."""
        return self._proxy_networks  # type: ignore[attr-defined, no-any-return]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SOFTFACTORY_OBS_<FIELD>`` variables; keyword ``overrides`` win over them."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, hint in get_type_hints(cls).items():
            raw = environ.get(ENV_PREFIX + name.upper())
            # Empty means unset: an empty Helm value or `VAR=` must not turn a feature off.
            if raw is not None and raw.strip() and name not in overrides:
                values[name] = _parse(name, hint, raw)
        _warn_unknown_variables(environ)
        try:
            return cls(**{**values, **_checked_overrides(overrides)})
        except ValueError as exc:
            field = str(exc).partition(":")[0]
            if field in values:  # say where the bad value came from
                raise ValueError(
                    f"{ENV_PREFIX}{field.upper()}={environ[ENV_PREFIX + field.upper()]!r}: {exc}"
                ) from None
            raise

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **_checked_overrides(changes))


def _checked_overrides(options: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(options) - names)
    if unknown:
        guesses = [f"{name} (did you mean {guess}?)" if (guess := did_you_mean(name)) else name for name in unknown]
        raise ValueError(f"unknown option(s) {', '.join(guesses)}; valid options are: {', '.join(sorted(names))}")
    return dict(options)


def did_you_mean(name: str) -> str | None:
    """The option ``name`` was probably meant to be, if one is close."""
    options = [f.name for f in dataclasses.fields(Settings)]
    close = difflib.get_close_matches(name.lower(), options, n=1, cutoff=0.8)
    return close[0] if close else None


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``SOFTFACTORY_OBS_*`` variables that name no option, each with the option it was probably
    meant to be (as a variable name), if one is close."""
    options = {f.name for f in dataclasses.fields(Settings)}
    found = []
    for var in sorted(environ):
        if var.startswith(ENV_PREFIX) and var[len(ENV_PREFIX) :].lower() not in options:
            guess = did_you_mean(var[len(ENV_PREFIX) :])
            found.append((var, ENV_PREFIX + guess.upper() if guess else None))
    return found


_warned: set[str] = set()


def _warn_unknown_variables(environ: Mapping[str, str]) -> None:
    # Only likely typos, once per process: other SOFTFACTORY_OBS_* variables may be the app's own.
    # `python -m softfactory_obs check` lists them all.
    for var, guess in unknown_variables(environ):
        if guess is not None and var not in _warned:
            _warned.add(var)
            sys.stderr.write(f"softfactory_obs: {var} is not a setting and is ignored; did you mean {guess}?\n")


def _item_types(hint: Any) -> tuple[type, ...]:
    item = get_args(hint)[0]
    if item is float:
        return (int, float)
    options = get_args(item) if get_origin(item) in (Union, UnionType) else (item,)
    return tuple(get_origin(t) or t for t in options)  # re.Pattern[str] -> re.Pattern


def _check_types(settings: Settings) -> None:
    for name, hint in get_type_hints(Settings).items():
        value = getattr(settings, name)
        if get_origin(hint) is tuple:
            types = _item_types(hint)
            what = "numbers" if float in types else "strings"
            if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list, set, frozenset)):
                raise ValueError(f"{name}: expected a list of {what}, got {value!r}")
            if not all(isinstance(v, types) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name}: expected a list of {what}, got {value!r}")
            object.__setattr__(settings, name, tuple(float(v) if float in types else v for v in value))
        elif hint is float and type(value) in (int, float):
            object.__setattr__(settings, name, float(value))
        elif hint in (bool, int, str, float) and (type(value) is not hint):
            raise ValueError(f"{name}: expected {hint.__name__}, got {value!r}")


RESERVED_LABELS = frozenset(("method", "endpoint", "status", "exception", "le", "worker", "quantile"))


def _check_default_labels(labels: Any) -> None:
    if not isinstance(labels, dict):
        raise ValueError(f"default_labels: expected a dict of label name to value, got {labels!r}")
    for name, value in labels.items():
        if not isinstance(name, str) or not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name) or name.startswith("__"):
            raise ValueError(f"default_labels: {name!r} is not a valid label name")
        if name in RESERVED_LABELS:
            raise ValueError(f"default_labels: {name!r} is already used by the HTTP metrics; pick another name")
        if isinstance(value, str):
            continue
        ok = (
            isinstance(value, tuple)
            and len(value) == 2
            and callable(value[0])
            and isinstance(value[1], (set, frozenset, list, tuple))
            and all(isinstance(v, str) for v in value[1])
        )
        if not ok:
            raise ValueError(
                f"default_labels[{name!r}]: expected a string, or (callable(environ) -> str, allowed values) so "
                f"that a request cannot invent label values; got {value!r}"
            )


def _compile_skips(entries: tuple[str | re.Pattern[str], ...]) -> tuple[frozenset[str], tuple[re.Pattern[str], ...]]:
    exact, patterns = set(), []
    for entry in entries:
        if isinstance(entry, re.Pattern):
            patterns.append(entry)
        elif entry.startswith("^"):
            try:
                patterns.append(re.compile(entry))
            except re.error as exc:
                raise ValueError(f"skip_paths: {entry!r} is not a valid regular expression ({exc})") from None
        else:
            exact.add(entry)
    return frozenset(exact), tuple(patterns)


def _check_directory_path(path: str) -> None:
    # At start-up rather than at the first write or scrape. A directory this process cannot write
    # is allowed: scrapes still read it (the store's failure is counted, never raised).
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"metrics_dir: {path!r} cannot be a directory: {existing} is a file")


def _require(ok: bool, field: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{field}: expected {expected}, got {got!r}")


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_collection(var: str, hint: Any, raw: str) -> Any:
    """Comma-separated: a list of strings or numbers, or name=value pairs for a dict."""
    if get_origin(hint) is dict:
        pairs = [part.split("=", 1) for part in raw.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"{var}: expected name=value pairs separated by commas, got {raw!r}")
        return {k.strip(): v.strip() for k, v in pairs}
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    if float in _item_types(hint):
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(f"{var}: expected comma-separated numbers, got {raw!r}") from None
    return tuple(parts)


def _parse(name: str, hint: Any, raw: str) -> Any:
    """Turn one environment string into the field's type, or say exactly what was expected."""
    var = ENV_PREFIX + name.upper()
    origin = get_origin(hint)
    if hint is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{var}: expected one of 1/true/yes/on or 0/false/no/off, got {raw!r}")
    if hint in (int, float):
        try:
            return hint(raw.strip())
        except ValueError:
            raise ValueError(f"{var}: expected {'an integer' if hint is int else 'a number'}, got {raw!r}") from None
    if origin in (tuple, dict):
        return _parse_collection(var, hint, raw)
    if origin is Literal or hint is str:
        return raw.strip()
    raise ValueError(f"{var}: option {name} cannot be set from the environment; pass it as a keyword argument")

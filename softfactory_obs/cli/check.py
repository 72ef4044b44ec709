"""``softfactory-obs check``: the effective settings and where each came from, the metrics store,
the server, the optional packages; exit status 1 when something is wrong."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import os
import shutil
import sys
from typing import Any, TextIO

from .. import __version__
from ..extras import EXTRAS
from ..settings import ENV_PREFIX, Settings, unknown_variables
from ..store.location import ENV as METRICS_DIR_ENV
from ..store.location import auto_path

_SECRET = {"telemetry_token"}
_LOW_SPACE = 64 * 1024 * 1024


class Report:
    """Lines under headings, and the errors and warnings among them."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.errors = 0
        self.warnings = 0

    def heading(self, text: str) -> None:
        """Start a section."""
        self.out.write(f"\n{text}\n")

    def line(self, text: str, level: str = "") -> None:
        """One fact; ``level`` "error" or "warning" counts it."""
        if level == "error":
            self.errors += 1
        elif level == "warning":
            self.warnings += 1
        self.out.write(f"  {level.upper() + ': ' if level else ''}{text}\n")


def run_check(app_ref: str | None, out: TextIO) -> int:
    """Print the report; returns 1 if any error was found, else 0."""
    report = Report(out)
    out.write(f"softfactory_obs {__version__} on Python {sys.version.split()[0]}\n")
    settings = _settings(app_ref, report)
    _variables(report)
    _store(settings, report)
    _servers(report)
    _extras(report)
    verdict = f"{report.errors} error(s), {report.warnings} warning(s)"
    out.write(f"\n{'FAILED' if report.errors else 'OK'}: {verdict}\n")
    return 1 if report.errors else 0


def _settings(app_ref: str | None, report: Report) -> Settings | None:
    report.heading("Settings (value, and where it came from: keyword, environment or default)")
    try:
        from_env = Settings.from_env()
    except ValueError as exc:
        report.line(str(exc), "error")
        return None
    effective = from_env
    if app_ref is not None:
        try:
            effective = _app_settings(app_ref)
        except Exception as exc:  # the app's own import failing is a finding, not a crash
            report.line(f"--app {app_ref}: {type(exc).__name__}: {exc}", "error")
            return None
    defaults = Settings()
    for field in dataclasses.fields(Settings):
        name = field.name
        value = getattr(effective, name)
        if value != getattr(from_env, name):
            source = "keyword"
        elif os.environ.get(ENV_PREFIX + name.upper(), "").strip():
            source = f"environment ({ENV_PREFIX}{name.upper()})"
        else:
            source = "default" if value == getattr(defaults, name) else "keyword"
        shown = "***" if name in _SECRET and value else repr(value)
        report.line(f"{name} = {shown}  [{source}]")
    if app_ref is None:
        report.line("keywords passed to instrument() are not shown: give --app MODULE:NAME to see them")
    return effective


def _app_settings(app_ref: str) -> Settings:
    module_name, _, attribute = app_ref.partition(":")
    sys.path.insert(0, os.getcwd())  # as gunicorn and uWSGI find the app: from where they start
    obj: Any = importlib.import_module(module_name)
    for part in (attribute or "app").split("."):
        obj = getattr(obj, part)
    settings = getattr(obj, "settings", None)
    if not isinstance(settings, Settings):
        raise TypeError(f"{app_ref} is a {type(obj).__name__}, not an app instrument() returned")
    return settings


def _variables(report: Report) -> None:
    report.heading(f"{ENV_PREFIX}* variables")
    unknown = unknown_variables(os.environ)
    not_settings = {var for var, _ in unknown}
    known = sorted(v for v in os.environ if v.startswith(ENV_PREFIX) and v not in not_settings)
    for var in known:
        report.line(f"{var} is set")
    for var, guess in unknown:
        if guess is not None:
            report.line(f"{var} is not a setting and is ignored; did you mean {guess}?", "error")
        else:
            report.line(f"{var} is not a setting (softfactory_obs ignores it; your app may read it)")
    if not known and not unknown:
        report.line("none set")


def _store(settings: Settings | None, report: Report) -> None:
    report.heading("Metrics store")
    path = (settings.metrics_dir if settings is not None else "") or os.environ.get(METRICS_DIR_ENV, "")
    if not path:
        report.line(
            "no directory set: a gunicorn or uWSGI master makes a private one for its workers "
            f"({auto_path(0).replace('-0', '-<master pid>')}); elsewhere values stay in one process's memory. "
            f"Set {METRICS_DIR_ENV} for mod_wsgi or any other server with several processes"
        )
        return
    report.line(f"directory: {path}")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        report.line(f"{existing} is a file: the directory cannot be made", "error")
        return
    if existing != os.path.abspath(path):
        report.line(f"does not exist yet; made at the first write under {existing}")
    if not os.access(existing, os.W_OK | os.X_OK):
        report.line(f"{existing} is not writable by uid {os.getuid()}: workers would count in memory only", "error")
    stat = os.statvfs(existing)
    free = stat.f_bavail * stat.f_frsize
    kind = _file_system(existing)
    report.line(f"file system: {kind}, {free / 2**20:.0f} MiB free")
    if kind != "tmpfs":
        report.line(
            "not on tmpfs: every metric write may reach a disk (use /dev/shm or an emptyDir in memory)", "warning"
        )
    if free < _LOW_SPACE:
        report.line(f"less than {_LOW_SPACE // 2**20} MiB free: new series will wait in memory", "warning")


def _file_system(path: str) -> str:
    """The type of the file system ``path`` is on, from /proc/mounts (the longest mount point)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[1].replace("\\040", " ")
                if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


def _servers(report: Report) -> None:
    report.heading("Servers")
    for dist in ("gunicorn", "waitress", "uvicorn"):
        try:
            report.line(f"{dist} {importlib.metadata.version(dist)} installed")
        except importlib.metadata.PackageNotFoundError:
            continue
    uwsgi = shutil.which("uwsgi")
    if uwsgi:
        report.line(f"uwsgi at {uwsgi}: run it with --master, so that its workers find the store (configs/uwsgi.ini)")
    config = os.path.join(os.getcwd(), "gunicorn.conf.py")
    if os.path.exists(config):
        with open(config, encoding="utf-8") as f:
            hooked = "softfactory_obs.gunicorn" in f.read()
        report.line(
            f"{config}: {'uses' if hooked else 'does not use'} softfactory_obs.gunicorn's hooks "
            "(on_starting, post_worker_init, on_exit, logconfig_dict)"
        )


def _extras(report: Report) -> None:
    report.heading("Optional packages (extras)")
    for module, extra in EXTRAS.items():
        try:
            version = importlib.metadata.version(module.replace("_", "-"))
            report.line(f"{module} {version}: softfactory-obs[{extra}] available")
        except importlib.metadata.PackageNotFoundError:
            report.line(f"{module} not installed: pip install 'softfactory-obs[{extra}]' if you need it")

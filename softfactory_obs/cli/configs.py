"""``softfactory-obs configs DIR``: the shipped monitoring configs, written with the user's names.

The files are the ones the test suite proves against promtool, amtool and a live Prometheus; this
only substitutes, so what it writes stays as proven: the job name, the metric namespace (the
prefix ``namespace=`` gives the HTTP metrics) and where the runbook lives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TextIO

SHIPPED = Path(str(resources.files("softfactory_obs") / "configs"))
DEFAULT_JOB = "softfactory-app"
DEFAULT_RUNBOOK = "docs/RUNBOOKS.md"
# The HTTP families that namespace= prefixes (with their _bucket/_sum/_count and _total samples);
# not recording rules' names (``job:http_errors:ratio_rate5m``), which a ':' comes before.
_HTTP_METRIC = re.compile(r"(?<![\w:])(?=http_(?:requests?|slow|response)_)")
_SKIP = {"__pycache__"}
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:/-]+")


def shipped_files() -> list[Path]:
    """Every shipped config file, relative to the configs directory."""
    return sorted(
        p.relative_to(SHIPPED)
        for p in SHIPPED.rglob("*")
        if p.is_file() and not _SKIP & set(p.parts) and p.suffix != ".pyc"
    )


def substitutions(job: str | None, namespace: str, runbook_base: str | None) -> list[Callable[[str], str]]:
    """The edits for these names, each checked first: a bad one is an error, never a broken file."""
    edits: list[Callable[[str], str]] = []
    if job is not None:
        if not _LABEL_VALUE.fullmatch(job):
            raise ValueError(f"--job: {job!r} is not a usable job name (letters, digits, _ . : / -)")
        edits.append(lambda text: text.replace(DEFAULT_JOB, job))  # it appears only as one (test: test_cli)
    if namespace:
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", namespace):
            raise ValueError(f"--namespace: {namespace!r} is not a metric name prefix (letters, digits, _)")
        edits.append(lambda text: _HTTP_METRIC.sub(namespace + "_", text))
    if runbook_base is not None:
        if not runbook_base or any(c in runbook_base for c in "\"'#\n "):
            raise ValueError(f"--runbook-base: {runbook_base!r} is not a URL without quotes, spaces or '#'")
        edits.append(lambda text: text.replace(f'"{DEFAULT_RUNBOOK}#', f'"{runbook_base}#'))
    return edits


def write_configs(
    directory: str,
    *,
    job: str | None = None,
    namespace: str = "",
    runbook_base: str | None = None,
    force: bool = False,
    out: TextIO,
) -> int:
    """Write every shipped config under ``directory``; returns the exit status (0)."""
    edits = substitutions(job, namespace, runbook_base)
    target = Path(directory)
    files = shipped_files()
    existing = [f for f in files if (target / f).exists()]
    if existing and not force:
        raise ValueError(
            f"{len(existing)} file(s) exist already in {target} ({existing[0]}, ...); pass --force to overwrite them"
        )
    for name in files:
        text = (SHIPPED / name).read_text(encoding="utf-8")
        for edit in edits:
            text = edit(text)
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text, encoding="utf-8")
        out.write(f"wrote {target / name}\n")
    out.write(f"{len(files)} files in {target}; see {target / 'README.md'} for what each is for\n")
    return 0

"""Where our ASGI overhead goes, in situ: ``python -m bench.asgi_parts [--rounds N] [--chunk N]``.

Bare Starlette and four instances of ours over it (the front with ids only, ids + metrics, ids +
access line, everything) run in one process, in alternating chunks of requests driven as
``bench.asgi`` drives them. One process, so a slow spell of the host (the table's separate
interpreters can land in different ones, and ours, touching more memory, slows more in them)
hits every variant alike: the parts' sum matches the whole within a µs or so, where separate
runs disagree by several. A tool for finding what to make cheaper; ``make bench`` stays the
measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

import softfactory_obs

from . import PAUSE
from .asgi import build as build_variant
from .asgi import chunks, drive

# Our options per part; each is its own instance over its own Starlette app, sharing one store.
PARTS: dict[str, dict[str, bool]] = {
    "ids": {"metrics": False, "access_log": False},
    "ids + metrics": {"access_log": False},
    "ids + access line": {"metrics": False},
    "full": {},
}


def build(metrics_dir: str) -> dict[str, Any]:
    """Bare Starlette and each part's instrumented app."""
    softfactory_obs.configure_logging(stream=open(os.devnull, "w"))  # noqa: SIM115 - the process's log stream
    apps: dict[str, Any] = {"bare": build_variant("starlette")}
    for name, options in PARTS.items():
        apps[name] = softfactory_obs.instrument_asgi(build_variant("starlette"), metrics_dir=metrics_dir, **options)
    return apps


def run(rounds: int = 40, chunk: int = 250) -> dict[str, list[float]]:
    """µs per request of every variant, one sample per chunk."""
    with tempfile.TemporaryDirectory() as metrics_dir:
        apps = build(metrics_dir)
        for app in apps.values():
            asyncio.run(drive(app, 300))  # warm: first requests bind series and fill caches
        time.sleep(PAUSE)  # the maintenance thread's first round, before anything is timed
        return asyncio.run(chunks(apps, rounds, chunk))


def table(samples: dict[str, list[float]]) -> list[str]:
    """Medians, and each part's overhead over bare Starlette."""
    bare = statistics.median(samples["bare"])
    lines = ["| variant | µs per request | over bare |", "|---|---:|---:|"]
    for name, values in samples.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:.1f} | {median - bare:+.1f} |")
    return lines


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=40, help="chunks per variant")
    parser.add_argument("--chunk", type=int, default=250, help="requests per chunk")
    args = parser.parse_args()
    os.environ.setdefault("SOFTFACTORY_OBS_MAINTENANCE_INTERVAL_SECONDS", "3600")  # its work is not a request's
    print("\n".join(table(run(args.rounds, args.chunk))))


if __name__ == "__main__":
    main()

"""The command line: ``python -m softfactory_obs`` (or ``softfactory-obs``) ``check`` and ``configs``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from .check import run_check
from .configs import write_configs


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    top = argparse.ArgumentParser(
        prog="softfactory-obs",
        description="Check a service's softfactory_obs set-up, or write the monitoring configs it ships with.",
    )
    top.add_argument("--version", action="version", version=f"softfactory-obs {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser(
        "check",
        help="show the effective settings and where each came from, the metrics store and the server; exit 1 on errors",
        description="Show the effective settings (keyword, environment or default), unknown SOFTFACTORY_OBS_* "
        "variables, the metrics store directory and the server found. Exits 1 when anything is wrong, so it can "
        "run in a container's start-up or in CI.",
    )
    check.add_argument(
        "--app", metavar="MODULE:NAME", help="import this instrumented app (as gunicorn names it) to see its keywords"
    )
    configs = commands.add_parser(
        "configs",
        help="write the Prometheus, rules, Alertmanager, Grafana, Kubernetes and gunicorn configs to DIR",
        description="Write the shipped monitoring configs to DIR with your job name, metric namespace and runbook "
        "location filled in. Existing files are left alone unless --force is given.",
    )
    configs.add_argument("directory", metavar="DIR", help="where to write them (made if missing)")
    configs.add_argument("--job", default=None, help="the Prometheus job name of your service (softfactory-app)")
    configs.add_argument("--namespace", default="", help="the namespace= your app passes instrument(), if any")
    configs.add_argument(
        "--runbook-base",
        default=None,
        metavar="URL",
        help="where your copy of docs/RUNBOOKS.md is served; alerts link to URL#<alert>",
    )
    configs.add_argument("--force", action="store_true", help="overwrite files that exist")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        if args.command == "check":
            return run_check(args.app, sys.stdout)
        return write_configs(
            args.directory,
            job=args.job,
            namespace=args.namespace,
            runbook_base=args.runbook_base,
            force=args.force,
            out=sys.stdout,
        )
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"softfactory-obs {args.command}: {exc}\n")
        return 1

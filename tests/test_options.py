"""instrument()'s keywords are typed: mypy (and IDEs) check them against Settings' fields."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from servers import ROOT

from softfactory_obs.options import Options
from softfactory_obs.settings import Settings


def test_options_name_every_settings_field_and_nothing_else() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(Options.__annotations__) == fields
    assert Options.__optional_keys__ == frozenset(fields)  # every option may be left out


SNIPPET = """
from softfactory_obs import ObservabilityMiddleware, instrument
from softfactory_obs.store import Counter, Histogram

def app(environ, start_response):  # type: ignore[no-untyped-def]
    return [b""]

ok = instrument(app, service_name="shop", routes=["/api/users/{id}"], log_schema="ecs", max_endpoints=50)
ok2 = ObservabilityMiddleware(app, duration_buckets=[0.1, 1.0], trust_request_id="never")
bad_name = instrument(app, service_nme="shop")
bad_type = instrument(app, max_endpoints="50")
bad_choice = instrument(app, log_schema="json")
Histogram("h_seconds", "d", ["a"]).labels("v").observe(0.5)
Counter("c_total", "d", ["a"]).labels("v").inc()
bad_child = Counter("n_total", "d", ["a"]).labels("v").observe(1.0)
"""


def test_mypy_refuses_a_misspelt_mistyped_or_unknown_option_and_a_childs_wrong_method(tmp_path: Path) -> None:
    source = tmp_path / "uses_options.py"
    source.write_text(SNIPPET)
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"),
         "--python-version", "3.11", str(source)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    lines = SNIPPET.splitlines()
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    flagged = {int(line.split(":")[1]) for line in errors}
    expected = {n + 1 for n, text in enumerate(lines) if text.startswith("bad_")}
    assert flagged == expected, out.stdout + out.stderr  # the good calls pass, each bad one is caught
    assert any("service_nme" in line for line in errors), errors

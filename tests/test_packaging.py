"""The package as users get it: the sdist and wheel built, checked, and the wheel alone (no extras)
installed in a fresh venv, where it serves an instrumented request and writes its configs."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
from servers import ROOT

from softfactory_obs import __version__


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    # Nothing of this checkout may leak in: the fresh venv must see only what its wheel installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, check=False, cwd=cwd, env=env
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", out, ROOT)  # the wheel from the sdist
    return out


def test_the_sdist_and_wheel_carry_what_they_promise_and_pass_the_checkers(dist: Path) -> None:
    wheel = next(dist.glob("*.whl"))
    sdist = next(dist.glob("*.tar.gz"))
    assert wheel.name == f"softfactory_obs-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(f"softfactory_obs-{__version__}.dist-info/METADATA").decode()
    assert f"softfactory_obs-{__version__}.dist-info/licenses/LICENSE" in names
    assert "softfactory_obs/configs/rules/alerts.yml" in names and "softfactory_obs/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    requires = sorted(
        line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra" not in line
    )
    assert requires == ["Requires-Dist: python-json-logger>=4.0"]  # nothing else without an extra
    for extra in ("redis", "psutil", "prometheus", "all"):
        assert f"Provides-Extra: {extra}" in metadata
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    for needed in ("LICENSE", "CHANGELOG.md", "tests/conftest.py", "tests/helpers.py", "docs/RUNBOOKS.md",
                   "examples/demo.py", "softfactory_obs/configs/prometheus.yml", "Makefile",
                   "tests/schema/package-lock.json"):  # fmt: skip
        assert needed in members, needed
    assert not [m for m in members if "node_modules" in m]  # what npm ci installs for the tests stays out
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    run(sys.executable, "-m", "check_wheel_contents", wheel)


def test_the_wheel_alone_serves_a_request_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", next(dist.glob("*.whl")))
    script = textwrap.dedent(
        """
        import io, sys
        from wsgiref.util import setup_testing_defaults
        from softfactory_obs import instrument

        def hello(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hi"]

        app = instrument(hello, service_name="fresh", auto_configure_logging=False)
        environ = {}
        setup_testing_defaults(environ)
        seen = {}
        def start_response(status, headers, exc_info=None):
            seen.update(status=status, headers=dict(headers))

        body = b"".join(app(environ, start_response))
        assert seen["status"] == "200 OK" and body == b"hi", seen
        assert seen["headers"]["X-Request-Id"]
        for module in ("redis", "psutil", "prometheus_client", "webob"):
            try:
                __import__(module)
            except ImportError:
                continue
            raise SystemExit(f"{module} came with the wheel alone")
        try:
            import softfactory_obs.redis
        except ImportError as exc:
            assert "pip install 'softfactory-obs[redis]'" in str(exc), exc
        else:
            raise SystemExit("softfactory_obs.redis imported without redis")
        print("served")
        """
    )
    assert run(python, "-c", script, cwd=tmp_path).strip() == "served"
    where = run(python, "-c", "import softfactory_obs; print(softfactory_obs.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), where  # the wheel's copy, not this checkout's
    out = run(venv / "bin" / "softfactory-obs", "configs", tmp_path / "monitoring", cwd=tmp_path)
    assert (tmp_path / "monitoring" / "rules" / "alerts.test.yml").exists(), out
    assert run(venv / "bin" / "softfactory-obs", "--version", cwd=tmp_path).strip() == f"softfactory-obs {__version__}"

"""Real servers for integration tests: started on a free port, always stopped by the test."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psutil
from helpers import free_port, require_binary, skip_or_fail
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
USERS = "/api/users/{user_id}"


_S = TypeVar("_S", bound="Server")


class Server:
    """A server process started on a free loopback port in a session of its own, its stdout and
    stderr in files; ``command()`` says what to run."""

    name = "server"

    def __init__(self, tmp: Path, **env: str) -> None:
        self.port = free_port()
        self.stdout_path = tmp / f"{self.name}.stdout"
        self.stderr_path = tmp / f"{self.name}.stderr"
        self.log_path = self.stdout_path  # where our JSON lines go
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.env, stdout=out, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.stderr_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not listen within 30 s:\n{self.stderr_path.read_text()}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def raw_request(self, request: bytes, timeout: float = 10.0) -> bytes:
        """Send bytes exactly as given (headers no HTTP client would send) and read the whole answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(request)
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)

    def log_lines(self, wait_for: int = 0, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = [json.loads(x) for x in self.log_path.read_text().splitlines() if x.startswith("{")]
            if len(lines) >= wait_for or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


class Gunicorn(Server):
    """``gunicorn -c examples/gunicorn.conf.py <app>`` with its stdout (our JSON logs) in a file."""

    name = "gunicorn"

    def __init__(
        self,
        tmp: Path,
        app: str = "examples.demo:app",
        workers: int = 3,
        *,
        config: Path = ROOT / "examples" / "gunicorn.conf.py",
        python: str = sys.executable,
        args: tuple[str, ...] = (),
        **env: str,
    ) -> None:
        super().__init__(tmp, **env)
        self.env.update({"DEMO_BIND": f"127.0.0.1:{self.port}", "DEMO_WORKERS": str(workers), **env})
        self.app = app
        self.config = config
        self.python = python
        self.args = args

    def command(self) -> list[str]:
        return [self.python, "-m", "gunicorn", "-c", str(self.config), *self.args, self.app]


class Waitress(Server):
    """waitress: one process, many threads; our JSON lines on its stdout."""

    name = "waitress"

    def __init__(self, tmp: Path, app: str, threads: int = 4, **env: str) -> None:
        super().__init__(tmp, **env)
        self.app, self.threads = app, threads

    def command(self) -> list[str]:
        listen = f"--listen=127.0.0.1:{self.port}"
        return [sys.executable, "-m", "waitress", listen, f"--threads={self.threads}", self.app]


class Command(Server):
    """Any server started by a command line (uvicorn, hypercorn); our JSON lines on its stdout."""

    def __init__(self, tmp: Path, name: str, argv: list[str], **env: str) -> None:
        self.name = name
        super().__init__(tmp, **env)
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]

    def command(self) -> list[str]:
        return self.argv


def uvicorn(tmp: Path, *args: str) -> Command:
    """``uvicorn asgi_app:app`` (tests/asgi_app.py) on a free port, with these extra arguments."""
    argv = [sys.executable, "-m", "uvicorn", "--port", "{port}", "--host", "127.0.0.1", "--no-access-log", *args]
    return Command(tmp, "uvicorn", [*argv, "asgi_app:app"], PYTHONPATH=f"{ROOT / 'tests'}{os.pathsep}{ROOT}")


UWSGI_PYTHON_PLUGIN = Path("/usr/lib/uwsgi/plugins/python3_plugin.so")


class Uwsgi(Server):
    """Debian's ``uwsgi`` with its python3 plugin, in its default prefork mode: the app is imported
    in the master, which then forks ``processes`` workers from C (no Python at-fork hooks run).
    The venv's packages reach the plugin's interpreter through ``--pythonpath``; the python plugin
    points ``sys.stdout`` at stderr, so our JSON lines are read from there."""

    name = "uwsgi"

    def __init__(self, tmp: Path, module: str, processes: int = 4, *, args: tuple[str, ...] = (), **env: str) -> None:
        binary = require_binary("uwsgi")
        if not UWSGI_PYTHON_PLUGIN.exists():
            skip_or_fail(f"{UWSGI_PYTHON_PLUGIN} is missing (apt-get install uwsgi-plugin-python3; .ci/run does)")
        super().__init__(tmp, **env)
        self.log_path = self.stderr_path
        self.binary, self.module, self.processes, self.args = binary, module, processes, args

    def command(self) -> list[str]:
        site = sysconfig.get_paths()["purelib"]  # this venv's, for the plugin's interpreter of the same version
        return [
            self.binary, "--plugin", "python3", "--master", "--processes", str(self.processes),
            "--http-socket", f"127.0.0.1:{self.port}", "--pythonpath", site, "--pythonpath", str(ROOT),
            "--pythonpath", str(ROOT / "tests"), "--module", self.module, "--disable-logging", "--die-on-term",
            *self.args,
        ]  # fmt: skip


APACHE = Path("/usr/sbin/apache2")
MOD_WSGI = Path("/usr/lib/apache2/modules/mod_wsgi.so")


class Apache(Server):
    """Debian's Apache with mod_wsgi, in the foreground (this process is the Apache parent), with a
    config of its own: daemon mode (``WSGIDaemonProcess``) or embedded mode. mod_wsgi runs Debian's
    python3 of this venv's version with the venv's packages on its python-path.

    Everything lives in a 0755 directory made here (pytest's tmp_path is 0700 under root, and the
    daemon processes run as www-data, who must read the app and write the store). Our JSON lines go
    to Apache's ErrorLog."""

    name = "apache"

    def __init__(
        self,
        tmp: Path,
        wsgi: str,
        *,
        mode: str = "daemon",
        processes: int = 2,
        threads: int = 4,
        daemon_options: str = "",
        **env: str,
    ) -> None:
        if not APACHE.exists() or not MOD_WSGI.exists():
            skip_or_fail(
                "apache2 or mod_wsgi is missing (apt-get install apache2 libapache2-mod-wsgi-py3; .ci/run does)"
            )
        built_for = os.path.realpath(MOD_WSGI).rsplit("-", 1)[-1]  # mod_wsgi.so-3.11
        ours = "{}.{}".format(*sys.version_info[:2])
        if built_for != ours:
            skip_or_fail(f"mod_wsgi embeds Python {built_for}, this venv is {ours}: its packages would not load")
        super().__init__(tmp, **env)
        if "SOFTFACTORY_OBS_METRICS_DIR" not in env:  # Apache's children inherit its environment
            self.env.pop("SOFTFACTORY_OBS_METRICS_DIR", None)
        self.root = Path(tempfile.mkdtemp(prefix="sfo-apache-"))
        self.root.chmod(0o755)
        (self.root / "rt").mkdir()
        self.log_path = self.error_log = self.root / "error.log"
        self.conf = self.root / "httpd.conf"
        (self.root / "app.wsgi").write_text(wsgi)
        site, project = Path(sysconfig.get_paths()["purelib"]), ROOT
        self.mounted: Path | None = None
        if not _others_can_read(ROOT):  # a checkout under /root (0700): www-data cannot reach it
            self.mounted = project = self.root / "project"
            project.mkdir()
            subprocess.run(["mount", "--bind", str(ROOT), str(project)], check=True, capture_output=True)
            if site.is_relative_to(ROOT):
                site = project / site.relative_to(ROOT)
        if not _others_can_read(site):
            skip_or_fail(f"the daemon user cannot read {site}: make the venv readable by others")
        path = ":".join([str(site), str(project), str(project / "tests")])
        user = "User www-data\nGroup www-data" if os.getuid() == 0 else ""
        if mode == "daemon":
            wsgi_conf = (
                f"WSGIDaemonProcess app processes={processes} threads={threads} python-path={path} "
                f"home={self.root} display-name=%{{GROUP}} {daemon_options}\n"
                "WSGIProcessGroup app\nWSGIRestrictEmbedded On"
            )
            mpm = "event"
        else:
            wsgi_conf = f"WSGIPythonPath {path}"
            mpm = "prefork" if threads == 1 else "event"
        mpm_conf = (
            f"MinSpareServers {processes}\nMaxSpareServers {processes}"
            if mpm == "prefork"
            else f"ThreadsPerChild {threads}\nThreadLimit {threads}\nMinSpareThreads 1\n"
            f"MaxSpareThreads {processes * threads}"
        )
        self.conf.write_text(
            f"""ServerRoot "{self.root}"
Listen 127.0.0.1:{self.port}
ServerName 127.0.0.1
PidFile {self.root}/httpd.pid
DefaultRuntimeDir {self.root}/rt
ErrorLog {self.error_log}
LogLevel info
LoadModule mpm_{mpm}_module /usr/lib/apache2/modules/mod_mpm_{mpm}.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule wsgi_module {MOD_WSGI}
{user}
StartServers {processes}
ServerLimit {processes}
MaxRequestWorkers {processes * threads}
MaxConnectionsPerChild 0
{mpm_conf}
WSGISocketPrefix {self.root}/rt/wsgi
{wsgi_conf}
WSGIApplicationGroup %{{GLOBAL}}
WSGIScriptAlias / {self.root}/app.wsgi
<Directory {self.root}>
    Require all granted
</Directory>
"""
        )

    def command(self) -> list[str]:
        return [str(APACHE), "-f", str(self.conf), "-DFOREGROUND"]

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            unmount = ["umount", "--lazy", str(self.mounted)]
            unmounted = self.mounted is None or subprocess.run(unmount, check=False).returncode == 0
            if unmounted:  # never delete through a bind mount still in place: it is the checkout
                shutil.rmtree(self.root, ignore_errors=True)


def _others_can_read(path: Path) -> bool:
    """Whether a user other than the owner can reach ``path`` and list it (each parent searchable)."""
    return bool(path.stat().st_mode & 0o004) and all(parent.stat().st_mode & 0o001 for parent in path.parents)


def query(port: int, expr: str) -> list[dict[str, Any]]:
    """An instant query through the HTTP API that Prometheus and VictoriaMetrics share."""
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        data = json.load(resp)
    assert data["status"] == "success", data
    return data["data"]["result"]  # type: ignore[no-any-return]


def get(port: int, path: str, timeout: float = 10.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def fetch_id(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """GET ``path`` on a connection of its own: the status and the X-Request-Id it answered with."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Request-Id") or ""
    finally:
        conn.close()


# What a client sees from a worker that stops (uvicorn's --limit-max-requests) or from a moment with
# no worker listening: the request was not served, so sending it again counts it once.
NOT_SERVED = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)


def fetch_id_retrying(port: int, path: str, request_id: str, timeout: float = 60.0) -> tuple[int, str]:
    """``fetch_id`` with our own id, sent again (after a short pause) while a worker restart leaves
    it unserved."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fetch_id(port, path, {"X-Request-Id": request_id})
        except NOT_SERVED:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def exact_under_load(
    server: Server, path: Callable[[int], str], endpoint: str, rounds: int = 3, per_round: int = 40
) -> list[str]:
    """Rounds of ``per_round`` requests, eight at a time, each answered 200; after each round three
    scrapes (whichever worker answers) must each count every request so far under ``endpoint``.
    Returns the request ids the responses carried."""
    ids: list[str] = []
    for done in range(1, rounds + 1):
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: fetch_id(server.port, path(n)), range(per_round)))
        assert all(status == 200 for status, _ in answers), answers
        ids += [request_id for _, request_id in answers]
        for _ in range(3):
            assert served(scrape(server.port), endpoint) == done * per_round
    return ids


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(port, "/metrics")
    assert status == 200, body[:500]
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape_until(
    port: int, done: Callable[[dict[tuple[str, tuple[tuple[str, str], ...]], float]], bool], timeout: float = 30.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Scrape until ``done(metrics)`` holds or ``timeout`` seconds pass; the last scrape either way
    (the caller's assertions say what is missing)."""
    deadline = time.monotonic() + timeout
    while not done(metrics := scrape(port)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return metrics


def served(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], endpoint: str = USERS) -> float:
    return sum(
        v for (name, labels), v in metrics.items() if name == "http_requests_total" and ("endpoint", endpoint) in labels
    )


def worker_pids(server: Server) -> list[int]:
    assert server.proc is not None
    return [c.pid for c in psutil.Process(server.proc.pid).children()]


class RedisServer:
    """A real redis-server on a free loopback port, no persistence; stopped (or killed) by the test."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        binary = require_binary("redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("redis-server did not start")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=5)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

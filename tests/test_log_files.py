"""File output: many processes, rotation in the middle, no line lost, duplicated or interleaved."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import call_wsgi, make_environ, skip_or_fail, wrap

from softfactory_obs import ObservabilityMiddleware, configure_logging
from softfactory_obs._failures import failure_counts
from softfactory_obs.logs import DIRECT_SINKS
from softfactory_obs.logs.files import DatedFileHandler, StreamLineHandler

WRITER = textwrap.dedent("""
    import logging, random, sys, time
    from softfactory_obs import ObservabilityMiddleware, configure_logging

    worker, lines, log_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    configure_logging(log_file=log_file, rotation="secondly", backup_count=100)
    log = logging.getLogger("writer")
    rng = random.Random(worker)
    deadline = time.time() + 2.5  # spread over at least two rotations
    for seq in range(lines):
        # Some lines far beyond PIPE_BUF and stdio's buffer size, where splitting would show.
        payload = "x" * rng.choice([10, 100, 5000, 20000])
        log.info("line", extra={"worker": worker, "seq": seq, "payload": payload})
        remaining = deadline - time.time()
        if remaining > 0:
            time.sleep(remaining / (lines - seq))
""")


def test_four_processes_across_rotations_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "app.log"
    lines_each = 400
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(w), str(lines_each), str(log_file)]) for w in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    files = sorted((tmp_path / "logs").iterdir())
    assert len(files) >= 2, f"expected a rotation during the run, got {files}"
    seen: dict[tuple[int, int], int] = {}
    for path in files:
        assert path.name.startswith("app-") and path.suffix == ".log"
        stamp = path.name[len("app-") : -len(".log")]
        for raw in path.read_text().splitlines():
            record = json.loads(raw)  # fails on any interleaved or cut line
            key = (record["worker"], record["seq"])
            seen[key] = seen.get(key, 0) + 1
            # Every line lives in the file of its own second.
            assert record["timestamp"][:19].replace(":", "-") == stamp
    assert len(seen) == 4 * lines_each
    assert set(seen.values()) == {1}


def test_old_files_beyond_backup_count_are_pruned(tmp_path: Path) -> None:
    handler = DatedFileHandler(str(tmp_path / "svc.log"), "midnight", backup_count=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    (tmp_path / "svc-errors.log").write_text("not ours\n")
    (tmp_path / "other-2020-01-01.log").write_text("not ours\n")
    day = 86400.0
    for n in range(5):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, f"day {n}", None, None)
        record.created = 1_700_000_000 + n * day
        handler.handle(record)
    handler.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "other-2020-01-01.log",
        "svc-2023-11-16.log",
        "svc-2023-11-17.log",
        "svc-2023-11-18.log",
        "svc-errors.log",
    ]
    assert (tmp_path / "svc-2023-11-18.log").read_text() == "day 4\n"


def test_watched_mode_follows_external_rotation(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    configure_logging(log_file=str(log_file), file_mode="watched")
    log = logging.getLogger("rotated")
    log.warning("before")
    os.rename(log_file, tmp_path / "app.log.1")  # what logrotate does
    log.warning("after")
    assert [json.loads(x)["message"] for x in (tmp_path / "app.log.1").read_text().splitlines()] == ["before"]
    assert [json.loads(x)["message"] for x in log_file.read_text().splitlines()] == ["after"]


def test_full_disk_never_fails_a_request(capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/full"):
        skip_or_fail("needs /dev/full (Linux) to simulate a full disk")
    configure_logging(log_file="/dev/full", file_mode="watched")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        logging.getLogger("app").warning("this write hits ENOSPC")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"served"]

    for _ in range(3):
        assert call_wsgi(wrap(app)).body == b"served"
    assert failure_counts()["log file"] == 6  # the app's line and the access line, three times
    assert capsys.readouterr().err.count("No space left on device") == 1


def test_dated_file_handler_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rotation: expected one of midnight"):
        DatedFileHandler(str(tmp_path / "a.log"), "weekly")
    with pytest.raises(ValueError, match="backup_count"):
        DatedFileHandler(str(tmp_path / "a.log"), backup_count=-1)


def test_stdout_lines_from_many_processes_never_interleave(tmp_path: Path) -> None:
    # Four writers share one pipe, as gunicorn workers share the master's stdout.
    script = textwrap.dedent("""
        import logging, sys
        from softfactory_obs import ObservabilityMiddleware, configure_logging
        configure_logging()
        for seq in range(300):
            logging.getLogger("w").info("line", extra={"w": int(sys.argv[1]), "seq": seq, "pad": "y" * 3000})
    """)
    driver = textwrap.dedent(f"""
        import subprocess, sys
        ps = [subprocess.Popen([sys.executable, "-c", {script!r}, str(w)]) for w in range(4)]
        sys.exit(max(p.wait() for p in ps))
    """)
    out = subprocess.run([sys.executable, "-c", driver], capture_output=True, timeout=60, check=True).stdout
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert sorted((r["w"], r["seq"]) for r in records) == [(w, s) for w in range(4) for s in range(300)]


def test_access_lines_reach_a_dated_file_directly(tmp_path: Path) -> None:
    configure_logging(log_file=str(tmp_path / "app.log"))
    mw = ObservabilityMiddleware(
        lambda env, sr: sr("200 OK", [("Content-Length", "0")]) or [], auto_configure_logging=False, metrics=False
    )
    [access] = [h for h in mw.finish_hooks if type(h).__name__ == "AccessLog"]
    assert DIRECT_SINKS.targets(access.logger)  # our DatedFileHandler: the direct path
    for n in range(3):
        call_wsgi(mw, make_environ(PATH_INFO=f"/p{n}"))
    [path] = tmp_path.iterdir()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["path"] for x in lines] == ["/p0", "/p1", "/p2"]
    assert all(path.name == f"app-{x['timestamp'][:10]}.log" for x in lines)


def test_a_direct_line_beyond_pipe_buf_waits_for_the_handler_lock() -> None:
    # The kernel may split a write of more than PIPE_BUF bytes to a pipe: a long line takes the
    # handler's lock (as logging's emit does), so two threads of one worker never mix theirs.
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as stream:
        handler = StreamLineHandler(stream)
        handler.write_text_line(b"short\n", 0.0)  # a line PIPE_BUF keeps whole: no lock
        handler.acquire()
        try:
            writer = threading.Thread(target=handler.write_text_line, args=(b"x" * 5000 + b"\n", 0.0))
            writer.start()
            writer.join(0.2)
            assert writer.is_alive()  # waiting for the lock
        finally:
            handler.release()
        writer.join(5)
        assert not writer.is_alive()
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"short\n" + b"x" * 5000 + b"\n"

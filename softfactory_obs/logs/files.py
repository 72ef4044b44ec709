"""Log handlers that stay correct when many gunicorn workers write to one place.

Every record goes out as exactly one ``os.write`` of a whole line, so lines from different
processes never interleave: a pipe guarantees that up to ``PIPE_BUF`` (4096) bytes, a regular file
opened with ``O_APPEND`` on a local Linux filesystem for any size. Python's buffered streams would
split long lines at their buffer size.

``DatedFileHandler`` rotates without renaming: each record is appended to the file named after
its own period (``app-2026-11-22.log``). ``TimedRotatingFileHandler`` renames ``app.log`` at
rollover, which races across processes (the logging cookbook calls one file from many
processes "not supported"): one worker renames while another still writes to the old inode, and
two workers both rolling over overwrite each other's backup. With no rename there is no race,
and every line sits in the file whose date matches its timestamp.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import time
from typing import IO

from .._failures import report_failure

# rotation name -> (period in seconds, strftime pattern of the period in UTC)
ROTATIONS = {
    "midnight": (86400, "%Y-%m-%d"),
    "hourly": (3600, "%Y-%m-%dT%H"),
    "minutely": (60, "%Y-%m-%dT%H-%M"),
    "secondly": (1, "%Y-%m-%dT%H-%M-%S"),  # for tests and demos
}


PIPE_BUF = 4096  # POSIX's minimum and Linux's value: a write to a pipe up to this size is never split


def write_all(fd: int, data: bytes) -> None:
    # A blocking write returns short only on signals or a full disk; finish the line or raise.
    """Write all of ``data`` to ``fd`` (a short write is finished, never dropped)."""
    written = os.write(fd, data)
    while written < len(data):
        data = data[written:]
        written = os.write(fd, data)


class LineHandler(logging.Handler):
    """Base: format, encode once, write once; failures counted and reported once, never raised."""

    component = "log handler"

    def emit(self, record: logging.LogRecord) -> None:
        """Format ``record`` as one line and write it with a single ``write()``."""
        try:
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            self.write_line(line, record.created)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def write_line(self, line: bytes, created: float) -> None:
        """Write one whole line; ``created`` is the record's time (it picks a dated file)."""
        raise NotImplementedError

    def write_text_line(self, line: bytes, created: float) -> None:
        """``emit`` for a line formatted elsewhere (the direct access line): no LogRecord, same guarantees."""
        try:
            with self.lock:  # type: ignore[union-attr]
                self.write_line(line, created)
        except Exception as exc:
            report_failure(self.component, exc)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        """Count and report a failed write; never raise into the caller."""
        report_failure(self.component, sys.exc_info()[1] or RuntimeError("unknown"))


def apache_error_log_fd() -> int | None:
    """Under mod_wsgi, the descriptor of Apache's error log (2), where the default log lines go.

    mod_wsgi's ``sys.stdout`` also ends in that log, but through Apache's logger: it prefixes every
    line, escapes every backslash (so any JSON escape, every traceback, becomes invalid JSON) and
    cuts lines at 8,190 bytes. Apache opened the log for appending and made it each child's stderr
    (a daemon group's virtual host's log, if it has one): writing there keeps lines whole and raw.
    None elsewhere, or where stderr leads nowhere (``ErrorLog syslog``)."""
    if "mod_wsgi" not in sys.modules:
        return None
    try:
        found, null = os.fstat(2), os.stat(os.devnull)
    except OSError:
        return None
    return None if (found.st_dev, found.st_ino) == (null.st_dev, null.st_ino) else 2


class StreamLineHandler(LineHandler):
    """Writes to a stream's file descriptor when it has one (stdout), else through the stream.
    Without a stream: stdout, or Apache's error log under mod_wsgi."""

    component = "log stream"

    def __init__(self, stream: IO[str] | None = None) -> None:
        super().__init__()
        self.stream = stream if stream is not None else sys.stdout
        self._fd: int | None = apache_error_log_fd() if stream is None else None
        if self._fd is None:
            try:
                self.stream.flush()
                self._fd = self.stream.fileno()
            except Exception:  # StringIO, pytest's capture, mod_wsgi's log: no descriptor of its own
                self._fd = None

    def write_line(self, line: bytes, created: float) -> None:
        """Write one encoded line to the stream's file descriptor."""
        if self._fd is not None:
            write_all(self._fd, line)
        else:
            self.stream.write(line.decode("utf-8"))
            self.stream.flush()

    def write_text_line(self, line: bytes, created: float) -> None:
        """Write one already-rendered line (the direct access line)."""
        if self._fd is None or len(line) > PIPE_BUF:  # a longer write to a pipe may be split: under the lock
            super().write_text_line(line, created)
            return
        try:
            # One write(2) of a whole line: the kernel keeps lines apart, no lock needed (write_all, inlined).
            written = os.write(self._fd, line)
            if written < len(line):
                write_all(self._fd, line[written:])
        except Exception as exc:
            report_failure(self.component, exc)


class DatedFileHandler(LineHandler):
    """Appends each record to ``<stem>-<period><suffix>``; keeps the newest ``backup_count`` old files."""

    component = "log file"

    def __init__(self, filename: str, rotation: str = "midnight", backup_count: int = 30) -> None:
        super().__init__()
        if rotation not in ROTATIONS:
            raise ValueError(f"rotation: expected one of {', '.join(ROTATIONS)}, got {rotation!r}")
        if backup_count < 0:
            raise ValueError(f"backup_count: expected an integer >= 0, got {backup_count!r}")
        self.directory, base = os.path.split(os.path.abspath(filename))
        self.stem, self.suffix = os.path.splitext(base)
        self.suffix = self.suffix or ".log"
        self.period, self.pattern = ROTATIONS[rotation]
        self.backup_count = backup_count
        stamp = re.sub(r"%Y", r"\\d{4}", re.sub(r"%[mdHMS]", r"\\d{2}", self.pattern))
        self._ours = re.compile(re.escape(self.stem + "-") + stamp + re.escape(self.suffix)).fullmatch
        self._fd: int | None = None
        self._slot = -1
        os.makedirs(self.directory, exist_ok=True)

    def path_for(self, created: float) -> str:
        """The file that holds the lines of the UTC period of ``created``."""
        stamp = time.strftime(self.pattern, time.gmtime(created))
        return os.path.join(self.directory, f"{self.stem}-{stamp}{self.suffix}")

    def write_line(self, line: bytes, created: float) -> None:
        """Append one line to the current period's file, opening it (and pruning old ones) when the
        period changed."""
        slot = int(created // self.period)
        if slot != self._slot or self._fd is None:
            self._switch(slot, created)
        assert self._fd is not None
        write_all(self._fd, line)

    def _switch(self, slot: int, created: float) -> None:
        moving_forward = slot > self._slot
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._fd = os.open(self.path_for(created), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._slot = slot
        if moving_forward:
            self._prune()

    def _prune(self) -> None:
        ours = sorted(name for name in os.listdir(self.directory) if self._ours(name))
        # The names sort by time; keep the current file and backup_count before it.
        for name in ours[: max(0, len(ours) - self.backup_count - 1)]:
            try:
                os.unlink(os.path.join(self.directory, name))
            except FileNotFoundError:
                pass  # another worker pruned it first

    def close(self) -> None:
        """Close the open file and the handler."""
        self.acquire()
        try:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            self.release()
        super().close()


class WatchedLineHandler(logging.handlers.WatchedFileHandler):
    """For external rotation (logrotate without copytruncate): reopens the file when it is moved away."""

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line, reopening the file first if it was moved away."""
        try:
            self.reopenIfNeeded()
            line = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
            if self.stream is None:
                self.stream = self._open()
            self.stream.flush()
            write_all(self.stream.fileno(), line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        """Count and report a failed write; never raise into the caller."""
        report_failure("log file", sys.exc_info()[1] or RuntimeError("unknown"))

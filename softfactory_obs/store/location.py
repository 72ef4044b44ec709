"""Where the store lives when nobody said: a private directory per server master, or memory.

Every worker of one master must agree on the directory without any hook, so it is named after the
master's pid: a gunicorn worker sees it as its parent, uWSGI tells any process its master
(``uwsgi.masterpid()``), and a master that writes metrics itself (``--preload``, uWSGI's default
prefork mode) names it after itself; uvicorn's and hypercorn's ``--workers`` are multiprocessing
children of their supervisor. Under mod_wsgi, Apache's parent forks every daemon process
and embedded child; there the name adds the process group and interpreter. The chosen path is
also put in the environment, so processes forked later inherit it. A master that is gone leaves
its directory behind until the next master of the same user starts (``_remove_stale``);
gunicorn's ``on_exit`` hook removes it at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import sys
import tempfile
import zlib

from ..procfs import mod_wsgi_interpreter, pid_exists, service_pid, spawning_supervisor, uwsgi_master

ENV = "SOFTFACTORY_OBS_METRICS_DIR"
_AUTO = re.compile(r"softfactory_obs-(\d+)(-[\w.-]+)?")


def _base() -> str:
    # tmpfs: shard writes never touch a disk. Falls back to the temp dir where /dev/shm is missing.
    shm = "/dev/shm"  # noqa: S108 - a private 0700 directory is created inside
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


def auto_directory() -> str | None:
    """The directory for this gunicorn, uWSGI or Apache master's workers, or None outside them
    (memory mode)."""
    interpreter = mod_wsgi_interpreter()
    if (
        "gunicorn" not in sys.modules
        and uwsgi_master() is None
        and interpreter is None
        and spawning_supervisor() is None
    ):
        return None
    path = create_auto_directory(service_pid(), _interpreter_tag(interpreter) if interpreter is not None else "")
    os.environ[ENV] = path
    return path


def _interpreter_tag(interpreter: str) -> str:
    # One Apache runs many apps: a store per mod_wsgi daemon process group and interpreter, so two
    # apps (or two sub-interpreters of one process, which would share its pid's shard) never meet.
    group = re.sub(r"[^\w.]", "_", interpreter.split("|", maxsplit=1)[0])[:48] or "embedded"
    return f"{group}-{zlib.crc32(interpreter.encode()):08x}"


def auto_path(master_pid: int, tag: str = "") -> str:
    """Where ``create_auto_directory`` puts the store of this master's workers."""
    return os.path.join(_base(), f"softfactory_obs-{master_pid}" + (f"-{tag}" if tag else ""))


def create_auto_directory(master_pid: int, tag: str = "") -> str:
    """``<tmpfs>/softfactory_obs-<master pid>[-<tag>]``, private to its user; stale siblings are removed."""
    path = auto_path(master_pid, tag)
    _remove_stale(os.path.dirname(path), keep=path)
    os.makedirs(path, mode=0o700, exist_ok=True)
    _check_private(path)
    return path


def _check_private(path: str) -> None:
    """The name is predictable and /dev/shm shared by every user of the machine: a directory someone
    else made there first (or a link to one) would let them read and forge this service's metrics."""
    found = os.lstat(path)
    if stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o077:
        return
    what = (
        "a symbolic link"
        if stat.S_ISLNK(found.st_mode)
        else (f"owner uid {found.st_uid}, mode {stat.filemode(found.st_mode)}")
    )
    raise PermissionError(
        f"metrics directory {path}: expected a directory of uid {os.getuid()} that only it can open, found {what}; "
        f"remove it, or set {ENV} to a private directory"
    )


def _remove_stale(base: str, keep: str) -> None:
    """Directories of masters that no longer run: their data died with their service instance."""
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            match = _AUTO.fullmatch(name)
            path = os.path.join(base, name)
            if match and path != keep and not pid_exists(int(match[1])):
                shutil.rmtree(path, ignore_errors=True)

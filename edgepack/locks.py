"""Locks and owned temp names: what lets concurrent builds share a cache and an output folder,
and lets the next run remove what a killed run left behind without touching a live run's files.

Every temp file or folder edgepack creates carries its owner in its name:
``<prefix>ep-<pid>-<start>-<boot>-<random><suffix>``, where ``start`` is the process start time
(clock ticks since boot, /proc/PID/stat field 22) and ``boot`` the first 8 hex digits of the
kernel's boot id. A name is the owner record, created atomically with the file, so there is no
instant at which a temp exists without its owner. The owner is dead when no process has that pid,
or the pid's start time differs (the pid was reused), or it is a zombie. A name from another boot
(or another host sharing the folder) is left alone for a day, then treated as dead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import time
from pathlib import Path

_TOKEN_RE = re.compile(r"ep-(\d+)-(\d+)-([0-9a-f]{8})-[0-9a-z]+")
FOREIGN_BOOT_GRACE_S = 24 * 3600


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when it does not exist or is a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    except OSError:
        return 0  # unreadable but present
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:8]
    except OSError:
        return "00000000"


_BOOT = _boot_id()


def owner_token() -> str:
    """This process's owner token plus a random part (unique per call)."""
    pid = os.getpid()
    return f"ep-{pid}-{_start_time(pid) or 0}-{_BOOT}-{secrets.token_hex(4)}"


def owner_alive(name: str, path: Path | None = None) -> bool | None:
    """Whether the owner named in ``name`` still runs; None when ``name`` holds no owner token."""
    m = _TOKEN_RE.search(name)
    if m is None:
        return None
    pid, start, boot = int(m.group(1)), int(m.group(2)), m.group(3)
    if boot != _BOOT:
        try:
            return time.time() - (path.lstat().st_mtime if path else 0) < FOREIGN_BOOT_GRACE_S
        except OSError:
            return False
    if not Path("/proc").is_dir():  # no procfs: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = _start_time(pid)
    return now is not None and (start == 0 or now == 0 or now == start)


def remove_dead(folder: Path, prefix: str = "", suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Remove entries of ``folder`` named ``prefix...<token>...`` whose owner is dead; return them.
    Entries without a token, or whose owner lives (a concurrent run), are never touched."""
    removed: list[Path] = []
    try:  # names filtered before any Path is made: a blob store's folder holds thousands of entries
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.name.startswith(prefix) and (not suffixes or e.name.endswith(suffixes))]
    except OSError:
        return removed
    for name in names:
        p = Path(folder) / name
        if owner_alive(p.name, p) is False:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


@contextlib.contextmanager
def flocked(path: Path):
    """Hold an exclusive ``flock`` on the file ``path``; blocks while a concurrent holder has it.
    The kernel releases it when the holder dies, even by ``kill -9``.

    The holder deletes the file before releasing it, so no lock files pile up; a waiter that then
    gets the lock on the deleted file sees that ``path`` is no longer the file it locked and
    retries on the new one (the usual unlink-safe flock protocol)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing the descriptor releases the lock

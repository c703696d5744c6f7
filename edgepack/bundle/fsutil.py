"""Atomic file and directory writes shared by bundles and the registry.

Everything is written to a temp path on the same filesystem and renamed into place, so a
reader (or a crash) never sees a half-written file or directory.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from edgepack import failpoints
from edgepack.errors import BadInputError, EdgepackError
from edgepack.locks import flocked, owner_alive, owner_token, remove_dead


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via an owned temp file in the same folder + fsync + os.replace.
    Temps of this path left by killed runs are removed first (live writers' are not touched)."""
    path = Path(path)
    prefix = f".{path.name}."
    remove_dead(path.parent, prefix, (".tmp",))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix + owner_token() + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        failpoints.hit(f"atomic_write.{path.name}")
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return path


def owned_temp_path(dest: Path, what: str) -> Path:
    """A unique owned name beside ``dest`` for a temp file about ``dest`` (removed with the other
    leftovers of ``dest`` once its owner is dead)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.{owner_token()}.{what}.tmp"


def clean_leftovers(dest: Path) -> list[Path]:
    """Remove what killed runs left beside ``dest`` (``.tmp`` staging folders and files, ``.old``
    copies), after a liveness check of each owner. When ``dest`` itself is missing because a run
    died between the two renames of the fallback swap, its ``.old`` copy is put back first."""
    dest = Path(dest)
    prefix = f".{dest.name}."
    if not dest.parent.is_dir():
        return []
    with flocked(_lock_path(dest)):
        if not os.path.lexists(dest):
            olds = [p for p in dest.parent.glob(f"{glob.escape(prefix)}*.old") if owner_alive(p.name, p) is False]
            if olds:
                with contextlib.suppress(OSError):
                    os.rename(max(olds, key=lambda p: p.stat().st_mtime), dest)
        return remove_dead(dest.parent, prefix, (".tmp", ".old"))


def temp_dir_beside(dest: Path, what: str) -> Path:
    """A fresh empty owned directory next to ``dest`` (same filesystem, so a rename is atomic);
    leftovers of killed runs beside ``dest`` are removed first."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(dest)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{owner_token()}.", suffix=".tmp"))
        os.chmod(tmp, 0o755)
    except OSError as e:
        raise BadInputError(
            f"cannot write {what} at {dest}: {e.strerror or e}",
            hint="choose a folder you can write to",
        ) from e
    return tmp


@contextlib.contextmanager
def staged_dir(dest: Path, what: str):
    """A temp folder beside ``dest`` to build ``what`` in; the caller renames it into place with
    ``replace_dir``. An OSError becomes one EdgepackError; whatever is left is removed."""
    tmp = temp_dir_beside(dest, what)
    try:
        yield tmp
    except OSError as e:
        raise EdgepackError(f"cannot write {what} next to {dest}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _lock_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lock"


def replace_dir(new: Path, dest: Path, what: str, force: bool = False) -> Path:
    """Move the complete directory ``new`` to ``dest``, replacing an older bundle there.

    Under an flock on ``.DEST.lock`` (concurrent builds and pulls to one folder take turns). An
    existing ``dest`` is swapped with ``new`` in one ``renameat2(RENAME_EXCHANGE)``, so either the
    old or the new directory is at ``dest`` at every instant. Where the filesystem or OS has no
    exchange, the fallback is two renames (``dest`` -> ``.DEST.<owner>.old``, ``new`` -> ``dest``);
    a run killed between them leaves the old bundle as ``.old``, which the next run puts back.
    An existing ``dest`` is replaced only when it is empty or holds an ``edgepack.json``,
    so a mistyped output path never deletes an unrelated folder (``force``: any folder).
    """
    new, dest = Path(new), Path(dest)
    with flocked(_lock_path(dest)):
        if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
            raise BadInputError(f"cannot write {what} at {dest}: it exists and is not a folder")
        if not dest.exists():
            try:
                os.rename(new, dest)
            except OSError as e:
                raise BadInputError(f"cannot write {what} at {dest}: {e.strerror or e}") from e
            return dest
        if not force and any(dest.iterdir()) and not (dest / "edgepack.json").is_file():
            raise BadInputError(
                f"{dest} exists and is not an edgepack bundle; refusing to replace it",
                hint="choose an empty or new output folder",
            )
        old = _swap(new, dest, what)
        failpoints.hit("swap.before_cleanup")
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _swap(new: Path, dest: Path, what: str) -> Path:
    """Put ``new`` at ``dest``; return where the old ``dest`` now is."""
    try:
        failpoints.hit("swap.exchange")
        exchange(new, dest)
        return new  # the names were exchanged: ``new`` now holds the old bundle
    except OSError as e:
        if e.errno not in _NO_EXCHANGE:
            raise BadInputError(f"cannot write {what} at {dest}: {e.strerror or e}") from e
    old = dest.parent / f".{dest.name}.{owner_token()}.old"
    try:
        os.rename(dest, old)
    except OSError as e:
        raise BadInputError(f"cannot write {what} at {dest}: {e.strerror or e}") from e
    failpoints.hit("swap.between_renames")
    try:
        os.rename(new, dest)
    except OSError as e:
        os.rename(old, dest)
        raise BadInputError(f"cannot write {what} at {dest}: {e.strerror or e}") from e
    return old


_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "armv7l": 382, "ppc64le": 357, "s390x": 347, "riscv64": 276}


def exchange(a: Path, b: Path) -> None:
    """Atomically exchange two existing paths (Linux ``renameat2(RENAME_EXCHANGE)`` via ctypes);
    OSError(ENOSYS) elsewhere, OSError(EINVAL) on filesystems without it."""
    import ctypes
    import platform

    if platform.system() != "Linux":
        raise OSError(errno.ENOSYS, "renameat2 is Linux-only")
    libc = ctypes.CDLL(None, use_errno=True)
    args = (ctypes.c_int(-100), os.fsencode(a), ctypes.c_int(-100), os.fsencode(b), ctypes.c_uint(2))  # AT_FDCWD, RENAME_EXCHANGE
    if hasattr(libc, "renameat2"):
        rc = libc.renameat2(*args)
    elif platform.machine() in _SYS_RENAMEAT2:  # glibc < 2.28: the raw system call
        rc = libc.syscall(ctypes.c_long(_SYS_RENAMEAT2[platform.machine()]), *args)
    else:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def safe_relpath(rel: object) -> PurePosixPath:
    """A relative posix path that stays inside its root, else ValueError (``rel`` comes from untrusted documents:
    anything that is not a non-empty string is refused too)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel:
        raise ValueError(f"invalid relative path {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")):
        raise ValueError(f"path {rel!r} must be relative, without '.' or '..' parts")
    return p


def _unlink_quiet(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

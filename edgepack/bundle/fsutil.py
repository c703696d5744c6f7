"""Atomic file and directory writes shared by bundles and the registry.

Everything is written to a temp path on the same filesystem and renamed into place, so a
reader (or a crash) never sees a half-written file or directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from edgepack.errors import BadInputError, EdgepackError


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    return path


def temp_dir_beside(dest: Path, what: str) -> Path:
    """A fresh empty directory next to ``dest`` (same filesystem, so a rename is atomic)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp"))
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


def replace_dir(new: Path, dest: Path, what: str, force: bool = False) -> Path:
    """Move the complete directory ``new`` to ``dest``, replacing an older bundle there.

    An existing ``dest`` is replaced only when it is empty or holds an ``edgepack.json``,
    so a mistyped output path never deletes an unrelated folder (``force``: any folder).
    """
    new, dest = Path(new), Path(dest)
    old = None
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise BadInputError(f"cannot write {what} at {dest}: it exists and is not a folder")
    if dest.exists():
        if not force and any(dest.iterdir()) and not (dest / "edgepack.json").is_file():
            raise BadInputError(
                f"{dest} exists and is not an edgepack bundle; refusing to replace it",
                hint="choose an empty or new output folder",
            )
        old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".old"))
        os.replace(dest, old)  # rename(2) replaces the empty placeholder directory
    try:
        os.replace(new, dest)
    except OSError as e:
        if old is not None:
            os.replace(old, dest)
        raise BadInputError(f"cannot write {what} at {dest}: {e.strerror or e}") from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def safe_relpath(rel: str) -> PurePosixPath:
    """A relative posix path that stays inside its root, else ValueError."""
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

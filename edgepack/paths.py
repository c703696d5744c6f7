"""Small path helpers shared by the build, bundle and registry code."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import BadInputError

_NEEDS: dict[str, tuple[str, int]] = {}  # directory -> (field, bytes this run estimated it needs): for disk_full_line


def _existing_ancestor(p: Path) -> Path:
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_writable(path: Path, field: str) -> None:
    """Fail early (before any long stage) when ``path`` cannot be created or written.

    Permission bits are not enough (root passes every ``os.access`` check, /proc and read-only mounts
    refuse anyway): a probe directory is created and removed in the nearest existing ancestor."""
    p = Path(path).expanduser().absolute()
    probe = _existing_ancestor(p)
    if probe.exists() and not probe.is_dir() and probe != p:
        raise BadInputError(f"{p} ({field}): cannot be created because {probe} is a file", hint="choose another path")
    if p.exists() and not p.is_dir():
        raise BadInputError(f"{p} ({field}): exists and is not a directory", hint="choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{p} ({field}): not writable", hint="choose a writable path or fix its permissions")
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".edgepack-probe-"))
    except OSError as e:
        raise BadInputError(f"{p} ({field}): cannot create anything in {probe} ({os.strerror(e.errno) if e.errno else e})",
                            hint="choose a path on a writable file system") from e


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing_ancestor(Path(path).absolute())).free


def check_free_space(path: Path, need: int, field: str) -> None:
    """Refuse before any stage when the file system holding ``path`` has less than ``need`` bytes free."""
    p = Path(path).expanduser().absolute()
    _NEEDS[str(p)] = (field, need)
    free = free_bytes(p)
    if free < need:
        raise BadInputError(f"{p} ({field}): {_mb(free)} free on its file system, this build needs about {_mb(need)}",
                            hint="free some space there or choose another location")


def tree_size(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def disk_full(e: BaseException | None) -> OSError | None:
    """The ENOSPC / EDQUOT error in ``e``'s cause chain, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return e
        e = e.__cause__ or e.__context__
    return None


def disk_full_line(e: OSError, candidates: list[str] | tuple[str, ...] = ()) -> str:
    """One line: the path being written, the space free there and the space this run estimated it needs.

    When the error names no file: the directories a build estimated, else the command-line path on the
    fullest file system."""
    named = [str(f) for f in (e.filename2, e.filename) if f]
    paths = [c for c in candidates if os.sep in c and not c.startswith("-")]
    fullest = sorted(paths, key=lambda c: free_bytes(Path(c)))[:1]
    where = named[:1] or list(_NEEDS) or fullest or [os.getcwd()]
    parts = []
    for w in where:
        p = Path(w)
        need = next((n for d, (_, n) in _NEEDS.items() if p == Path(d) or Path(d) in p.parents), None)
        what = f"{w}: {_mb(free_bytes(p))} free"
        parts.append(what + (f", this build needs about {_mb(need)}" if need else ""))
    return f"no space left on device writing {'; '.join(parts)} (free some space there, or choose another --cache-dir / -o, and rerun)"


def scrub_host_paths(doc, prefixes: dict[str, str]):
    """A copy of ``doc`` whose strings name no build-host directory: each ``prefixes`` key (an absolute
    directory) becomes its value (a relative path like ``..`` or a placeholder like ``$EDGEPACK_HOME``),
    longest first, wherever it appears (fields and error messages alike)."""
    order = sorted(((str(k).rstrip(os.sep), v) for k, v in prefixes.items() if k and str(k) != os.sep),
                   key=lambda kv: -len(kv[0]))

    import re

    subs = [(re.compile(re.escape(k) + r"(/|(?=$|[^\w.\-/]))"), v) for k, v in order]

    def fix(x):
        if isinstance(x, str):
            if os.sep not in x:  # most strings (keys, digests, numbers as text) name no directory at all
                return x
            for pat, v in subs:
                x = pat.sub(lambda m, v=v: (v + m.group(1) if v else "") if m.group(1) else (v or "."), x)
            return x
        if isinstance(x, dict):
            return {fix(k): fix(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [fix(v) for v in x]
        return x

    return fix(doc)


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: no half-written temp file left behind
        Path(tmp).unlink(missing_ok=True)
        raise

"""Small path helpers shared by the build, bundle and registry code."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import BadInputError


def check_writable(path: Path, field: str) -> None:
    """Fail early (before any long stage) when ``path`` cannot be created or written."""
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir() and probe != p:
        raise BadInputError(f"{p} ({field}): cannot be created because {probe} is a file", hint="choose another path")
    if p.exists() and not p.is_dir():
        raise BadInputError(f"{p} ({field}): exists and is not a directory", hint="choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{p} ({field}): not writable", hint="choose a writable path or fix its permissions")


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)

"""Content-addressed stage cache with atomic entries.

An entry is a directory ``<root>/<key[:2]>/<key>/`` holding the stage's output files and
``entry.json``. It is built in ``<root>/tmp/`` and renamed into place only once complete, so an
interrupted build (even ``kill -9``) never leaves a half entry: the next build simply misses and
re-runs that stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .artifact import Artifact


def edgepack_home() -> Path:
    return Path(os.environ.get("EDGEPACK_HOME", Path.home() / ".edgepack")).expanduser()


def default_cache_dir() -> Path:
    return Path(os.environ.get("EDGEPACK_CACHE", edgepack_home() / "cache")).expanduser()


def stage_key(stage_id: str, version: str, config: dict, input_digests: dict[str, str], toolchain: dict[str, str]) -> str:
    material = {
        "stage": stage_id,
        "version": version,
        "config": config,
        "inputs": dict(sorted(input_digests.items())),
        "toolchain": dict(sorted(toolchain.items())),
    }
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


class StageCache:
    def __init__(self, root: Path | None = None, enabled: bool = True):
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> tuple[dict[str, Artifact], dict] | None:
        if not self.enabled:
            return None
        d = self.entry_dir(key)
        meta_path = d / "entry.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            outputs = {k: Artifact.from_json(v, base=d) for k, v in meta["outputs"].items()}
        except (OSError, ValueError, KeyError):
            return None
        if not all(a.path.exists() for a in outputs.values()):
            return None
        return outputs, meta.get("record", {})

    def new_workdir(self, key: str) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=key[:12] + "-", dir=tmp))

    def commit(self, key: str, workdir: Path, outputs: dict[str, Artifact], record: dict) -> dict[str, Artifact]:
        """Move a finished workdir into place; return outputs re-rooted at the entry."""
        final = self.entry_dir(key)
        for a in outputs.values():
            if not a.path.resolve().is_relative_to(workdir.resolve()):
                raise ValueError(f"stage output {a.path} is outside its workdir")
        meta = {"key": key, "outputs": {k: a.to_json(relative_to=workdir) for k, a in outputs.items()}, "record": record}
        (workdir / "entry.json").write_text(json.dumps(meta, indent=2, default=str))
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(workdir, final)
        return {k: Artifact.from_json(v, base=final) for k, v in meta["outputs"].items()}

    def evict_containing(self, path: Path) -> bool:
        """Remove the cache entry that holds ``path`` (if it is inside this cache)."""
        try:
            rel = Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        if len(rel.parts) < 2 or rel.parts[0] == "tmp":
            return False
        shutil.rmtree(self.root / rel.parts[0] / rel.parts[1], ignore_errors=True)
        return True

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)

"""Content-addressed stage cache with atomic, re-checked entries.

An entry is a directory ``<root>/<key[:2]>/<key>/`` holding the stage's output files and
``entry.json`` (outputs, record, and the sha256 and size of every file). It is built in an owned
workdir under ``<root>/tmp/`` and renamed into place only once complete, so an interrupted build
(even ``kill -9``) never leaves a half entry: the next build simply misses and re-runs that stage,
and removes the dead run's workdir. A hit's files are re-hashed against ``entry.json`` before use
(one sha256 pass); a mismatching entry is evicted and the stage re-runs. ``locked(key)`` is an
flock per entry, so concurrent builds sharing a cache compute an entry once and the others wait.

With a shared ``store`` (``cache_store.store_for``: an OCI registry or a shared directory), a local
miss is looked up there; a shared entry is copied into a local workdir, verified by digest while it
streams, and renamed into place like a computed one; a refused entry is not used (the stage re-runs).
Every committed entry is also pushed to the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from . import failpoints
from .artifact import Artifact, iter_files, sha256_file
from .locks import flocked, owner_token, remove_dead

ENTRY_NAME = "entry.json"


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
    def __init__(self, root: Path | None = None, enabled: bool = True, store=None):
        self.root = (Path(root) if root else default_cache_dir()).absolute()  # stages may run with another cwd
        self.enabled = enabled
        self.store = store  # a cache_store store shared with other caches, or None
        self._refused: set[str] = set()  # keys whose shared entry was refused: the recomputed one replaces it
        self._cleaned = False

    def entry_dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def locked(self, key: str):
        """An exclusive flock for entry ``key`` (``<root>/<key[:2]>/.<key>.lock``); hold it from
        lookup to commit so that two builds never write or evict one entry at once."""
        return flocked(self.root / key[:2] / f".{key}.lock")

    def get(self, key: str) -> tuple[dict[str, Artifact], dict] | None:
        return self.lookup(key)[0]

    def lookup(self, key: str) -> tuple[tuple[dict[str, Artifact], dict] | None, str | None]:
        """``(hit, None)``, ``(None, None)`` on a miss, or ``(None, problem)`` when the entry's files
        no longer match its digests: that entry has been evicted and the stage must re-run."""
        hit, problem, _ = self.lookup_from(key)
        return hit, problem

    def lookup_from(self, key: str) -> tuple[tuple[dict[str, Artifact], dict] | None, str | None, str]:
        """``lookup`` plus where the answer came from: "local", or "store" (a shared entry fetched
        and verified, or refused: then ``problem`` says why and nothing of it was kept)."""
        self._clean_once()
        if not self.enabled:
            return None, None, "local"
        hit, problem = self._lookup_local(key)
        if hit is not None or self.store is None:
            return hit, problem, "local"
        refused = self._fetch(key)
        if refused:
            return None, refused, "store"
        hit, problem = self._lookup_local(key)
        return hit, problem, "store" if hit is not None else "local"

    def _fetch(self, key: str) -> str | None:
        """Copy the store's entry for ``key`` into place (verified); the reason when it was refused."""
        from .cache_store import EntryRefused

        workdir = self.new_workdir(key)
        try:
            if not self.store.fetch(key, workdir):
                self.discard(workdir)
                return None
        except EntryRefused as e:
            self.discard(workdir)
            self._refused.add(key)
            return f"shared entry in {self.store.url}: {e}; refused, not used"
        except BaseException:
            self.discard(workdir)
            raise
        final = self.entry_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(workdir, final)
        return None

    def _lookup_local(self, key: str) -> tuple[tuple[dict[str, Artifact], dict] | None, str | None]:
        d = self.entry_dir(key)
        meta_path = d / ENTRY_NAME
        if not meta_path.is_file():
            return None, None
        try:
            meta = json.loads(meta_path.read_text())
            outputs = {k: Artifact.from_json(v, base=d) for k, v in meta["outputs"].items()}
            problem = check_entry(d, meta.get("files"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            problem = f"unreadable {ENTRY_NAME}: {e}"
        if problem:
            shutil.rmtree(d, ignore_errors=True)
            return None, problem
        return (outputs, meta.get("record", {})), None

    def new_workdir(self, key: str) -> Path:
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self._clean_once()
        return Path(tempfile.mkdtemp(prefix=f"{key[:12]}-{owner_token()}-", dir=tmp))

    def _clean_once(self) -> None:
        """Remove workdirs of killed builds (owner dead), once per build; a live build's are kept."""
        if not self._cleaned:
            self._cleaned = True
            remove_dead(self.root / "tmp")

    def commit(self, key: str, workdir: Path, outputs: dict[str, Artifact], record: dict, push: bool = True) -> dict[str, Artifact]:
        """Move a finished workdir into place (and push it to the store unless ``push`` is False); return outputs
        re-rooted at the entry."""
        final = self.entry_dir(key)
        for a in outputs.values():
            if not a.path.resolve().is_relative_to(workdir.resolve()):
                raise ValueError(f"stage output {a.path} is outside its workdir")
        meta: dict = {"key": key, "outputs": {k: a.to_json(relative_to=workdir) for k, a in outputs.items()}, "record": record,
                "files": file_digests(workdir)}
        (workdir / ENTRY_NAME).write_text(json.dumps(meta, indent=2, default=str))
        failpoints.hit("cache.before_commit")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        os.rename(workdir, final)
        if self.store is not None and push:
            self.push(key, replace=key in self._refused)
        return {k: Artifact.from_json(v, base=final) for k, v in meta["outputs"].items()}

    def push(self, key: str, replace: bool = False) -> None:
        """Copy the local entry ``key`` to the shared store (a failure names the store); ``replace``:
        over a shared entry that was refused."""
        from .errors import EdgepackError

        try:
            self.store.push(key, self.entry_dir(key), replace=replace)
        except EdgepackError as e:
            raise e.in_stage(f"cache store {self.store.url}: pushing entry {key[:12]}") from e

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


def input_key(a: Artifact) -> str:
    """The entry key of an input artifact (a build's source, a Ray task's input): its identity, name and format."""
    from .engine import _identity

    return hashlib.sha256(f"edgepack-input\0{_identity(a)}\0{a.path.name}\0{a.format}".encode()).hexdigest()


def put_input(cache: StageCache, a: Artifact, files: list[str] | None = None, push: bool = True) -> tuple[str, Artifact]:
    """``a``'s files as an *input entry* of ``cache``: (its key, the artifact inside the entry). ``files``: only these
    names below a folder (symlinks followed: a hub snapshot's links become the files). Hard links where the file
    system allows, else copies. ``push``: the entry (new, or found here) also goes to the store."""
    key = input_key(a)
    with cache.locked(key):
        hit, _, source = cache.lookup_from(key)
        if hit is None:
            workdir = cache.new_workdir(key)
            dest = workdir / a.path.name
            _link_tree(a.path, dest, files)
            art = Artifact(dest, a.format, digest=a.digest, inputs=a.inputs, outputs=a.outputs, meta=a.meta)
            return key, cache.commit(key, workdir, {"artifact": art}, {"input": a.path.name}, push=push)["artifact"]
        if source == "local" and push and cache.store is not None:
            cache.push(key)  # made before the store was configured, or by a local build: a few HEAD requests
        return key, hit[0]["artifact"]


def _link_tree(src: Path, dest: Path, files: list[str] | None) -> None:
    def link(s, d):
        s = os.path.realpath(s)  # a symlink's target: the entry holds the file itself (os.link would link the link)
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if not src.is_dir():
        link(src, dest)
    elif files is None:
        shutil.copytree(src, dest, copy_function=link)
    else:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            link(src / rel, dest / rel)


def file_digests(folder: Path) -> dict[str, dict]:
    """``{relpath: {sha256, size}}`` of every file below ``folder`` except entry.json."""
    return {rel.as_posix(): {"sha256": sha256_file(folder / rel), "size": (folder / rel).stat().st_size}
            for rel in iter_files(folder) if rel.as_posix() != ENTRY_NAME}


def check_entry(folder: Path, files) -> str | None:
    """What is wrong with an entry's files (missing, extra, resized, re-written), or None. Sizes
    are compared first; then each file is hashed once, so a check costs one sha256 pass."""
    if not isinstance(files, dict):
        return f"{ENTRY_NAME} lists no file digests"
    on_disk = {rel.as_posix() for rel in iter_files(folder)} - {ENTRY_NAME}
    for rel in sorted(set(files) | on_disk):
        if rel not in files:
            return f"{rel}: not listed in {ENTRY_NAME}"
        if rel not in on_disk:
            return f"{rel}: missing"
        if (folder / rel).stat().st_size != files[rel]["size"]:
            return f"{rel}: size changed"
    for rel in sorted(files):
        if sha256_file(folder / rel) != files[rel]["sha256"]:
            return f"{rel}: sha256 mismatch"
    return None

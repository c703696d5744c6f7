"""Shared stores behind the stage cache: an entry written by one machine, read and verified by another.

The stage cache (``cache.StageCache``) always keeps a local directory; a *store* is where entries
also go so that other caches (other machines, Ray workers, CI runners) can reuse them without a
shared file system. ``store_for(URL)``:

- ``oci://HOST[:PORT]/REPO``: an OCI distribution registry (the client of ``edgepack/registry``:
  its credentials, TLS, retries, bounded reads and deadlines). One entry = one OCI image manifest
  tagged with the stage key: its config blob is the entry's ``entry.json``, each file one layer
  (digest = the file's sha256, ``org.opencontainers.image.title`` = its path in the entry), so a
  file shared by many entries is stored once.
- ``file:///PATH``: a directory on a shared volume (``PATH/<key[:2]>/<key>/``), for NFS-like setups.

Reads are verified by digest, never trusted: the config blob must hash to its descriptor, the
manifest's layers must be exactly the files ``entry.json`` lists (path, sha256, size), and every file
is hashed while it streams into a fresh local workdir. Any mismatch raises ``EntryRefused``: the
cache does not use the entry, says why, and the stage re-runs locally; the local entry is only ever
the verified copy. Someone able to rewrite the files *and* ``entry.json`` consistently is outside
this check (as for the local cache; docs/security.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

from .errors import BadInputError

ENTRY_NAME = "entry.json"
ENTRY_TYPE = "application/vnd.edgepack.cache-entry.v1+json"
FILE_TYPE = "application/octet-stream"
TITLE = "org.opencontainers.image.title"
ENV = "EDGEPACK_CACHE_STORE"
_URL_HINT = "write oci://HOST[:PORT]/REPO (an OCI registry) or file:///PATH (a shared directory)"


class EntryRefused(Exception):
    """A shared entry whose bytes do not match its digests (tampered, truncated or corrupted)."""


def store_for(url: str | None, where: str = "--cache-store"):
    """The store a URL names (None: no shared store); BadInputError naming ``where`` for a bad URL."""
    url = (url or "").strip()
    if not url:
        return None
    if url.startswith("oci://"):
        return OciStore(url, where)
    if url.startswith("file://"):
        path = url[len("file://"):]
        if not path.startswith("/"):
            raise BadInputError(f"{url!r} is not an absolute file:// URL", hint=_URL_HINT, where=where)
        return DirStore(Path(path))
    raise BadInputError(f"unknown cache store {url!r}", hint=_URL_HINT, where=where)


def default_store_url() -> str | None:
    return os.environ.get(ENV) or None


def _safe_rel(rel: str) -> Path:
    p = Path(rel)
    if not rel or p.is_absolute() or ".." in p.parts or rel == ENTRY_NAME:
        raise EntryRefused(f"unsafe file name {rel!r}")
    return p


def _file_list(meta) -> dict[str, dict]:
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and {"sha256", "size"} <= set(v) for v in files.values()):
        raise EntryRefused(f"{ENTRY_NAME} lists no file digests")
    return files


def _copy_verified(chunks, dest: Path, sha256: str, size: int, rel: str) -> None:
    """Write ``chunks`` to ``dest`` while hashing; EntryRefused unless the bytes hash to ``sha256``."""
    h, n = hashlib.sha256(), 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as f:
        for block in chunks:
            n += len(block)
            if n > size:
                raise EntryRefused(f"{rel}: larger than its {size} bytes")
            h.update(block)
            f.write(block)
    if n != size:
        raise EntryRefused(f"{rel}: {n} bytes, expected {size}")
    if h.hexdigest() != sha256:
        raise EntryRefused(f"{rel}: sha256 mismatch")


def _read_chunks(path: Path):
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            yield block


class DirStore:
    """A shared directory: entries copied in (temp + rename), copied out and verified."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def fetch(self, key: str, dest: Path) -> bool:
        src = self.root / key[:2] / key
        if not (src / ENTRY_NAME).is_file():
            return False
        raw = (src / ENTRY_NAME).read_bytes()
        try:
            files = _file_list(json.loads(raw))
        except ValueError as e:
            raise EntryRefused(f"unreadable {ENTRY_NAME}: {e}") from e
        for rel, d in sorted(files.items()):
            if not (src / _safe_rel(rel)).is_file():
                raise EntryRefused(f"{rel}: missing")
            _copy_verified(_read_chunks(src / rel), dest / rel, d["sha256"], d["size"], rel)
        (dest / ENTRY_NAME).write_bytes(raw)
        return True

    def push(self, key: str, entry_dir: Path, replace: bool = False) -> None:
        """Copy an entry in (temp + rename); an existing one is kept unless ``replace`` (it was refused)."""
        from .locks import owner_token

        final = self.root / key[:2] / key
        if (final / ENTRY_NAME).is_file() and not replace:
            return
        tmp = self.root / "tmp" / f"{key[:12]}-{owner_token()}"
        shutil.copytree(entry_dir, tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        if replace and final.exists():
            old = self.root / "tmp" / f"{key[:12]}-{owner_token()}.old"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another writer put it there first
            shutil.rmtree(tmp, ignore_errors=True)


class OciStore:
    """Entries as OCI image manifests in one registry repository, tagged by stage key."""

    def __init__(self, url: str, where: str = "--cache-store"):
        from .registry.refs import parse_ref

        body = url[len("oci://"):].rstrip("/")
        ref = parse_ref(body, require_tag=False) if "/" in body else None
        if ref is None or ref.kind != "remote" or ref.tag or ref.digest:
            raise BadInputError(f"{url!r} is not oci://HOST[:PORT]/REPO", hint=_URL_HINT, where=where)
        self.url, self.host, self.repository = url, ref.host, ref.repository
        self._local = threading.local()  # one client (HTTP session, token) per thread: executors run stages at once

    def _store(self):
        """The registry client, its overall deadline restarted for each entry (a build is long)."""
        from .registry.http import RemoteStore

        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = RemoteStore(self.host, self.repository)
        client.deadline = time.monotonic() + client.overall
        return client

    def fetch(self, key: str, dest: Path) -> bool:
        from .registry.http import MAX_MANIFEST

        s = self._store()
        if not s.has_manifest(key):
            return False
        data, _, _ = s.get_manifest(key)  # checked against the registry's digest header
        try:
            manifest = json.loads(data)
            config, layers = manifest["config"], manifest["layers"]
            if config.get("mediaType") != ENTRY_TYPE:
                raise EntryRefused(f"not an edgepack cache entry ({config.get('mediaType')})")
            raw = s.read_blob(config["digest"], min(int(config["size"]), MAX_MANIFEST))
            if "sha256:" + hashlib.sha256(raw).hexdigest() != config["digest"]:
                raise EntryRefused(f"{ENTRY_NAME}: sha256 mismatch")
            files = _file_list(json.loads(raw))
            listed = {(lay.get("annotations") or {}).get(TITLE): (lay["digest"], int(lay["size"])) for lay in layers}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise EntryRefused(f"malformed entry manifest: {e}") from e
        if listed != {rel: ("sha256:" + d["sha256"], int(d["size"])) for rel, d in files.items()}:
            raise EntryRefused(f"the manifest's layers are not the files {ENTRY_NAME} lists")
        for rel, d in sorted(files.items()):
            with s.open_blob("sha256:" + d["sha256"], d["size"]) as chunks:
                _copy_verified(chunks, dest / _safe_rel(rel), d["sha256"], d["size"], rel)
        (dest / ENTRY_NAME).write_bytes(raw)
        return True

    def push(self, key: str, entry_dir: Path, replace: bool = False) -> None:
        """Blobs (those the registry has are skipped), then the manifest under the key's tag. A
        registry keeps one blob per digest, so ``replace`` cannot mend a corrupted blob it holds:
        readers keep refusing it until the registry's garbage collection or a DELETE removes it."""
        from .registry.http import OCI_MANIFEST

        s = self._store()
        raw = (entry_dir / ENTRY_NAME).read_bytes()
        files = _file_list(json.loads(raw))
        layers = []
        for rel, d in sorted(files.items()):
            digest = "sha256:" + d["sha256"]
            s.put_blob(entry_dir / rel, digest, d["size"])  # skipped when the registry has it
            layers.append({"mediaType": FILE_TYPE, "digest": digest, "size": d["size"], "annotations": {TITLE: rel}})
        config = "sha256:" + hashlib.sha256(raw).hexdigest()
        s.put_blob(raw, config, len(raw))
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ENTRY_TYPE,
                    "config": {"mediaType": ENTRY_TYPE, "digest": config, "size": len(raw)}, "layers": layers,
                    "annotations": {"dev.edgepack.cache.key": key}}
        s.put_manifest(json.dumps(manifest, sort_keys=True).encode(), OCI_MANIFEST, key)

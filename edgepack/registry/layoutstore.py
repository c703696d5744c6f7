"""The embedded OCI image layout seen through the same store interface as a remote registry.

Used by ``edgepack copy`` (either direction, digests preserved) and by pulls of per-target
image indexes from a layout. Tags live in ``index.json`` (``org.opencontainers.image.ref.name``);
referrer manifests (signatures) are listed there untagged, so they are found by scanning for
their ``subject``, as the image-layout spec suggests; that is this store's referrers API.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from edgepack.artifact import CHUNK
from edgepack.bundle.fsutil import atomic_write_bytes
from edgepack.errors import BadInputError, VerificationError
from edgepack.registry import layout as L
from edgepack.registry.refs import DIGEST_RE


class LayoutStore:
    kind = "layout"
    supports_referrers = True

    def __init__(self, path: Path, create: bool = False):
        self.root = Path(path).expanduser()
        self.name = f"layout:{self.root}"
        if create:
            L._init_layout(self.root)
        else:
            L._check_layout(self.root)

    def _desc(self, reference: str) -> dict:
        if DIGEST_RE.match(reference):
            p = L._blob_path(self.root, reference)
            if not p.is_file():
                raise BadInputError(f"not found: manifest {reference}", where=self.name)
            return {"digest": reference, "size": p.stat().st_size}
        tags = L._tagged(self.root)
        if reference not in tags:
            raise BadInputError(f"not found: manifest {reference}; tags: {', '.join(sorted(tags)) or 'none'}", where=self.name)
        return tags[reference]

    def get_manifest(self, reference: str) -> tuple[bytes, str, str]:
        desc = self._desc(reference)
        data = L._read_blob(self.root, {"digest": desc["digest"], "size": desc.get("size")}, f"{self.name} manifest {reference}")
        try:
            media_type = json.loads(data).get("mediaType") or desc.get("mediaType") or ""
        except (ValueError, AttributeError) as e:
            raise VerificationError(f"manifest {reference} is not JSON", where=self.name) from e
        return data, media_type, desc["digest"]

    def has_manifest(self, reference: str) -> bool:
        try:
            self._desc(reference)
            return True
        except BadInputError:
            return False

    def put_manifest(self, data: bytes, media_type: str, reference: str) -> dict:
        desc = L._put_bytes(self.root, data, media_type)
        doc = json.loads(data)
        if DIGEST_RE.match(reference) and not doc.get("subject"):
            return {}  # reachable from its index; nothing to record
        if doc.get("artifactType"):
            desc["artifactType"] = doc["artifactType"]
        ann = dict(doc.get("annotations") or {})
        with L._locked(self.root):
            index = L._read_index(self.root)
            if DIGEST_RE.match(reference):
                index["manifests"] = [m for m in index["manifests"] if m.get("digest") != desc["digest"] or _tag(m)]
                if ann:
                    desc["annotations"] = ann
            else:
                index["manifests"] = [m for m in index["manifests"] if _tag(m) != reference]
                desc["annotations"] = {**ann, L.A_REF: reference}
            index["manifests"].append(desc)
            atomic_write_bytes(self.root / "index.json", L._json(index))
        return {}

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        p = L._blob_path(self.root, digest)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_blob(self, src: Path | bytes, digest: str, size: int) -> bool:
        if L._blob_ok(L._blob_path(self.root, digest), digest, size):
            return False
        if isinstance(src, bytes):
            got = L._put_bytes(self.root, src, "")
        else:
            got = L._put_file(self.root, Path(src), "")
        if got["digest"] != digest or got["size"] != size:
            raise VerificationError(f"blob {digest} changed while it was copied (got {got['digest']})")
        return True

    @contextmanager
    def open_blob(self, digest: str, size: int | None = None):
        """Chunks of a stored blob (a regular file only); the caller bounds and hashes them."""
        with L.open_blob(self.root, digest, self.name) as f:
            yield iter(lambda: f.read(CHUNK), b"")

    def read_blob(self, digest: str, limit: int = L.MAX_SMALL) -> bytes:
        with L.open_blob(self.root, digest, self.name) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise VerificationError(f"blob {digest} is larger than the {limit}-byte limit", where=self.name)
        return data

    def tags(self) -> list[str]:
        return sorted(L._tagged(self.root))

    def referrers(self, digest: str) -> list[dict]:
        out = []
        for m in L._read_index(self.root)["manifests"]:
            if _tag(m):
                continue
            try:
                doc = json.loads(L._read_blob(self.root, m, "referrer"))
            except (VerificationError, ValueError):
                continue
            if isinstance(doc, dict) and (doc.get("subject") or {}).get("digest") == digest:
                out.append({k: m[k] for k in ("mediaType", "digest", "size", "artifactType", "annotations") if k in m})
        return out


def _tag(m: dict) -> str | None:
    return (m.get("annotations") or {}).get(L.A_REF)

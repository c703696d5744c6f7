"""An embedded registry: bundles stored as OCI artifacts in an OCI image-layout folder.

Bundles are published here in the same form as on a remote registry (``index.py``: a per-target
image index, signature as a referrer), through ``LayoutStore``; ``index.json`` entries are tagged
with ``org.opencontainers.image.ref.name``. Blobs are written temp + rename (content addressed,
so re-pushing is idempotent); ``index.json`` is replaced last, under an flock on the layout
folder, so a tag never points at missing blobs. Old manifests stay in ``blobs/`` when a tag
moves (no garbage collection yet).

``pull`` below reads the older single-manifest form (one manifest, every file a layer, the
signature a layer too) that layouts written before the index form hold.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edgepack.artifact import CHUNK, sha256_file
from edgepack.bundle.fsutil import atomic_write_bytes, replace_dir, safe_relpath, staged_dir
from edgepack.bundle.keys import load_public_key
from edgepack.bundle.manifest import MANIFEST_NAME
from edgepack.bundle.sigcheck import verify_bundle
from edgepack.errors import BadInputError, VerificationError
from edgepack.locks import owner_token, remove_dead
from edgepack.registry.refs import DIGEST_RE, Ref, as_ref, check_identity

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ARTIFACT_TYPE = "application/vnd.edgepack.bundle.v1"
CONFIG_TYPE = "application/vnd.edgepack.manifest.v1+json"
FILE_TYPE = "application/vnd.edgepack.file.v1"
SIGNATURE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
A_TITLE = "org.opencontainers.image.title"
A_REF = "org.opencontainers.image.ref.name"
A_CREATED = "org.opencontainers.image.created"
A_VERSION = "org.opencontainers.image.version"
A_TARGETS = "dev.edgepack.targets"
MAX_SMALL = 4 << 20  # manifests, indexes and configs: the OCI spec's suggested manifest limit


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _layout_ref(ref: str | Ref, require_tag: bool = True) -> Ref:
    ref = as_ref(ref, require_tag)
    if ref.kind != "layout":
        raise BadInputError(f"{ref} is not a layout:PATH:TAG reference")
    return ref


# ---------------------------------------------------------------- push


def push(bundle_dir: Path, ref: str | Ref, trust=None, force: bool = False) -> dict:
    """Publish to a layout in the one OCI form of every registry: the per-target image index.

    The same code as a remote push (``remote.push`` through ``LayoutStore``), so a bundle has one
    digest in the layout and in every registry it is copied to."""
    from edgepack.registry import remote

    return remote.push(bundle_dir, _layout_ref(ref), trust=trust, force=force)


def _init_layout(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        marker = path / "oci-layout"
        with _locked(path):  # two first pushes to a new folder must not race
            if not marker.exists():
                if any(path.iterdir()):
                    raise BadInputError(f"{path} is not empty and not an OCI image layout", hint="push to a new or existing registry folder")
                (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(marker, _json({"imageLayoutVersion": "1.0.0"}))
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInputError(f"cannot write registry {path}: {e.strerror or e}", hint="choose a folder you can write to") from e
    _check_layout(path)
    return path


def _blob_path(root: Path, digest: str) -> Path:
    if not DIGEST_RE.match(digest):
        raise VerificationError(f"unsupported or malformed digest {digest!r} in {root}")
    return root / "blobs" / "sha256" / digest.split(":", 1)[1]


def _put_file(root: Path, src: Path, media_type: str) -> dict:
    """Copy ``src`` into the blob store, hashing while copying; return its descriptor."""
    blobs = root / "blobs" / "sha256"
    remove_dead(blobs, ".", (".tmp",))  # blob temps of killed pushes (a live push's are kept)
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=f".{owner_token()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            digest, size = _copy_hashing(f, out)
            os.fsync(out.fileno())
        dest = _blob_path(root, digest)
        if _blob_ok(dest, digest, size):
            os.unlink(tmp)
        else:
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"mediaType": media_type, "digest": digest, "size": size}


def _put_bytes(root: Path, data: bytes, media_type: str) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    dest = _blob_path(root, digest)
    if not _blob_ok(dest, digest, len(data)):
        atomic_write_bytes(dest, data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def _blob_ok(path: Path, digest: str, size: int) -> bool:
    try:
        return path.stat().st_size == size and "sha256:" + sha256_file(path) == digest
    except FileNotFoundError:
        return False


def _copy_hashing(src, dst, limit: int | None = None) -> tuple[str, int]:
    """Stream ``src`` to ``dst`` (open files); return the ``sha256:`` digest and size.

    With ``limit`` at most ``limit + 1`` bytes are read: enough to tell the source is too big."""
    h, size = hashlib.sha256(), 0
    while limit is None or size <= limit:
        block = src.read(CHUNK if limit is None else min(CHUNK, limit + 1 - size))
        if not block:
            break
        h.update(block)
        size += len(block)
        dst.write(block)
    dst.flush()
    return "sha256:" + h.hexdigest(), size


def open_blob(root: Path, digest: str, what: str):
    """Open a stored blob for reading: a regular file, never a symlink, FIFO or device
    (a blob linked to ``/dev/zero`` must not stream forever). VerificationError otherwise."""
    path = _blob_path(root, digest)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError as e:
        raise VerificationError(f"blob {digest} is missing from {root}", where=what) from e
    except OSError as e:  # ELOOP: a symlink
        raise VerificationError(f"blob {digest} in {root} is not a regular file ({e.strerror})",
                                hint="the layout was tampered with; republish the bundle", where=what) from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VerificationError(f"blob {digest} in {root} is not a regular file",
                                hint="the layout was tampered with; republish the bundle", where=what)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@contextmanager
def _locked(root: Path):
    fd = os.open(root, os.O_RDONLY)  # flock on the layout folder itself: no extra lock file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------- read side


def _check_layout(root: Path) -> None:
    marker = root / "oci-layout"
    try:
        version = json.loads(marker.read_text())["imageLayoutVersion"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BadInputError(f"no OCI image layout at {root} (missing or bad oci-layout file)", hint="push a bundle there first") from e
    if version != "1.0.0":
        raise BadInputError(f"unsupported OCI image layout version {version!r}", where=root)


def _read_index(root: Path) -> dict:
    try:
        index = json.loads((root / "index.json").read_text())
    except FileNotFoundError:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    except (OSError, ValueError) as e:
        raise VerificationError(f"{root}/index.json is unreadable or not JSON: {e}") from e
    if not isinstance(index, dict) or not isinstance(index.get("manifests", []), list):
        raise VerificationError(f"{root}/index.json is not an OCI image index")
    index.setdefault("manifests", [])
    return index


def _tagged(root: Path) -> dict[str, dict]:
    _check_layout(root)
    out = {}
    for m in _read_index(root)["manifests"]:
        tag = (m.get("annotations") or {}).get(A_REF)
        if tag:
            out[tag] = m  # a later entry wins
    return out


def _read_blob(root: Path, desc: dict, what: str) -> bytes:
    """Read a small blob (manifest or config) and check it against its descriptor."""
    declared = desc.get("size")
    size = declared if isinstance(declared, int) else MAX_SMALL
    if size > MAX_SMALL:
        raise VerificationError(f"blob {desc.get('digest')} is {size} bytes, over the {MAX_SMALL}-byte limit for manifests", where=what)
    with open_blob(root, str(desc.get("digest")), what) as f:
        data = f.read(min(size, MAX_SMALL) + 1)
    if len(data) != desc.get("size") or "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
        raise VerificationError(f"blob {desc['digest']} does not match its digest or size (registry corrupted)", where=what)
    return data


def list_tags(layout_path: Path) -> list[dict]:
    """Tags in a layout with digest, created, name and targets (from the manifest annotations)."""
    root = Path(layout_path).expanduser()
    out = []
    for tag, desc in sorted(_tagged(root).items()):
        ann = desc.get("annotations") or {}
        try:
            ann = json.loads(_read_blob(root, desc, f"tag {tag}")).get("annotations") or ann
        except (VerificationError, ValueError, AttributeError):
            pass  # keep the index's copy of the annotations
        targets = ann.get(A_TARGETS)
        out.append({
            "tag": tag,
            "digest": desc.get("digest"),
            "created": ann.get(A_CREATED),
            "name": ann.get(A_TITLE),
            "targets": targets.split(",") if targets else [],
        })
    return out


def resolve(ref: str | Ref) -> tuple[Path, dict]:
    """The layout root and the manifest descriptor for a tag or digest."""
    ref = _layout_ref(ref)
    root = ref.path
    assert root is not None  # a layout reference always has its folder
    if ref.digest:
        _check_layout(root)
        if not _blob_path(root, ref.digest).is_file():
            raise BadInputError(f"{ref.digest} not found in {root}")
        return root, {"mediaType": OCI_MANIFEST, "digest": ref.digest, "size": _blob_path(root, ref.digest).stat().st_size}
    tags = _tagged(root)
    if ref.tag not in tags:
        avail = ", ".join(sorted(tags)) or "none"
        raise BadInputError(f"tag {ref.tag!r} not found in {root}; available tags: {avail}")
    return root, tags[ref.tag]


def pull(ref: str | Ref, out_dir: Path, public_key: Path, force: bool = False) -> dict:
    """A single-manifest bundle (the older layout form): fetch, re-hash every blob, reassemble,
    verify the signature and the name/version against ``ref``, then move into ``out_dir``."""
    from edgepack.registry.fetch import check_out_dir

    ref = _layout_ref(ref)
    load_public_key(public_key)  # fail fast on a bad key, before any copying
    check_out_dir(Path(out_dir), force)
    root, desc = resolve(ref)
    doc = _load_manifest(root, desc, str(ref))
    out_dir = Path(out_dir)
    with staged_dir(out_dir, "the pulled bundle") as tmp:
        (tmp / MANIFEST_NAME).write_bytes(_read_blob(root, doc["config"], MANIFEST_NAME))
        seen = set()
        for layer in doc["layers"]:
            title = (layer.get("annotations") or {}).get(A_TITLE)
            try:
                rel = safe_relpath(title).as_posix()
            except ValueError as e:
                raise VerificationError(f"layer {layer.get('digest')}: unsafe or missing title {title!r}: {e}") from e
            if rel == MANIFEST_NAME or rel in seen:
                raise VerificationError(f"duplicate layer title in {desc['digest']}", where=rel)
            seen.add(rel)
            _copy_checked(root, layer, tmp / rel, rel)
        summary = verify_bundle(tmp, public_key)
        check_identity(ref, summary.get("name"), summary.get("version"), f"{ref.path}@{desc['digest']}")
        replace_dir(tmp, out_dir, "the pulled bundle", force=force)
    summary.update(bundle=str(out_dir), ref=str(ref), digest=desc["digest"])
    return summary


def _load_manifest(root: Path, desc: dict, name: str) -> dict:
    try:
        doc = json.loads(_read_blob(root, desc, name))
    except ValueError as e:
        raise VerificationError(f"manifest {desc['digest']} is not JSON", where=name) from e
    if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
        raise BadInputError(f"{name} is not an edgepack bundle (artifactType {doc.get('artifactType') if isinstance(doc, dict) else None!r})")
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
        raise VerificationError(f"manifest {desc['digest']} has no config or layers", where=name)
    return doc


def _copy_checked(root: Path, layer: dict, dest: Path, rel: str) -> None:
    declared = layer.get("size") if isinstance(layer.get("size"), int) else 0
    try:
        f = open_blob(root, str(layer.get("digest")), rel)
    except VerificationError as e:
        raise e.recast(VerificationError, where=e.where if (e.where or "").startswith(rel) else ": ".join(filter(None, (rel, e.where)))) from e
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with f, open(dest, "wb") as out:
            digest, size = _copy_hashing(f, out, limit=declared)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        raise VerificationError("layer path conflicts with another layer", where=rel) from e
    if size != layer.get("size") or digest != layer["digest"]:
        raise VerificationError(f"blob {layer['digest']} does not match its digest or size (registry corrupted)", where=rel)

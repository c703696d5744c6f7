"""An embedded registry: bundles stored as OCI artifacts in an OCI image-layout folder.

One layer per bundle file (title = its relative path in the bundle, e.g.
``targets/ort/model.onnx``), the bundle's ``edgepack.json`` as the config blob, and
``index.json`` entries tagged with ``org.opencontainers.image.ref.name``. Blobs are written
temp + rename (content addressed, so re-pushing is idempotent); ``index.json`` is replaced
last, under an flock on the layout folder, so a tag never points at missing blobs.
Old manifests stay in ``blobs/`` when a tag moves (no garbage collection yet).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from edgepack.artifact import CHUNK, sha256_file
from edgepack.bundle.fsutil import atomic_write_bytes, replace_dir, safe_relpath, staged_dir
from edgepack.bundle.manifest import MANIFEST_NAME, SIGNATURES_DIR, check_files, read_manifest
from edgepack.bundle.sign import SIGNATURE_NAME, load_public_key, verify_bundle
from edgepack.errors import BadInputError, VerificationError
from edgepack.registry.refs import DIGEST_RE, Ref, as_ref

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


def _json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _layout_ref(ref: str | Ref, require_tag: bool = True) -> Ref:
    ref = as_ref(ref, require_tag)
    if ref.kind != "layout":
        raise BadInputError(f"{ref} is not a layout:PATH:TAG reference")
    return ref


# ---------------------------------------------------------------- push


def push(bundle_dir: Path, ref: str | Ref) -> dict:
    """Store a signed bundle under ``ref``'s tag; return digest, size and tag of the manifest."""
    ref = _layout_ref(ref)
    if ref.tag is None:
        raise BadInputError(f"push needs a tag, not a digest: {ref}")
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    check_files(bundle_dir, manifest)  # never publish a bundle that fails its own manifest
    if not (bundle_dir / SIGNATURES_DIR / SIGNATURE_NAME).is_file():
        raise BadInputError(f"bundle {bundle_dir} is not signed", hint="run `edgepack sign` before pushing")
    root = _init_layout(ref.path)
    try:
        config = _put_file(root, bundle_dir / MANIFEST_NAME, CONFIG_TYPE)
        layers = []
        rels = [f["path"] for f in manifest["files"]] + [f"{SIGNATURES_DIR}/{SIGNATURE_NAME}"]
        for rel in sorted(rels):
            mt = SIGNATURE_TYPE if rel.startswith(SIGNATURES_DIR + "/") else FILE_TYPE
            layers.append({**_put_file(root, bundle_dir / rel, mt), "annotations": {A_TITLE: rel}})
        annotations = _annotations(manifest)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": config,
            "layers": layers,
            "annotations": annotations,
        }
        desc = _put_bytes(root, _json(doc), OCI_MANIFEST)
        desc.update(artifactType=ARTIFACT_TYPE, annotations={**annotations, A_REF: ref.tag})
        with _locked(root):
            index = _read_index(root)
            index["manifests"] = [m for m in index["manifests"] if (m.get("annotations") or {}).get(A_REF) != ref.tag]
            index["manifests"].append(desc)
            atomic_write_bytes(root / "index.json", _json(index))
    except OSError as e:
        raise BadInputError(f"cannot write registry {root}: {e.strerror or e}") from e
    return {"ref": str(ref), "tag": ref.tag, "digest": desc["digest"], "size": desc["size"], "layers": len(layers)}


def _annotations(manifest: dict) -> dict:
    created = manifest.get("created") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {A_CREATED: str(created)}
    if manifest.get("name"):
        out[A_TITLE] = str(manifest["name"])
    if manifest.get("version"):
        out[A_VERSION] = str(manifest["version"])
    targets = _target_names(manifest.get("targets"))
    if targets:
        out[A_TARGETS] = ",".join(targets)
    return out


def _target_names(targets) -> list[str]:
    if isinstance(targets, dict):
        return sorted(str(k) for k in targets)
    if isinstance(targets, list):
        names = [t if isinstance(t, str) else (t.get("name") or t.get("target")) for t in targets if isinstance(t, (str, dict))]
        return [str(n) for n in names if n]
    return []


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
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".", suffix=".tmp")
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


def _copy_hashing(src, dst) -> tuple[str, int]:
    """Stream ``src`` to ``dst`` (open files); return the ``sha256:`` digest and size."""
    h, size = hashlib.sha256(), 0
    for block in iter(lambda: src.read(CHUNK), b""):
        h.update(block)
        size += len(block)
        dst.write(block)
    dst.flush()
    return "sha256:" + h.hexdigest(), size


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
        raise BadInputError(f"{root}: unsupported OCI image layout version {version!r}")


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
    path = _blob_path(root, str(desc.get("digest")))
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise VerificationError(f"{what}: blob {desc['digest']} is missing from {root}") from e
    if len(data) != desc.get("size") or "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"]:
        raise VerificationError(f"{what}: blob {desc['digest']} does not match its digest or size (registry corrupted)")
    return data


def list_tags(layout_path: Path) -> list[dict]:
    """Tags in a layout with digest, created, name and targets (from the manifest annotations)."""
    root = Path(layout_path).expanduser()
    out = []
    for tag, desc in _tagged(root).items():
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


def pull(ref: str | Ref, out_dir: Path, public_key: Path) -> dict:
    """Fetch, re-hash every blob, reassemble, verify the signature, then move into ``out_dir``."""
    load_public_key(public_key)  # fail fast on a bad key, before any copying
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
                raise VerificationError(f"{rel}: duplicate layer title in {desc['digest']}")
            seen.add(rel)
            _copy_checked(root, layer, tmp / rel, rel)
        summary = verify_bundle(tmp, public_key)
        replace_dir(tmp, out_dir, "the pulled bundle")
    summary.update(bundle=str(out_dir), ref=str(ref), digest=desc["digest"])
    return summary


def _load_manifest(root: Path, desc: dict, name: str) -> dict:
    try:
        doc = json.loads(_read_blob(root, desc, name))
    except ValueError as e:
        raise VerificationError(f"{name}: manifest {desc['digest']} is not JSON") from e
    if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
        raise BadInputError(f"{name} is not an edgepack bundle (artifactType {doc.get('artifactType') if isinstance(doc, dict) else None!r})")
    if not isinstance(doc.get("config"), dict) or not isinstance(doc.get("layers"), list):
        raise VerificationError(f"{name}: manifest {desc['digest']} has no config or layers")
    return doc


def _copy_checked(root: Path, layer: dict, dest: Path, rel: str) -> None:
    try:
        src = _blob_path(root, str(layer.get("digest")))
    except VerificationError as e:
        raise VerificationError(f"{rel}: {e.message}") from e
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as f, open(dest, "wb") as out:
            digest, size = _copy_hashing(f, out)
    except FileNotFoundError as e:
        if not src.exists():
            raise VerificationError(f"{rel}: blob {layer['digest']} is missing from {root}") from e
        raise VerificationError(f"{rel}: layer path conflicts with another layer") from e
    except (NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        raise VerificationError(f"{rel}: layer path conflicts with another layer") from e
    if size != layer.get("size") or digest != layer["digest"]:
        raise VerificationError(f"{rel}: blob {layer['digest']} does not match its digest or size (registry corrupted)")

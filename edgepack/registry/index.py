"""A signed bundle as OCI objects: an image index with one manifest per target, plus a signature.

    index (tag = version, artifactType application/vnd.edgepack.bundle.v1)
      +- manifest per target: config = edgepack.json, layers = shared files + that target's files
      |    (one layer per file, uncompressed, titled with its path inside the bundle)
    signature referrer: artifactType application/vnd.dev.sigstore.bundle.v0.3+json,
      one layer = signatures/model.sig, subject = the index (and one per target manifest)

Push order makes the tag the commit point: blobs, target manifests (by digest), the index (by
digest), the signature referrers (and the ``sha256-<hex>`` fallback tags on registries without
the referrers API), and only then the index under its tag. A push killed at any point leaves no
tag on an incomplete or unsigned artifact.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from edgepack.bundle.manifest import MANIFEST_NAME, SIGNATURES_DIR
from edgepack.bundle.sigcheck import SIGNATURE_NAME, check_publishable
from edgepack.errors import BadInputError, VerificationError
from edgepack.registry.http import OCI_INDEX, OCI_MANIFEST

ARTIFACT_TYPE = "application/vnd.edgepack.bundle.v1"
CONFIG_TYPE = "application/vnd.edgepack.manifest.v1+json"
FILE_TYPE = "application/vnd.edgepack.file.v1"
SIGNATURE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
A_TITLE = "org.opencontainers.image.title"
A_CREATED = "org.opencontainers.image.created"
A_VERSION = "org.opencontainers.image.version"
A_TARGETS = "dev.edgepack.targets"
A_TARGET = "dev.edgepack.target"
A_PRECISION = "dev.edgepack.precision"
A_RUNTIME = "dev.edgepack.runtime"
A_VALIDATED = "dev.edgepack.validated-on"
A_VALIDATION = "dev.edgepack.validation"
A_SOURCE = "dev.edgepack.source.digest"
A_RECIPE = "dev.edgepack.recipe.digest"
SIG_REL = f"{SIGNATURES_DIR}/{SIGNATURE_NAME}"


def dumps(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def desc_of(data: bytes, media_type: str, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data), **extra}


class Plan:
    """Everything a push uploads: blobs (path or bytes) and manifests in commit order."""

    def __init__(self):
        self.blobs: dict[str, tuple[Path | bytes, int]] = {}
        self.manifests: list[tuple[bytes, str]] = []  # (bytes, media type), pushed by digest
        self.index: bytes = b""
        self.referrers: list[tuple[bytes, dict]] = []  # (manifest bytes, subject descriptor)
        self.name: str | None = None  # the bundle's (signed) name and version
        self.version: str | None = None

    def add_file(self, path: Path, digest_hex: str, size: int) -> str:
        digest = "sha256:" + digest_hex
        self.blobs.setdefault(digest, (path, size))
        return digest


def target_groups(manifest: dict) -> dict[str, list[str]]:
    """Target id -> bundle files of that target; files of no target are shared by all."""
    targets = manifest.get("targets")
    files = [f["path"] for f in manifest["files"]]
    groups: dict[str, list[str]] = {}
    if not isinstance(targets, dict):
        return groups
    for tid, t in sorted(targets.items()):
        path = (t or {}).get("path") if isinstance(t, dict) else None
        prefixes = [f"targets/{tid}/"] + ([path.rstrip("/") + "/"] if path else [])
        groups[tid] = [f for f in files if f == path or any(f.startswith(p) for p in prefixes)]
        if not groups[tid]:
            raise BadInputError(f"target {tid!r} has no files in the bundle", hint="rebuild the bundle", where=MANIFEST_NAME)
    return groups


def _validation(report: dict, tid: str) -> dict:
    out = {}
    for dev, v in sorted(((report.get("targets") or {}).get(tid) or {}).get("devices", {}).items()):
        if isinstance(v, dict):
            out[dev] = {"status": v.get("status"), "p50_ms": (v.get("latency") or {}).get("p50_ms"),
                        "top1": (v.get("accuracy") or {}).get("top1")}
    return out


def plan_bundle(bundle_dir: Path, trust=None) -> Plan:
    """The objects to upload; the bundle's files and signature are checked first (``check_publishable``)."""
    bundle_dir = Path(bundle_dir)
    manifest = check_publishable(bundle_dir, trust)  # never publish what would fail at pull
    sig = bundle_dir / SIG_REL
    try:
        report = json.loads((bundle_dir / "report.json").read_text())
    except (OSError, ValueError):
        report = {}
    plan = Plan()
    plan.name, plan.version = manifest.get("name"), manifest.get("version")
    info = {f["path"]: f for f in manifest["files"]}
    cfg_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    plan.blobs[desc_of(cfg_bytes, CONFIG_TYPE)["digest"]] = (cfg_bytes, len(cfg_bytes))
    config = desc_of(cfg_bytes, CONFIG_TYPE)
    groups = target_groups(manifest)
    grouped = {f for fs in groups.values() for f in fs}
    shared = [f for f in info if f not in grouped]
    created = str(manifest.get("created") or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    top = {A_CREATED: created, A_TARGETS: ",".join(sorted(groups))}
    for key, name in (("name", A_TITLE), ("version", A_VERSION)):
        if manifest.get(key):
            top[name] = str(manifest[key])
    if isinstance(manifest.get("source"), dict) and manifest["source"].get("sha256"):
        top[A_SOURCE] = "sha256:" + str(manifest["source"]["sha256"])
    if manifest.get("recipe_sha256"):
        top[A_RECIPE] = "sha256:" + str(manifest["recipe_sha256"])
    if isinstance(report.get("summary"), dict):  # the model card's summary: description, licenses, authors, ...
        from edgepack.model_card import oci_annotations

        top.update(oci_annotations(report))
    entries = []
    for tid, files in (groups or {"": list(info)}).items():
        layers = []
        for rel in sorted(set(shared) | set(files)):
            f = info[rel]
            digest = plan.add_file(bundle_dir / rel, f["sha256"], f["size"])
            layers.append({"mediaType": FILE_TYPE, "digest": digest, "size": f["size"], "annotations": {A_TITLE: rel}})
        ann = dict(top)
        if tid:
            t = manifest["targets"][tid]
            ann.update({A_TARGET: tid, A_PRECISION: str(t.get("precision") or ""), A_RUNTIME: str(t.get("runtime") or ""),
                        A_VALIDATED: ",".join(t.get("validated_on") or []), A_VALIDATION: dumps(_validation(report, tid)).decode()})
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE, "config": config,
               "layers": layers, "annotations": ann}
        data = dumps(doc)
        plan.manifests.append((data, OCI_MANIFEST))
        sub = {k: v for k, v in ann.items() if k in (A_TARGET, A_PRECISION, A_RUNTIME, A_VALIDATED, A_VALIDATION)}
        entries.append(desc_of(data, OCI_MANIFEST, artifactType=ARTIFACT_TYPE, annotations=sub))
    plan.index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": ARTIFACT_TYPE,
                        "manifests": entries, "annotations": top})
    sig_bytes = sig.read_bytes()
    sig_desc = desc_of(sig_bytes, SIGNATURE_TYPE, annotations={A_TITLE: SIG_REL})
    plan.blobs[sig_desc["digest"]] = (sig_bytes, len(sig_bytes))
    plan.blobs[desc_of(EMPTY, EMPTY_TYPE)["digest"]] = (EMPTY, len(EMPTY))
    for data, mt in [(plan.index, OCI_INDEX)] + plan.manifests:
        subject = desc_of(data, mt)
        ref = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SIGNATURE_TYPE,
               "config": desc_of(EMPTY, EMPTY_TYPE), "layers": [sig_desc], "subject": subject,
               "annotations": {A_CREATED: created}}
        plan.referrers.append((dumps(ref), subject))
    return plan


def check_tag_free(store, tag: str, digest: str, force: bool = False) -> bool:
    """A release tag is immutable: refuse (exit 2, both digests) when ``tag`` holds other content,
    unless ``force``. True when the tag already holds exactly ``digest`` (nothing to move)."""
    if not store.has_manifest(tag):
        return False
    _, _, current = store.get_manifest(tag)
    if current == digest or force:
        return current == digest
    raise BadInputError(f"{store.name}:{tag} already holds {current}; refusing to move it to {digest}",
                        hint="release tags are immutable: publish a new version, or pass --force to move the tag")


def push_plan(store, plan: Plan, tag: str, force: bool = False) -> dict:
    """Upload in commit order (see module doc); return the index digest and counts."""
    check_tag_free(store, tag, desc_of(plan.index, OCI_INDEX)["digest"], force)  # before the first byte
    sent = 0
    for digest, (src, size) in sorted(plan.blobs.items()):
        sent += bool(store.put_blob(src, digest, size))
    for data, mt in plan.manifests:
        store.put_manifest(data, mt, desc_of(data, mt)["digest"])
    index_desc = desc_of(plan.index, OCI_INDEX)
    store.put_manifest(plan.index, OCI_INDEX, index_desc["digest"])
    for data, subject in plan.referrers:
        attach_referrer(store, data, subject)
    store.put_manifest(plan.index, OCI_INDEX, tag)  # the commit point
    return {"digest": index_desc["digest"], "size": index_desc["size"], "blobs_uploaded": sent,
            "blobs": len(plan.blobs), "manifests": len(plan.manifests)}


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


def attach_referrer(store, data: bytes, subject: dict) -> None:
    """PUT a referrer manifest; keep the ``sha256-<hex>`` index in step unless the store indexes referrers."""
    desc = desc_of(data, OCI_MANIFEST)
    doc = json.loads(data)
    store.put_manifest(data, OCI_MANIFEST, desc["digest"])
    if store.supports_referrers:
        return
    tag = fallback_tag(subject["digest"])
    entries = []
    if store.has_manifest(tag):
        raw, _, _ = store.get_manifest(tag)
        try:
            entries = list(json.loads(raw).get("manifests") or [])
        except (ValueError, AttributeError) as e:
            raise VerificationError(f"referrers fallback tag {tag} is not an image index", where=store.name) from e
    if any(e.get("digest") == desc["digest"] for e in entries):
        return
    entries.append({**desc, "artifactType": doc.get("artifactType"), "annotations": doc.get("annotations") or {}})
    store.put_manifest(dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}), OCI_INDEX, tag)


def list_referrers(store, digest: str) -> list[dict]:
    """Referrer descriptors of ``digest``: the referrers API, else the fallback tag's index."""
    found = store.referrers(digest)
    if found is not None:
        return found
    tag = fallback_tag(digest)
    if not store.has_manifest(tag):
        return []
    raw, _, _ = store.get_manifest(tag)
    try:
        return list(json.loads(raw).get("manifests") or [])
    except (ValueError, AttributeError) as e:
        raise VerificationError(f"referrers fallback tag {tag} is not an image index", where=store.name) from e

"""Remote OCI registries (and the same operations on layouts): push, pull, verify, ls, copy.

``push``/``pull``/``list_tags`` are the backend functions ``registry/__init__.py`` dispatches
to for ``host/repo:tag`` references. ``store_for`` gives either kind of store, so ``copy``,
``verify`` and per-target pulls work between and on both. Format: ``index.py``; read side and
checks: ``fetch.py``; HTTP: ``http.py``; credentials and TLS: ``auth.py``.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from edgepack.errors import BadInputError, EdgepackError
from edgepack.registry import fetch
from edgepack.registry.http import OCI_INDEX
from edgepack.registry.index import (
    A_CREATED,
    A_PRECISION,
    A_RUNTIME,
    A_TARGET,
    A_TARGETS,
    A_TITLE,
    A_VALIDATED,
    A_VALIDATION,
    A_VERSION,
    SIGNATURE_TYPE,
    attach_referrer,
    check_tag_free,
    list_referrers,
    plan_bundle,
    push_plan,
    target_groups,
)
from edgepack.registry.refs import Ref, as_ref, check_identity


def store_for(ref: Ref, plain_http: bool = False, create: bool = False, timeout: float | None = None):
    """A store for either kind of reference; ``timeout``: the overall deadline in seconds (remote)."""
    if ref.kind == "layout":
        from edgepack.registry.layoutstore import LayoutStore

        assert ref.path is not None  # parse_ref sets a layout's folder
        return LayoutStore(ref.path, create=create)
    from edgepack.registry.http import RemoteStore

    assert ref.host is not None and ref.repository is not None  # parse_ref sets both for a remote
    return RemoteStore(ref.host, ref.repository, plain_http=plain_http, timeout=timeout)


def push(bundle_dir: Path, ref: str | Ref, plain_http: bool = False, trust=None, force: bool = False,
         timeout: float | None = None) -> dict:
    """Publish a signed bundle as a per-target image index (on layouts and remote registries alike).

    Before the first byte is uploaded: the bundle's files and signature (``trust``: verified with
    it; None: the signed file list is checked, as after a build), its name and version against
    the reference, and the tag (an existing tag with other content is refused unless ``force``).
    The tag is written last."""
    ref = as_ref(ref)
    if ref.tag is None:
        raise BadInputError(f"push needs a tag, not a digest: {ref}", hint="write HOST/REPO:TAG or layout:PATH:TAG")
    plan = plan_bundle(Path(bundle_dir), trust)
    check_identity(ref, plan.name, plan.version, f"publishing {bundle_dir} as {ref}", error=BadInputError)
    res = push_plan(store_for(ref, plain_http, create=True, timeout=timeout), plan, ref.tag, force=force)
    return {"ref": str(ref), "tag": ref.tag, **res}


def check_access(ref: str | Ref, plain_http: bool = False) -> None:
    """Build pre-flight: the registry answers and takes our credentials (before any long stage)."""
    ref = as_ref(ref, require_tag=False)
    if ref.kind == "remote":
        store_for(ref, plain_http).check_access()


def check_release(ref: str | Ref, name: str, force: bool = False, plain_http: bool = False) -> None:
    """Build pre-flight: the reference names this model (repository = name, tag = version) and the
    version's tag is free: a rebuild never moves a published release unless ``force`` (exit 2)."""
    ref = as_ref(ref)
    check_identity(ref, name, ref.tag, f"publishing {name} as {ref}", error=BadInputError)
    if ref.kind == "layout" and ref.path is not None and not (ref.path / "oci-layout").is_file():
        return  # a new layout: nothing published yet
    store = store_for(ref, plain_http)
    if ref.kind == "remote":
        store.check_access()
    if not force and store.has_manifest(ref.tag):
        _, _, current = store.get_manifest(ref.tag)
        raise BadInputError(f"{store.name}:{ref.tag} is already published ({current}); refusing to build over a release",
                            hint="bump the recipe's version, build with --no-publish, or pass --force to move the tag")


def pull(ref: str | Ref, out_dir: Path, public_key, device=None, target: str | None = None, plain_http: bool = False,
         force: bool = False, timeout: float | None = None) -> dict:
    ref = as_ref(ref)
    fetch.check_out_dir(Path(out_dir), force)
    return fetch.pull(store_for(ref, plain_http, timeout=timeout), ref, Path(out_dir), public_key, device=device, target=target, force=force)


def verify(ref: str | Ref, public_key, plain_http: bool = False, timeout: float | None = None) -> dict:
    ref = as_ref(ref)
    return fetch.verify(store_for(ref, plain_http, timeout=timeout), ref, public_key)


# ------------------------------------------------------------------ ls


def list_tags(ref: str | Ref, plain_http: bool = False, timeout: float | None = None) -> list[dict]:
    """Tags (or the one tag of ``ref``) with targets, sizes, validation status and signature presence."""
    ref = as_ref(ref, require_tag=False)
    store = store_for(ref, plain_http, timeout=timeout)
    tags = [ref.reference] if ref.reference else [t for t in store.tags() if not t.startswith("sha256-")]
    return [_describe(store, tag) for tag in sorted(tags)]


def _describe(store, tag: str) -> dict:
    data, media_type, digest = store.get_manifest(tag)
    doc = json.loads(data)
    ann = doc.get("annotations") or {}
    out = {"tag": tag, "digest": digest, "name": ann.get(A_TITLE), "version": ann.get(A_VERSION),
           "created": ann.get(A_CREATED), "targets": [], "size": 0,
           "signed": any(r.get("artifactType") == SIGNATURE_TYPE for r in list_referrers(store, digest))}
    blobs = {}
    if media_type == OCI_INDEX or doc.get("mediaType") == OCI_INDEX:
        for e in doc.get("manifests") or []:
            m = fetch.manifest_at(store, e["digest"], f"{store.name} manifest {e['digest']}")
            a = e.get("annotations") or {}
            layers = {layer["digest"]: layer.get("size", 0) for layer in m.get("layers") or []}
            blobs.update(layers)
            try:
                validation = json.loads(a.get(A_VALIDATION) or "{}")
            except ValueError:
                validation = {}
            out["targets"].append({"target": a.get(A_TARGET), "precision": a.get(A_PRECISION), "runtime": a.get(A_RUNTIME),
                                   "validated_on": [d for d in (a.get(A_VALIDATED) or "").split(",") if d],
                                   "validation": validation, "size": sum(layers.values()), "digest": e["digest"]})
    else:  # a single-manifest bundle (layout format): signature is a layer, details from edgepack.json
        layers = {(x.get("annotations") or {}).get(A_TITLE): x for x in doc.get("layers") or []}
        blobs = {x["digest"]: x.get("size", 0) for x in layers.values()}
        out["signed"] = out["signed"] or "signatures/model.sig" in layers
        try:
            config = json.loads(fetch.small_blob(store, doc["config"], "edgepack.json"))
            groups = target_groups(config)
        except (EdgepackError, ValueError, KeyError, TypeError):
            config, groups = {}, {t: [] for t in (ann.get(A_TARGETS) or "").split(",") if t}
        grouped = {f for fs in groups.values() for f in fs} | {"signatures/model.sig"}
        shared = sum(x.get("size", 0) for title, x in layers.items() if title not in grouped)
        for tid, files in sorted(groups.items()):
            t = (config.get("targets") or {}).get(tid) or {}
            size = shared + sum(layers[f].get("size", 0) for f in files if f in layers)
            out["targets"].append({"target": tid, "precision": t.get("precision"), "runtime": t.get("runtime"),
                                   "validated_on": list(t.get("validated_on") or []), "size": size})
    out["size"] = sum(blobs.values())
    return out


# ------------------------------------------------------------------ copy


def copy(src: str | Ref, dst: str | Ref, public_key, plain_http: bool = False, force: bool = False,
         timeout: float | None = None) -> dict:
    """Copy a tagged bundle (index, manifests, blobs, signature referrers) with digests preserved.

    Before anything is uploaded the source is verified as ``verify REF`` does (signature with
    ``public_key``, every layer digest against it, name and version against both references) and
    the destination tag is checked (immutable unless ``force``). Every blob is re-hashed on the
    way; the destination tag is written last.
    """
    src, dst = as_ref(src), as_ref(dst, require_tag=False)
    tag = dst.tag or src.tag
    if tag is None:
        raise BadInputError(f"copy destination {dst} needs a tag (the source is pinned by digest)", hint="write DST:TAG")
    s = store_for(src, plain_http, timeout=timeout)
    art = fetch.Artifact(s, fetch.reference_of(src), fetch.as_trust(public_key))
    art.layers_for(None)
    name, version = art.config.get("name"), art.config.get("version")
    check_identity(src, name, version, art.where)
    dst = Ref(kind=dst.kind, tag=tag, path=dst.path, host=dst.host, repository=dst.repository)
    check_identity(dst, name, version, f"copying {art.where} to {dst}", error=BadInputError)
    d = store_for(dst, plain_http, create=True, timeout=timeout)
    data, media_type, digest = s.get_manifest(art.digest)
    if check_tag_free(d, tag, digest, force):
        return {"src": str(src), "dst": f"{d.name}:{tag}", "digest": digest, "blobs_copied": 0, "manifests": 0}
    stats = {"blobs_copied": 0, "manifests": 0}
    _copy_node(s, d, data, media_type, digest, stats, with_referrers=True)
    d.put_manifest(data, media_type, tag)
    return {"src": str(src), "dst": f"{d.name}:{tag}", "digest": digest, "blobs_mounted": getattr(d, "mounted", 0), **stats}


def _copy_node(s, d, data: bytes, media_type: str, digest: str, stats: dict, with_referrers: bool) -> None:
    doc = json.loads(data)
    if media_type == OCI_INDEX or doc.get("mediaType") == OCI_INDEX:
        for e in doc.get("manifests") or []:
            child, cmt, cdigest = s.get_manifest(e["digest"])
            _copy_node(s, d, child, cmt or e.get("mediaType"), cdigest, stats, with_referrers)
    else:
        for desc in [doc.get("config")] + list(doc.get("layers") or []):
            if isinstance(desc, dict):
                stats["blobs_copied"] += _copy_blob(s, d, desc)
    d.put_manifest(data, media_type, digest)
    stats["manifests"] += 1
    if not with_referrers:
        return
    subject = {"mediaType": media_type, "digest": digest, "size": len(data)}
    for r in list_referrers(s, digest):
        rdata, rmt, rdigest = s.get_manifest(r["digest"])
        _copy_node(s, d, rdata, rmt, rdigest, stats, with_referrers=False)
        attach_referrer(d, rdata, subject)


def _copy_blob(s, d, desc: dict) -> int:
    """Copy one blob unless the destination has it (HEAD); within one registry mount it
    (``?mount=&from=``) instead of sending it again. 1 when bytes were uploaded, else 0."""
    digest, size = desc["digest"], desc.get("size")
    if d.has_blob(digest, size):
        return 0
    if d.kind == s.kind == "remote" and d.api == s.api and d.repository != s.repository and d.mount_blob(digest, s.repository):
        d.mounted = getattr(d, "mounted", 0) + 1
        return 0
    fd, tmp = tempfile.mkstemp(prefix=".edgepack-copy-", suffix=".blob")
    try:
        with os.fdopen(fd, "w+b") as out:
            fetch.stream_blob(s, desc, out, f"{s.name}: blob {digest}")
        d.put_blob(Path(tmp), digest, size)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return 1

"""Read side, for any store (remote registry or layout): resolve, verify, pull.

Order of trust: the signature is fetched and verified first (it is small); the config
(``edgepack.json``) and ``report.json`` blobs are hashed against the SIGNED digests before
they are parsed; the target is chosen from them; every layer the pull needs must carry the
signed digest of its title; then blobs are downloaded into a temp folder, each re-hashed while
streaming, and the folder is renamed into place only when everything matched.
Two artifact shapes are read: the per-target image index (``index.py``) and the single
manifest of ``layout.py`` (signature as a layer), e.g. after ``edgepack copy`` from a layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgepack.bundle.fsutil import replace_dir, safe_relpath, staged_dir
from edgepack.bundle.manifest import MANIFEST_NAME, REPORT_NAME, read_manifest
from edgepack.bundle.provenance import PROVENANCE_NAME, verify_provenance
from edgepack.bundle.sigcheck import Trust, as_trust, check_trust, match_layers, signed_digests, verify_bundle
from edgepack.errors import BadInputError, EdgepackError, VerificationError
from edgepack.progress_hooks import report
from edgepack.registry.http import MAX_MANIFEST, OCI_INDEX, TransientError
from edgepack.registry.index import A_TARGET, A_TITLE, ARTIFACT_TYPE, SIG_REL, SIGNATURE_TYPE, list_referrers, target_groups
from edgepack.registry.limits import ATTEMPTS
from edgepack.registry.refs import Ref, check_identity
from edgepack.registry.select import choose_target


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except ValueError as e:
        raise VerificationError(f"{what} is not JSON") from e


def manifest_at(store, digest: str, what: str) -> dict:
    data, _, _ = store.get_manifest(digest)  # bytes already checked against the digest
    doc = _json(data, what)
    if not isinstance(doc, dict):
        raise VerificationError(f"{what} is not a JSON object")
    return doc


def small_blob(store, desc: dict, what: str) -> bytes:
    """A config, report or signature blob, read under its declared size (at most 4 MiB) and checked."""
    declared = desc.get("size")
    size = declared if isinstance(declared, int) and declared >= 0 else MAX_MANIFEST
    if size > MAX_MANIFEST:
        raise VerificationError(f"blob {desc.get('digest')} declares {size} bytes, over the {MAX_MANIFEST}-byte bound", where=what)
    data = store.read_blob(desc["digest"], limit=size)
    if "sha256:" + hashlib.sha256(data).hexdigest() != desc["digest"] or len(data) != desc.get("size", len(data)):
        raise VerificationError(f"blob {desc['digest']} does not match its digest (registry corrupted)",
                                hint="republish the bundle; do not use this artifact", where=what)
    return data


class Artifact:
    """A resolved bundle in a store: the top object, its signature, signed config and report."""

    def __init__(self, store, reference: str, trust: Trust):
        self.store, self.reference, self.trust = store, reference, trust
        self._manifests: dict[str, dict] = {}
        self.where = f"{store.name}:{reference}" if ":" not in reference else f"{store.name}@{reference}"
        data, media_type, self.digest = store.get_manifest(reference)
        self.doc = _json(data, f"{self.where} manifest")
        is_index = media_type == OCI_INDEX or (isinstance(self.doc, dict) and self.doc.get("mediaType") == OCI_INDEX)
        if not isinstance(self.doc, dict) or self.doc.get("artifactType") != ARTIFACT_TYPE:
            raise BadInputError(f"{self.where} is not an edgepack bundle (artifactType {self.doc.get('artifactType') if isinstance(self.doc, dict) else None!r})")
        self.kind = "index" if is_index else "single"
        self.fingerprint = check_trust(trust)
        self.signed = self._verify_signature()
        self.config_desc = self._config_desc()
        self.config = _json(small_blob(store, self.config_desc, MANIFEST_NAME), MANIFEST_NAME)
        self.groups = target_groups(self.config)

    # --------------------------------------------------------- signature

    def _signature_candidates(self) -> list[bytes]:
        sigs = []
        if self.kind == "single":
            for layer in self.doc.get("layers") or []:
                if (layer.get("annotations") or {}).get(A_TITLE) == SIG_REL:
                    sigs.append(small_blob(self.store, layer, SIG_REL))
        for ref in list_referrers(self.store, self.digest):
            if ref.get("artifactType") != SIGNATURE_TYPE:
                continue
            doc = manifest_at(self.store, ref["digest"], f"signature referrer {ref['digest']}")
            if (doc.get("subject") or {}).get("digest") != self.digest:
                continue
            for layer in doc.get("layers") or []:
                if layer.get("mediaType") == SIGNATURE_TYPE:
                    sigs.append(small_blob(self.store, layer, SIG_REL))
        return sigs

    def _verify_signature(self) -> dict[str, str]:
        sigs = self._signature_candidates()
        if not sigs:
            raise VerificationError(f"no signature found (no {SIGNATURE_TYPE} referrer of {self.digest})",
                                    hint="publish a bundle signed by `edgepack build` / `edgepack sign`", where=self.where)
        errors = []
        for sig in sigs:  # a re-signed artifact may carry several; one valid for this trust is enough
            try:
                signed = signed_digests(sig, self.trust)
                self.signature = sig
                return signed
            except VerificationError as e:
                errors.append(e)
        raise VerificationError(errors[0].text(), hint=errors[0].hint, where=self.where) from errors[0]

    # --------------------------------------------------------- config, targets, layers

    def _config_desc(self) -> dict:
        if self.kind == "single":
            desc = self.doc.get("config")
        else:
            entries = self.doc.get("manifests") or []
            if not entries:
                raise VerificationError("the image index lists no manifests", where=self.where)
            desc = self.manifest(entries[0]).get("config")
        if not isinstance(desc, dict) or desc.get("digest") != "sha256:" + self.signed.get(MANIFEST_NAME, ""):
            raise VerificationError(f"{MANIFEST_NAME} (config) does not match the signed digest",
                                    hint="the registry artifact was modified after signing; republish the signed bundle", where=self.where)
        return desc

    def manifest(self, entry: dict) -> dict:
        d = entry.get("digest")
        if not isinstance(d, str):
            raise VerificationError("a manifest entry of the image index has no digest", where=self.where)
        if d not in self._manifests:
            doc = manifest_at(self.store, d, f"{self.where} manifest {d}")
            if not isinstance(doc.get("layers"), list) or not isinstance(doc.get("config"), dict):
                raise VerificationError(f"manifest {d} has no config or layers", where=self.where)
            self._manifests[d] = doc
        return self._manifests[d]

    def expected_files(self, tids: list[str] | None) -> set[str]:
        """Bundle files a pull of these targets (None = all) must hold, from the signed config."""
        every = {f["path"] for f in self.config.get("files", [])}
        grouped = {f for fs in self.groups.values() for f in fs}
        if tids is None:
            return every
        return (every - grouped) | {f for t in tids for f in self.groups[t]}

    def layers_for(self, tids: list[str] | None) -> dict[str, dict]:
        """{title: layer descriptor} for the targets, checked against the signed file list and digests."""
        want = self.expected_files(tids)
        found: dict[str, dict] = {}
        if self.kind == "single":
            docs = [self.doc]
        else:
            entries = self.doc.get("manifests") or []
            by_tid = {(e.get("annotations") or {}).get(A_TARGET): e for e in entries}
            pick = entries if tids is None else [by_tid.get(t) for t in tids]
            for t, e in zip(tids or [], pick):
                if e is None:
                    raise VerificationError(f"the image index has no manifest for target {t!r}", where=self.where)
            docs = [self.manifest(e) for e in pick if e is not None]  # a missing one was refused above
        for doc in docs:
            if doc.get("config", {}).get("digest") != self.config_desc["digest"]:
                raise VerificationError(f"manifests disagree on {MANIFEST_NAME}", where=self.where)
            for layer in doc["layers"]:
                title = (layer.get("annotations") or {}).get(A_TITLE)
                if title == SIG_REL:
                    continue
                try:
                    rel = safe_relpath(title).as_posix()
                except ValueError as e:
                    raise VerificationError(f"layer {layer.get('digest')} has an unsafe title {title!r}", where=self.where) from e
                if rel in want:
                    if rel in found and found[rel]["digest"] != layer.get("digest"):
                        raise VerificationError(f"{rel} appears with two different digests", where=self.where)
                    found[rel] = layer
                elif self.kind == "index":
                    raise VerificationError(f"{rel} does not belong to the targets {tids or 'all'}", where=self.where)
        match_layers(self.signed, {r: str(layer.get("digest")) for r, layer in found.items()}, self.where, full=False)
        missing = sorted(want - set(found))
        if missing:
            raise VerificationError(f"signed files missing from the artifact: {', '.join(missing[:4])}", where=self.where)
        if tids is None:
            match_layers(self.signed, {**{r: str(layer["digest"]) for r, layer in found.items()},
                                       MANIFEST_NAME: self.config_desc["digest"]}, self.where, full=True)
        return found

    def report(self) -> dict:
        """The signed report.json (validation results), or {} when the bundle has none."""
        if REPORT_NAME not in self.signed:
            return {}
        doc = self.doc if self.kind == "single" else self.manifest((self.doc.get("manifests") or [{}])[0])
        for layer in doc.get("layers") or []:
            if (layer.get("annotations") or {}).get(A_TITLE) == REPORT_NAME:
                match_layers(self.signed, {REPORT_NAME: str(layer.get("digest"))}, self.where, full=False)
                return _json(small_blob(self.store, layer, REPORT_NAME), REPORT_NAME)
        return {}

    def pick(self, device=None, target: str | None = None) -> tuple[list[str] | None, dict]:
        if target:
            if target not in self.groups:
                raise BadInputError(f"no target {target!r}; targets: {', '.join(sorted(self.groups)) or 'none'}", where=self.where)
            return [target], {"target": target}
        if device is not None:
            tid, why = choose_target(self.config, self.report(), device, self.where)
            return [tid], why
        return None, {}


def download(art: Artifact, layers: dict[str, dict], out_dir: Path, check=None, force: bool = False) -> int:
    """Stream every layer into a temp folder beside ``out_dir``, re-hashing; ``check(tmp)``; rename into place."""
    out_dir = Path(out_dir)
    total = 0
    with staged_dir(out_dir, "the pulled bundle") as tmp:
        (tmp / MANIFEST_NAME).write_bytes(small_blob(art.store, art.config_desc, MANIFEST_NAME))
        for rel, layer in sorted(layers.items()):
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(dest, "wb") as f:
                total += stream_blob(art.store, layer, f, rel)
        (tmp / SIG_REL).parent.mkdir(parents=True, exist_ok=True)
        (tmp / SIG_REL).write_bytes(art.signature)
        if check is not None:
            check(tmp)
        replace_dir(tmp, out_dir, "the pulled bundle", force=force)
    return total


def check_out_dir(out_dir: Path, force: bool = False) -> None:
    """Refuse a non-empty ``out_dir`` that edgepack did not write: one without ``edgepack.json``,
    or holding files that its ``edgepack.json`` does not list (a user's files next to a bundle),
    unless ``force``. Checked before anything is fetched; ``replace_dir`` swaps the folder."""
    out_dir = Path(out_dir)
    if force or out_dir.is_symlink() or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return  # new, empty, or not a folder (replace_dir names that problem)
    hint = "choose an empty or new output folder, or pass --force to replace it with the pulled bundle"
    try:
        listed = {f["path"] for f in read_manifest(out_dir)["files"]} | {MANIFEST_NAME, SIG_REL}
    except EdgepackError as e:
        raise BadInputError(f"-o {out_dir} is not empty and holds no bundle written by edgepack; refusing to replace it",
                            hint=hint) from e
    foreign = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*")
                     if (p.is_symlink() or not p.is_dir()) and p.relative_to(out_dir).as_posix() not in listed)
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise BadInputError(f"-o {out_dir} holds {foreign[0]}{more}, not part of the bundle there; refusing to replace it",
                            hint=hint)


def stream_blob(store, desc: dict, out, what: str) -> int:
    """Stream a blob into the open file ``out``, re-hashing, cut off past its declared size; a
    transfer that breaks (reset, stall) starts again, up to the store's retry budget."""
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise VerificationError(f"the descriptor of blob {digest} declares no size", where=what)
    for attempt in range(1, ATTEMPTS + 1):
        out.seek(0)
        out.truncate()
        h, n = hashlib.sha256(), 0
        try:
            with store.open_blob(digest, size) as chunks:
                for block in chunks:
                    n += len(block)
                    if n > size:
                        raise VerificationError(f"blob {digest} is larger than its declared {size} bytes",
                                                hint="the registry is corrupted or hostile; nothing was kept", where=what)
                    h.update(block)
                    out.write(block)
                    report(f"download {str(digest)[7:19]}", n, size, unit="bytes")
        except TransientError:
            if attempt == ATTEMPTS:
                raise
            store._backoff(attempt, None, f"blob {digest}")
            continue
        break
    if "sha256:" + h.hexdigest() != digest or n != size:
        raise VerificationError(f"blob {digest} does not match its digest or size (registry corrupted)",
                                hint="republish the bundle; nothing was written", where=what)
    return n


def reference_of(ref: Ref) -> str:
    if ref.reference is None:  # parse_ref requires a tag or digest for pull and verify
        raise BadInputError("give a tag or digest (REPO:TAG or REPO@sha256:...)", where=ref)
    return ref.reference


def pull(store, ref: Ref, out_dir: Path, key, device=None, target: str | None = None, force: bool = False) -> dict:
    trust = as_trust(key)
    check_out_dir(out_dir, force)
    art = Artifact(store, reference_of(ref), trust)
    check_identity(ref, art.config.get("name"), art.config.get("version"), art.where)
    tids, why = art.pick(device, target)
    layers = art.layers_for(tids)
    checked = {"provenance": "absent (bundle built without provenance)"}

    def check(tmp: Path) -> None:
        if trust.public_key is None:
            if PROVENANCE_NAME in layers:
                checked["provenance"] = "covered by the bundle signature (certificate trust: statement key not checked)"
            return
        if tids is None:  # whole bundle: model-signing's own folder check as well
            verify_bundle(tmp, trust.public_key)
        if PROVENANCE_NAME in layers:
            verify_provenance(tmp, trust.public_key, allow_missing=tids is not None)
            checked["provenance"] = "verified"

    nbytes = download(art, layers, out_dir, check, force=force)
    return {"bundle": str(out_dir), "ref": art.where, "digest": art.digest, "files_checked": len(layers) + 1,
            "bytes": nbytes, "targets": tids or sorted(art.groups), "partial": tids is not None,
            "selection": why, "signer_fingerprint": art.fingerprint, "name": art.config.get("name"),
            "version": art.config.get("version"), **checked}


def verify(store, ref: Ref, key) -> dict:
    """Check signature, name/version and every layer digest against it, downloading only the signature and config."""
    art = Artifact(store, reference_of(ref), as_trust(key))
    check_identity(ref, art.config.get("name"), art.config.get("version"), art.where)
    layers = art.layers_for(None)
    return {"ref": art.where, "digest": art.digest, "kind": art.kind, "targets": sorted(art.groups),
            "layers_checked": len(layers) + 1, "signer_fingerprint": art.fingerprint,
            "name": art.config.get("name"), "version": art.config.get("version")}

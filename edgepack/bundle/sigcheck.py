"""Every signature check of edgepack, for bundle folders and registry artifacts alike.

- ``verify_bundle(DIR, key | cert_chain)``: a bundle folder (``edgepack verify DIR``, pulls).
- ``signed_digests(sig, trust)``: the signature bytes alone. A registry artifact is checked before
  anything is downloaded (``edgepack verify REF``) and a per-target pull holds only part of the
  bundle, so the signature is checked first (the DSSE envelope against the EC public key, or the
  signing certificate against a CA chain, both by model-signing's own verifiers) and the signed
  ``{path: sha256}`` list it returns is then compared with the layer digests (``match_layers``),
  which are the raw files' sha256 (layers are stored uncompressed).
- ``check_publishable(DIR, trust)``: what ``publish`` and ``copy`` run before the first byte is
  uploaded: file digests, ``signatures/`` holding exactly one regular ``model.sig``, and the
  signature (with ``trust``), or at least its signed file list (without: the build verified it).

Bundle and registry code both import this module; it imports neither.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.artifact import sha256_file
from edgepack.bundle import ecsig
from edgepack.bundle.keys import fingerprint, load_public_key
from edgepack.bundle.manifest import MANIFEST_NAME, SIGNATURES_DIR, check_files, list_files, read_manifest
from edgepack.bundle.mslite import ms
from edgepack.errors import BadInputError, VerificationError

SIGNATURE_NAME = "model.sig"
SIG_REL = f"{SIGNATURES_DIR}/{SIGNATURE_NAME}"


def hashing_config(known: dict[str, str] | None = None):
    """model-signing's file hashing as edgepack signs: sha256 per file, no symlinks, all but signatures/.

    ``known``: ``{relative path: sha256 hex}`` already checked against the files on disk (the bundle's
    manifest right after ``check_files``, or the list ``write_bundle`` just computed): those files are
    not read again, their digests go into model-signing's manifest as they are (hash once)."""
    hashing = ms("hashing")
    cfg = (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURES_DIR], ignore_git_paths=False)
    )
    if known:
        ser = cfg._serializer  # model-signing 1.1.1: _serialization.file.Serializer
        compute = ser._compute_hash
        manifest, digest = ms("manifest"), ms("_hashing.hashing").Digest

        def known_or_hashed(model_path: Path, path: Path):
            rel = path.relative_to(model_path)
            hexd = known.get(rel.as_posix())
            if hexd is None:
                return compute(model_path, path)
            return manifest.FileManifestItem(path=rel, digest=digest("sha256", bytes.fromhex(hexd)))

        ser._compute_hash = known_or_hashed
    return cfg


def manifest_digests(manifest: dict) -> dict[str, str]:
    return {f["path"]: f["sha256"] for f in manifest["files"]}


@dataclass(frozen=True)
class Trust:
    """What a signature must chain to: an EC public key, or CA certificates (company PKI)."""

    public_key: Path | None = None
    cert_chain: tuple[Path, ...] = ()

    def describe(self) -> str:
        if self.public_key is not None:
            return f"public key {self.public_key}"
        return "certificate chain " + ", ".join(str(p) for p in self.cert_chain)


def as_trust(key) -> Trust:
    if isinstance(key, Trust):
        return key
    if key is None:
        raise BadInputError("no public key or certificate chain given", hint="pass --key PUBLIC.pem or --cert-chain CA.pem")
    return Trust(public_key=Path(key).expanduser())


def check_trust(trust: Trust) -> str:
    """Fail fast on an unusable key or chain; return the signer fingerprint (key) or ''."""
    if trust.public_key is not None:
        return fingerprint(load_public_key(trust.public_key))
    if not trust.cert_chain:
        raise BadInputError("empty certificate chain", hint="pass --cert-chain with your CA certificate (PEM)")
    from cryptography import x509

    for p in trust.cert_chain:
        try:
            x509.load_pem_x509_certificates(Path(p).expanduser().read_bytes())
        except FileNotFoundError as e:
            raise BadInputError(f"certificate chain file {p} not found") from e
        except (OSError, ValueError) as e:
            raise BadInputError(f"certificate chain file {p} is not PEM certificates: {e}") from e
    return ""


def signed_digests(sig: bytes, trust: Trust) -> dict[str, str]:
    """Verify the signature bytes; return the signed ``{relative path: sha256 hex}``.

    Raises VerificationError for a corrupt, invalid or foreign signature.
    """
    from cryptography.exceptions import InvalidSignature

    try:
        doc = json.loads(sig)
    except ValueError as e:
        raise VerificationError("corrupt signature (not JSON)", where=SIG_REL) from e
    if trust.public_key is not None:
        hint = ((doc.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") if isinstance(doc, dict) else None
        pem = _pem(trust.public_key)
        if hint and hint != hashlib.sha256(pem).hexdigest():
            raise VerificationError(f"signed by a different key than {trust.public_key}",
                                    hint="pass the public key of the key that signed this bundle", where=SIG_REL)
        verifier: ecsig.Verifier | _Upstream = ecsig.Verifier(Path(trust.public_key))
    else:
        verifier = _Upstream(ms("_signing.sign_certificate").Verifier([Path(c) for c in trust.cert_chain], log_fingerprints=False))
    with tempfile.TemporaryDirectory(prefix="edgepack-sig-") as d:
        path = Path(d) / "model.sig"
        path.write_bytes(sig)
        try:
            manifest = verifier.verify_file(path)
        except InvalidSignature as e:
            raise VerificationError(f"signature is invalid for {trust.describe()}", where=SIG_REL) from e
        except Exception as e:  # malformed bundle, untrusted certificate (OpenSSL store errors), ...
            msg = " ".join(str(e).split())[:300]
            raise VerificationError(f"not verified with {trust.describe()}: {type(e).__name__}: {msg}", where=SIG_REL) from e
    out = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise VerificationError(f"{rd.identifier} is signed with {rd.digest.algorithm}, expected sha256", where=SIG_REL)
        out[str(rd.identifier)] = rd.digest.digest_hex
    return out


def _pem(path: Path) -> bytes:
    """The key as model-signing hashes it for its hint: PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    return load_public_key(path).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def match_layers(signed: dict[str, str], files: dict[str, str], where: str, full: bool) -> None:
    """Compare ``{title: sha256:hex}`` from a manifest with the signed digests.

    Every file must be signed with the same digest; with ``full`` every signed file must be
    present too (a whole-bundle pull). Raises VerificationError naming the first problems.
    """
    problems = []
    for rel, digest in sorted(files.items()):
        if rel not in signed:
            problems.append(f"{rel}: not covered by the signature")
        elif digest != "sha256:" + signed[rel]:
            problems.append(f"{rel}: registry digest {digest[:19]}... differs from the signed digest")
    if full:
        problems += [f"{rel}: signed but missing from the artifact" for rel in sorted(set(signed) - set(files))]
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise VerificationError(f"{where}: " + "; ".join(problems[:4]) + more,
                                hint="the registry artifact was modified after signing; republish the signed bundle")


def verify_bundle(bundle_dir: Path, public_key: Path | None = None, cert_chain=()) -> dict:
    """Check the file list, then the signature: against an EC public key, or (``cert_chain``: CA
    certificates, PEM) against the signing certificate the signature carries. Return a summary
    dict; raise VerificationError."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BadInputError(f"bundle {bundle_dir} is not a folder")
    if public_key is None and not cert_chain:
        raise BadInputError(f"bundle {bundle_dir}: give a public key or a certificate chain to verify it against")
    key = load_public_key(public_key) if public_key is not None and not cert_chain else None
    n = check_files(bundle_dir)
    manifest = read_manifest(bundle_dir)
    sig_path = signature_file(bundle_dir)
    if cert_chain:
        _verify_with_chain(bundle_dir, sig_path, tuple(cert_chain))
    else:  # the files were just checked against the manifest: their digests are not computed twice
        assert public_key is not None  # refused above without a cert chain
        _verify_signature(bundle_dir, sig_path, Path(public_key).expanduser(), manifest_digests(manifest))
    return {
        "bundle": str(bundle_dir),
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "files_checked": n,
        "signer_fingerprint": fingerprint(key) if key is not None else "certificate",
        "signature": SIG_REL,
    }


def signature_file(bundle_dir: Path, error=VerificationError) -> Path:
    """``signatures/model.sig``: a regular file (no symlink), alone in ``signatures/``."""
    sig_dir = Path(bundle_dir) / SIGNATURES_DIR
    sig_path = sig_dir / SIGNATURE_NAME
    if sig_path.is_symlink() or (sig_path.exists() and not sig_path.is_file()):
        raise error(f"{SIG_REL}: not a regular file (symlinks are not allowed)", hint="re-sign the bundle with `edgepack sign`")
    if sig_dir.is_symlink() or not sig_path.is_file():
        raise error(f"{SIG_REL}: missing; the bundle is not signed", hint="sign it with `edgepack sign`")
    extra = sorted(p.name for p in sig_dir.iterdir() if p.name != SIGNATURE_NAME)
    if extra:
        raise error(f"{SIGNATURES_DIR}/{extra[0]}: unexpected file in {SIGNATURES_DIR}/",
                    hint=f"{SIGNATURES_DIR}/ may hold only {SIGNATURE_NAME}; remove it or rebuild the bundle")
    return sig_path


def check_publishable(bundle_dir: Path, trust: "Trust | None" = None) -> dict:
    """Everything ``publish`` checks before the first byte leaves: the files against
    ``edgepack.json``, the ``signatures/`` folder, and the signature. With ``trust`` the signature
    is verified (key or certificate chain); without it (a build that has just verified its own
    signature) its signed file list must at least parse and match the files. Returns the manifest;
    raises BadInputError (exit 2): the bundle is what is wrong, nothing was uploaded."""
    bundle_dir = Path(bundle_dir)
    if trust is not None:
        check_trust(trust)  # a missing or bad key file is the user's input (exit 2), before anything else
    manifest = read_manifest(bundle_dir)
    where = f"bundle {bundle_dir}"
    if not (bundle_dir / SIG_REL).exists() and not (bundle_dir / SIG_REL).is_symlink():
        raise BadInputError(f"{where} is not signed", hint="run `edgepack sign` (or build) before publishing")
    try:
        check_files(bundle_dir, manifest)
        sig_path = signature_file(bundle_dir)
        if trust is not None:
            if trust.public_key is not None:
                _verify_signature(bundle_dir, sig_path, trust.public_key)
            else:
                _verify_with_chain(bundle_dir, sig_path, trust.cert_chain)
        else:
            signed = _payload_digests(sig_path.read_bytes())
            if signed is None:
                raise VerificationError("corrupt signature file (no signed file list)", where=SIG_REL)
            detail = _diff(signed, _actual_digests(bundle_dir))
            if detail:
                raise VerificationError(f"bundle contents do not match {SIG_REL}: {detail}")
    except VerificationError as e:
        raise VerificationError(f"{e.text()}; nothing was published",
                                hint=e.hint or "rebuild or re-sign the bundle with `edgepack sign`", where=where) from e
    return manifest


def _verify_signature(bundle_dir: Path, sig_path: Path, public_key: Path, known: dict[str, str] | None = None) -> None:
    from cryptography.exceptions import InvalidSignature

    rel = SIG_REL
    try:
        _upstream_verify(ecsig.Verifier(Path(public_key)), bundle_dir, sig_path, known)
    except InvalidSignature as e:
        raise VerificationError(f"signature is invalid for public key {public_key}", where=rel) from e
    except ValueError as e:
        msg = " ".join(str(e).split())
        if isinstance(e, json.JSONDecodeError):
            raise VerificationError("corrupt signature file (not JSON)", where=rel) from e
        if msg.startswith("Key mismatch"):
            raise VerificationError(f"signed by a different key than {public_key}", where=rel) from e
        if msg.startswith("Signature mismatch"):
            detail = _signed_diff(bundle_dir, sig_path) or msg[:300]
            raise VerificationError(f"bundle contents do not match {rel}: {detail}") from e
        raise VerificationError(f"{msg}", where=rel) from e
    except Exception as e:  # malformed Sigstore bundle: KeyError, TypeError, pydantic errors ...
        raise VerificationError(f"corrupt signature file ({type(e).__name__}: {e})", where=rel) from e


class _Upstream:
    """A model-signing 1.1.1 verifier (certificates) with ecsig.Verifier's ``verify_file``."""

    def __init__(self, verifier):
        self.verifier = verifier

    def verify_file(self, path: Path):
        return self.verifier.verify(ms("_signing.sign_sigstore_pb").Signature.read(Path(path)))


def _upstream_verify(verifier, bundle_dir: Path, sig_path: Path, known: dict[str, str] | None = None) -> None:
    """model_signing.verifying.Config.verify (1.1.1) for a non-Sigstore verifier, without importing
    ``verifying`` (it imports the Sigstore verifier, sigstore and TUF: edgepack/bundle/mslite.py);
    ``verifier``: edgepack/bundle/ecsig.py's (EC keys, no sigstore_models) or an _Upstream one."""
    expected = verifier.verify_file(Path(sig_path))
    cfg = hashing_config(known)
    if "ignore_paths" in expected.serialization_type:
        cfg.add_ignored_paths(model_path=bundle_dir, paths=expected.serialization_type["ignore_paths"])
    if cfg.hash(bundle_dir) != expected:
        raise ValueError("Signature mismatch")


def _verify_with_chain(bundle_dir: Path, sig_path: Path, cert_chain: tuple) -> None:
    """Certificate trust: the signature must chain to ``cert_chain``; then every file must match it."""
    trust = Trust(cert_chain=cert_chain)
    check_trust(trust)
    signed = signed_digests(sig_path.read_bytes(), trust)
    detail = _diff(signed, _actual_digests(bundle_dir))
    if detail:
        raise VerificationError(f"bundle contents do not match {SIG_REL}: {detail}")


def _diff(signed: dict[str, str], actual: dict[str, str]) -> str | None:
    parts = []
    for rel in sorted(set(signed) | set(actual)):
        if rel not in actual:
            parts.append(f"{rel}: signed but missing")
        elif rel not in signed:
            parts.append(f"{rel}: not covered by the signature")
        elif signed[rel] != actual[rel]:
            parts.append(f"{rel}: content differs from the signed content")
    return "; ".join(parts) or None


def _actual_digests(bundle_dir: Path) -> dict[str, str]:
    actual = {f["path"]: f["sha256"] for f in list_files(bundle_dir)}
    if (bundle_dir / MANIFEST_NAME).is_file():
        actual[MANIFEST_NAME] = sha256_file(bundle_dir / MANIFEST_NAME)
    return actual


def _payload_digests(sig: bytes) -> dict[str, str] | None:
    """The ``{path: sha256}`` list in a signature's DSSE payload, NOT verified; None if unreadable."""
    try:
        env = json.loads(sig)["dsseEnvelope"]
        pred = json.loads(base64.b64decode(env["payload"]))["predicate"]
        if pred["serialization"]["method"] != "files" or pred["serialization"]["hash_type"] != "sha256":
            return None
        return {str(r["name"]): str(r["digest"]) for r in pred["resources"]}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _signed_diff(bundle_dir: Path, sig_path: Path) -> str | None:
    """'path: what' for each file differing from the signed payload, or None if unknown.

    Only called after model-signing accepted the signature itself, so the payload is authentic;
    its own message is a repr'd Python list of digests, too noisy for one line.
    """
    try:
        signed = _payload_digests(sig_path.read_bytes())
    except OSError:
        return None
    return None if signed is None else _diff(signed, _actual_digests(bundle_dir))

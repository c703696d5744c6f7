"""Keys, signing and verification of bundles with OpenSSF model-signing (EC keys).

Signature scope: model-signing hashes every file of the bundle directory except the
``signatures/`` folder (git paths included: we turn off model-signing's default of ignoring
``.git*``), so ``edgepack.json`` and ``report.json`` are signed too. ``signatures/`` holds
only ``model.sig`` (a Sigstore bundle with a DSSE envelope). The public key is deliberately
NOT shipped in the bundle: a key that travels with the thing it vouches for proves nothing,
and anything unsigned in the bundle would be a place to hide content. Verifiers get the
public key out of band (``--public-key``); the summary reports its sha256 fingerprint.

Verification is two steps: first ``edgepack.json``'s file list against the disk (names the
exact file), then the signature over the whole tree (catches a rewritten edgepack.json).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgepack.bundle.fsutil import atomic_write_bytes
from edgepack.artifact import sha256_file
from edgepack.bundle.manifest import MANIFEST_NAME, SIGNATURES_DIR, check_files, list_files, read_manifest
from edgepack.errors import BadInputError, VerificationError

SIGNATURE_NAME = "model.sig"
CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}
_SUPPORTED = {c.name for c in CURVES.values()}  # secp256r1, secp384r1, secp521r1
_KEYGEN_HINT = "create a key pair with `edgepack keygen`"


def keygen(
    private_path: Path, public_path: Path | None = None, curve: str = "P-256", overwrite: bool = False
) -> tuple[Path, Path]:
    """Create an EC key pair as PEM files (private key mode 0600); return both paths."""
    private_path = Path(private_path).expanduser()
    public_path = Path(public_path).expanduser() if public_path else default_public_path(private_path)
    if curve not in CURVES:
        raise BadInputError(f"unsupported curve {curve!r}", hint=f"use one of {', '.join(CURVES)}")
    if private_path.resolve() == public_path.resolve():
        raise BadInputError(f"the private and public key paths are the same: {private_path}")
    if not overwrite:
        for p in (private_path, public_path):
            if p.exists():
                raise BadInputError(f"{p} already exists; refusing to overwrite a key", hint="pass --force or pick another path")
    key = ec.generate_private_key(CURVES[curve]())
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path, data, mode in ((private_path, priv, 0o600), (public_path, pub, 0o644)):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data, mode=mode)
        except OSError as e:
            raise BadInputError(f"cannot write key file {path}: {e.strerror or e}") from e
    return private_path, public_path


def default_public_path(private_path: Path) -> Path:
    """``keys/dev.pem`` -> ``keys/dev.pub.pem``."""
    private_path = Path(private_path)
    return private_path.with_name(f"{private_path.stem}.pub.pem")


def _read_pem(path: Path, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except FileNotFoundError as e:
        raise BadInputError(f"{what} {path} not found", hint=_KEYGEN_HINT) from e
    except OSError as e:
        raise BadInputError(f"cannot read {what} {path}: {e.strerror or e}", hint=_KEYGEN_HINT) from e


def _check_ec(key, path: Path, what: str) -> None:
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "").replace("PublicKey", "")
        raise BadInputError(
            f"{what} {path} is a {kind} key; model-signing signs only with EC P-256, P-384 or P-521 keys",
            hint=_KEYGEN_HINT,
        )
    if key.curve.name not in _SUPPORTED:
        raise BadInputError(
            f"{what} {path} uses curve {key.curve.name}; model-signing needs P-256, P-384 or P-521",
            hint=_KEYGEN_HINT,
        )


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC private key; BadInputError naming the file otherwise."""
    data = _read_pem(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:  # encrypted key, no password given
        raise BadInputError(f"private key {path} is encrypted; edgepack needs an unencrypted PEM key", hint=_KEYGEN_HINT) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        extra = " (this is a public key)" if b"PUBLIC KEY" in data else ""
        raise BadInputError(f"private key {path} is not a PEM private key{extra}", hint=_KEYGEN_HINT) from e
    _check_ec(key, path, "private key")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a PEM EC public key; BadInputError naming the file otherwise."""
    data = _read_pem(path, "public key")
    if b"PRIVATE KEY" in data:
        raise BadInputError(f"public key {path} holds a private key", hint="pass the .pub.pem file made by `edgepack keygen`")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise BadInputError(f"public key {path} is not a PEM public key", hint=_KEYGEN_HINT) from e
    _check_ec(key, path, "public key")
    return key


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """``sha256:<hex>`` of the public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _hashing_config():
    from model_signing import hashing

    return (
        hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURES_DIR], ignore_git_paths=False)
    )


def sign_bundle(bundle_dir: Path, private_key: Path, certificate: Path | None = None, certificate_chain=()) -> Path:
    """Sign the whole bundle (all but ``signatures/``); write ``signatures/model.sig`` atomically.

    With ``certificate`` (the key's X.509 signing certificate, PEM) and ``certificate_chain``
    (intermediate/CA certificates), the signature carries the certificate for company-PKI trust
    (``verify --cert-chain CA.pem``) instead of a bare public-key hint."""
    from model_signing import signing

    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    load_private_key(private_key)  # clear errors before model-signing sees the file
    check_files(bundle_dir, manifest)  # never sign a bundle that does not match its manifest
    sig_dir = bundle_dir / SIGNATURES_DIR
    sig_path = sig_dir / SIGNATURE_NAME
    tmp = sig_dir / f".{SIGNATURE_NAME}.{os.getpid()}.tmp"
    try:
        sig_dir.mkdir(exist_ok=True)
        for stale in sig_dir.glob(f".{SIGNATURE_NAME}.*.tmp"):  # left by a killed earlier run
            stale.unlink()
        foreign = sorted(p.name for p in sig_dir.iterdir() if p.name != SIGNATURE_NAME)
        if foreign:
            raise BadInputError(f"{sig_dir / foreign[0]}: unexpected file; {SIGNATURES_DIR}/ may hold only {SIGNATURE_NAME}")
        if certificate is not None:
            cert = Path(certificate).expanduser()
            chain = [Path(c).expanduser() for c in certificate_chain]
            for c in [cert, *chain]:
                if not c.is_file():
                    raise BadInputError(f"certificate {c} not found", hint="check package.certificate / package.certificate_chain")
            cfg = signing.Config().use_certificate_signer(
                private_key=Path(private_key).expanduser(), signing_certificate=cert, certificate_chain=chain
            )
        else:
            cfg = signing.Config().use_elliptic_key_signer(private_key=Path(private_key).expanduser())
        cfg.set_hashing_config(_hashing_config()).sign(bundle_dir, tmp)
        atomic_write_bytes(sig_path, tmp.read_bytes())
    except OSError as e:
        raise BadInputError(f"cannot write {sig_path}: {e.strerror or e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return sig_path


def verify_bundle(bundle_dir: Path, public_key: Path | None = None, cert_chain=()) -> dict:
    """Check the file list, then the signature: against an EC public key, or (``cert_chain``: CA
    certificates, PEM) against the signing certificate the signature carries. Return a summary
    dict; raise VerificationError."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BadInputError(f"bundle {bundle_dir} is not a folder")
    key = load_public_key(public_key) if not cert_chain else None
    n = check_files(bundle_dir)
    sig_dir = bundle_dir / SIGNATURES_DIR
    sig_path = sig_dir / SIGNATURE_NAME
    if not sig_path.is_file() or sig_path.is_symlink():
        raise VerificationError(
            f"{SIGNATURES_DIR}/{SIGNATURE_NAME}: missing; the bundle is not signed",
            hint="sign it with `edgepack sign`",
        )
    extra = sorted(p.name for p in sig_dir.iterdir() if p.name != SIGNATURE_NAME)
    if extra:
        raise VerificationError(f"{SIGNATURES_DIR}/{extra[0]}: unexpected file in {SIGNATURES_DIR}/")
    if cert_chain:
        _verify_with_chain(bundle_dir, sig_path, tuple(cert_chain))
    else:
        _verify_signature(bundle_dir, sig_path, Path(public_key).expanduser())
    manifest = read_manifest(bundle_dir)
    return {
        "bundle": str(bundle_dir),
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "files_checked": n,
        "signer_fingerprint": fingerprint(key) if key is not None else "certificate",
        "signature": f"{SIGNATURES_DIR}/{SIGNATURE_NAME}",
    }


def _verify_signature(bundle_dir: Path, sig_path: Path, public_key: Path) -> None:
    from cryptography.exceptions import InvalidSignature
    from model_signing import verifying

    cfg = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    cfg.set_hashing_config(_hashing_config())
    rel = f"{SIGNATURES_DIR}/{SIGNATURE_NAME}"
    try:
        cfg.verify(bundle_dir, sig_path)
    except InvalidSignature as e:
        raise VerificationError(f"{rel}: signature is invalid for public key {public_key}") from e
    except ValueError as e:
        msg = " ".join(str(e).split())
        if isinstance(e, json.JSONDecodeError):
            raise VerificationError(f"{rel}: corrupt signature file (not JSON)") from e
        if msg.startswith("Key mismatch"):
            raise VerificationError(f"{rel}: signed by a different key than {public_key}") from e
        if msg.startswith("Signature mismatch"):
            detail = _signed_diff(bundle_dir, sig_path) or msg[:300]
            raise VerificationError(f"bundle contents do not match {rel}: {detail}") from e
        raise VerificationError(f"{rel}: {msg}") from e
    except Exception as e:  # malformed Sigstore bundle: KeyError, TypeError, pydantic errors ...
        raise VerificationError(f"{rel}: corrupt signature file ({type(e).__name__}: {e})") from e



def _verify_with_chain(bundle_dir: Path, sig_path: Path, cert_chain: tuple) -> None:
    """Certificate trust: the signature must chain to ``cert_chain``; then every file must match it."""
    from ..registry.sigcheck import Trust, check_trust, signed_digests

    trust = Trust(cert_chain=cert_chain)
    check_trust(trust)
    signed = signed_digests(sig_path.read_bytes(), trust)
    actual = {f["path"]: f["sha256"] for f in list_files(bundle_dir)}
    actual[MANIFEST_NAME] = sha256_file(bundle_dir / MANIFEST_NAME)
    detail = _diff(signed, actual)
    if detail:
        raise VerificationError(f"bundle contents do not match {SIGNATURES_DIR}/{SIGNATURE_NAME}: {detail}")


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


def _signed_diff(bundle_dir: Path, sig_path: Path) -> str | None:
    """'path: what' for each file differing from the signed payload, or None if unknown.

    Only called after model-signing accepted the signature itself, so the payload is authentic;
    its own message is a repr'd Python list of digests, too noisy for one line.
    """
    try:
        env = json.loads(sig_path.read_text())["dsseEnvelope"]
        pred = json.loads(base64.b64decode(env["payload"]))["predicate"]
        if pred["serialization"]["method"] != "files" or pred["serialization"]["hash_type"] != "sha256":
            return None
        signed = {r["name"]: r["digest"] for r in pred["resources"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    actual = {f["path"]: f["sha256"] for f in list_files(bundle_dir)}
    if (bundle_dir / MANIFEST_NAME).is_file():
        actual[MANIFEST_NAME] = sha256_file(bundle_dir / MANIFEST_NAME)
    return _diff(signed, actual)

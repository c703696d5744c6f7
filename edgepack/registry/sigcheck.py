"""Check a bundle signature (``signatures/model.sig``) on its own, without the bundle's files.

model-signing verifies a signature against a whole folder. A registry artifact is checked
before anything is downloaded (``edgepack verify REF``) and a per-target pull holds only part
of the bundle, so here the signature is checked first (the DSSE envelope against the EC
public key, or the signing certificate against a CA chain, both by model-signing's own
verifiers) and the signed ``{path: sha256}`` list it returns is then compared with the
registry's layer digests, which are the raw files' sha256 (layers are stored uncompressed).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgepack.errors import BadInputError, VerificationError

SIG_REL = "signatures/model.sig"


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
        from edgepack.bundle.sign import fingerprint, load_public_key

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
    from model_signing import verifying
    from model_signing._signing import sign_sigstore_pb

    try:
        doc = json.loads(sig)
    except ValueError as e:
        raise VerificationError(f"{SIG_REL}: corrupt signature (not JSON)") from e
    if trust.public_key is not None:
        hint = ((doc.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint") if isinstance(doc, dict) else None
        pem = _pem(trust.public_key)
        if hint and hint != hashlib.sha256(pem).hexdigest():
            raise VerificationError(f"{SIG_REL}: signed by a different key than {trust.public_key}",
                                    hint="pass the public key of the key that signed this bundle")
        cfg = verifying.Config().use_elliptic_key_verifier(public_key=trust.public_key)
    else:
        cfg = verifying.Config().use_certificate_verifier(certificate_chain=list(trust.cert_chain))
    with tempfile.TemporaryDirectory(prefix="edgepack-sig-") as d:
        path = Path(d) / "model.sig"
        path.write_bytes(sig)
        try:
            manifest = cfg._verifier.verify(sign_sigstore_pb.Signature.read(path))  # model-signing 1.1.1 verifier
        except InvalidSignature as e:
            raise VerificationError(f"{SIG_REL}: signature is invalid for {trust.describe()}") from e
        except Exception as e:  # malformed bundle, untrusted certificate (OpenSSL store errors), ...
            msg = " ".join(str(e).split())[:300]
            raise VerificationError(f"{SIG_REL}: not verified with {trust.describe()}: {type(e).__name__}: {msg}") from e
    out = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise VerificationError(f"{SIG_REL}: {rd.identifier} is signed with {rd.digest.algorithm}, expected sha256")
        out[str(rd.identifier)] = rd.digest.digest_hex
    return out


def _pem(path: Path) -> bytes:
    """The key as model-signing hashes it for its hint: PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    from edgepack.bundle.sign import load_public_key

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

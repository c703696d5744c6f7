"""Sigstore-bundle signatures with a local EC key, written and checked without sigstore_models.

model-signing 1.1.1's EC-key ``Signer`` / ``Verifier`` (``_signing/sign_ec_key.py``) build the
Sigstore bundle with ``sigstore_models`` (pydantic models: about a fifth of a fully cached
build's time to import). The bundle is a small JSON document, so edgepack writes and reads it
with ``json`` and does the ECDSA step with ``cryptography``, exactly as upstream: the DSSE payload
is upstream's in-toto statement (``signing.Payload``, which upstream builds with protobuf and
in_toto_attestation and serializes with ``MessageToJson``: here plain JSON with the same fields),
signed over the DSSE PAE with ECDSA and the curve's hash; the bundle holds the key's hint (sha256
of its PEM SubjectPublicKeyInfo). The written JSON has upstream's fields in upstream's order, and
upstream's verifier accepts it (tests/test_warm.py, tests/test_ecsig.py); upstream-written
signatures are read here too. Certificate signatures (company PKI) still use model-signing's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
CURVES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}  # as model-signing's get_ec_key_hash


def pae(raw: bytes) -> bytes:
    """DSSE pre-authentication encoding (model-signing's ``sign_sigstore_pb.pae``)."""
    return b" ".join([f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(raw)}".encode(), raw])


def pae_compat(raw: bytes) -> bytes:
    """The encoding model-signing 0.2 signed by mistake (upstream still verifies it: ``pae_compat``)."""
    return f"DSSEV1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(raw)} {raw!r}".encode()  # the bytes' repr, as upstream


def _ecdsa(public_key):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    name = public_key.curve.name
    if name not in CURVES:
        raise ValueError(f"Unsupported key for curve '{name}'")
    return ec.ECDSA(getattr(hashes, CURVES[name])())


def key_hint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


class _Signature:
    def __init__(self, doc: dict):
        self.doc = doc

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.doc, separators=(",", ":")), encoding="utf-8")


class Signer:
    """``sign_ec_key.Signer`` (model-signing 1.1.1): ``Signer(key_path).sign(manifest).write(path)``."""

    def __init__(self, private_key_path: Path, password: bytes | None = None):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_private_key(Path(private_key_path).read_bytes(), password)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"Unsupported key type {type(key).__name__}: an EC private key is needed")
        self._key = key
        self._ecdsa = _ecdsa(self._key.public_key())

    def sign(self, manifest) -> _Signature:
        """Sign a model-signing ``manifest.Manifest`` (what ``hashing.Config().hash(folder)`` returns)."""
        raw = payload_bytes(manifest)
        sig = self._key.sign(pae(raw), self._ecdsa)
        return _Signature({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "verificationMaterial": {"publicKey": {"hint": key_hint(self._key.public_key())}, "tlogEntries": []},
            "dsseEnvelope": {"payload": base64.b64encode(raw).decode(), "payloadType": PAYLOAD_TYPE,
                             "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]},
        })


def statement(manifest) -> dict:
    """model-signing 1.1.1's in-toto statement for a manifest (``signing.Payload``): one subject, the
    model name with the sha256 over every resource digest in order; the predicate lists the resources."""
    root = hashlib.sha256()
    resources = []
    for d in manifest.resource_descriptors():
        root.update(d.digest.digest_value)
        resources.append({"name": d.identifier, "algorithm": d.digest.algorithm, "digest": d.digest.digest_hex})
    return {"_type": STATEMENT_TYPE, "subject": [{"name": manifest.model_name, "digest": {"sha256": root.hexdigest()}}],
            "predicateType": PREDICATE_TYPE, "predicate": {"serialization": manifest.serialization_type, "resources": resources}}


def payload_bytes(manifest) -> bytes:
    """The statement as protobuf's ``MessageToJson`` writes it (2-space indent, UTF-8), which upstream signs."""
    return json.dumps(statement(manifest), indent=2, ensure_ascii=False).encode("utf-8")


def manifest_of(stmt: dict):
    """``signing.dsse_payload_to_manifest`` (model-signing 1.1.1) for the current predicate type;
    older predicate types go to upstream's own function."""
    from edgepack.bundle.mslite import ms

    if stmt.get("predicateType") != PREDICATE_TYPE:
        return ms("_signing.signing").dsse_payload_to_manifest(stmt)
    subjects = stmt["subject"]
    if len(subjects) != 1:
        raise ValueError(f"Expected only one subject, got {subjects}")
    manifest, digest = ms("manifest"), ms("_hashing.hashing").Digest
    predicate = stmt["predicate"]
    serialization = manifest.SerializationType.from_args(predicate["serialization"])
    root, items = hashlib.sha256(), []
    for r in predicate["resources"]:
        d = digest(r["algorithm"], bytes.fromhex(r["digest"]))
        root.update(d.digest_value)
        items.append(serialization.new_item(r["name"], d))
    expected = subjects[0]["digest"]["sha256"]
    if root.hexdigest() != expected:
        raise ValueError(f"Manifest is inconsistent. Root digest is {expected}, but the included resources hash to {root.hexdigest()}")
    return manifest.Manifest(subjects[0]["name"], items, serialization)


def _field(doc, *path):
    for k in path:
        if not isinstance(doc, dict) or k not in doc:
            raise ValueError(f"malformed Sigstore bundle: no {'.'.join(path)}")
        doc = doc[k]
    return doc


class Verifier:
    """``sign_ec_key.Verifier`` (model-signing 1.1.1): ``Verifier(public_key_path).verify_file(sig)`` ->
    the signed ``manifest.Manifest``. Raises ``InvalidSignature`` or ``ValueError`` as upstream does."""

    def __init__(self, public_key_path: Path):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        key = serialization.load_pem_public_key(Path(public_key_path).read_bytes())
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError(f"Unsupported key type {type(key).__name__}: an EC public key is needed")
        self._key = key
        self._ecdsa = _ecdsa(self._key)

    def verify_file(self, path: Path):
        from cryptography.exceptions import InvalidSignature

        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if _field(doc, "mediaType") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"Invalid sigstore bundle, got media type {doc['mediaType']} but expected {BUNDLE_MEDIA_TYPE}")
        hint = (_field(doc, "verificationMaterial").get("publicKey") or {}).get("hint")
        if hint and hint != key_hint(self._key):
            raise ValueError("Key mismatch: The public key hash in the signature's verification material does not match the provided public key.")
        sigs = _field(doc, "dsseEnvelope", "signatures")
        if not isinstance(sigs, list) or not sigs or not isinstance(sigs[0], dict) or "sig" not in sigs[0]:
            raise ValueError("malformed Sigstore bundle: no dsseEnvelope.signatures[0].sig")
        raw = base64.b64decode(_field(doc, "dsseEnvelope", "payload"), validate=True)
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
        try:
            self._key.verify(sig, pae(raw), self._ecdsa)
        except InvalidSignature:
            self._key.verify(sig, pae_compat(raw), self._ecdsa)  # as upstream: pre-1.0 signatures
        if _field(doc, "dsseEnvelope", "payloadType") != PAYLOAD_TYPE:
            raise ValueError(f"Expected DSSE payload {PAYLOAD_TYPE}, but got {doc['dsseEnvelope']['payloadType']}")
        statement = json.loads(raw)
        if statement.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"Expected in-toto {STATEMENT_TYPE} payload, but got {statement.get('_type')}")
        return manifest_of(statement)

"""edgepack's EC-key Sigstore bundles (edgepack/bundle/ecsig.py, no sigstore_models) and upstream
model-signing 1.1.1's accept each other's signatures, and a forged or foreign one is refused."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edgepack.bundle import ecsig
from edgepack.bundle.mslite import ms
from edgepack.bundle.sigcheck import hashing_config


def _key(d: Path, name: str, curve) -> tuple[Path, Path]:
    k = ec.generate_private_key(curve)
    priv, pub = d / f"{name}.pem", d / f"{name}.pub.pem"
    priv.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub.write_bytes(k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


@pytest.fixture
def folder(tmp_path):
    m = tmp_path / "model"
    (m / "sub").mkdir(parents=True)
    (m / "a.bin").write_bytes(b"\x00" * 1000)
    (m / "sub" / "b.txt").write_text("hello\n")
    return m


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()])
def test_both_ways(folder, tmp_path, curve):
    priv, pub = _key(tmp_path, "k", curve)
    manifest = hashing_config().hash(folder)
    payload = ms("_signing.signing").Payload(manifest)
    ecsig.Signer(priv).sign(manifest).write(tmp_path / "native.sig")
    ms("_signing.sign_ec_key").Signer(priv, None).sign(payload).write(tmp_path / "upstream.sig")
    up_verifier = ms("_signing.sign_ec_key").Verifier(pub)
    read = ms("_signing.sign_sigstore_pb").Signature.read
    assert up_verifier.verify(read(tmp_path / "native.sig")) == manifest  # upstream accepts edgepack's
    assert ecsig.Verifier(pub).verify_file(tmp_path / "upstream.sig") == manifest  # and the other way
    assert ecsig.Verifier(pub).verify_file(tmp_path / "native.sig") == manifest
    native, upstream = (json.loads((tmp_path / f"{n}.sig").read_text()) for n in ("native", "upstream"))
    assert list(native) == list(upstream) and native["verificationMaterial"] == upstream["verificationMaterial"]
    assert list(native["dsseEnvelope"]) == list(upstream["dsseEnvelope"])
    # the signed statement: upstream's (in_toto_attestation + protobuf MessageToJson), field for field
    from google.protobuf import json_format

    assert json.loads(ecsig.payload_bytes(manifest)) == json.loads(json_format.MessageToJson(payload.statement.pb))
    assert json.loads(base64.b64decode(native["dsseEnvelope"]["payload"])) == json.loads(base64.b64decode(upstream["dsseEnvelope"]["payload"]))


def test_forged_and_foreign_signatures_are_refused(folder, tmp_path):
    priv, pub = _key(tmp_path, "k", ec.SECP256R1())
    _, other = _key(tmp_path, "other", ec.SECP256R1())
    sig = tmp_path / "model.sig"
    ecsig.Signer(priv).sign(hashing_config().hash(folder)).write(sig)
    with pytest.raises(ValueError, match="Key mismatch"):
        ecsig.Verifier(other).verify_file(sig)
    doc = json.loads(sig.read_text())
    doc["verificationMaterial"]["publicKey"].pop("hint")  # no hint: the signature itself must still fail
    sig.write_text(json.dumps(doc))
    with pytest.raises(InvalidSignature):
        ecsig.Verifier(other).verify_file(sig)
    stmt = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    stmt["predicate"]["resources"] = stmt["predicate"]["resources"][:1]  # drop a signed file
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    sig.write_text(json.dumps(doc))
    with pytest.raises(InvalidSignature):
        ecsig.Verifier(pub).verify_file(sig)
    sig.write_text(json.dumps({"mediaType": ecsig.BUNDLE_MEDIA_TYPE, "verificationMaterial": {}}))
    with pytest.raises(ValueError, match="malformed Sigstore bundle: no dsseEnvelope"):
        ecsig.Verifier(pub).verify_file(sig)

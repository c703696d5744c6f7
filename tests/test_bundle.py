"""Bundle writing, keys, signing and verification with real model-signing and real files."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import onnx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from onnx import TensorProto, helper

from edgepack.bundle import keygen, read_manifest, sign_bundle, verify_bundle, write_bundle
from edgepack.bundle.manifest import SCHEMA_VERSION
from edgepack.bundle.sign import default_public_path, load_private_key, load_public_key
from edgepack.errors import BadInputError, VerificationError


def tiny_onnx(path: Path, scale: float = 2.0) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    s = helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "tiny", [x], [y], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture
def bundle(tmp_path) -> Path:
    src = tmp_path / "src"
    ir = src / "ir"
    ir.mkdir(parents=True)
    (ir / "model.xml").write_text("<net name='tiny'/>\n")
    (ir / "model.bin").write_bytes(b"\x00\x01\x02\x03")
    files = {
        "targets/ort/model.onnx": tiny_onnx(src / "a.onnx", 2.0),
        "targets/ort-int8/model.onnx": tiny_onnx(src / "b.onnx", 3.0),
        "targets/openvino/ir": ir,
    }
    manifest = {"name": "tiny", "version": "1.0.0", "targets": ["ort", "ort-int8", "openvino"]}
    return write_bundle(tmp_path / "out" / "tiny", files, manifest, {"gates": {"latency": "pass"}})


@pytest.fixture
def keys(tmp_path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys" / "dev.pem")


@pytest.fixture
def signed(bundle, keys) -> Path:
    sign_bundle(bundle, keys[0])
    return bundle


def test_write_bundle_lists_every_file_with_digest(bundle, tmp_path):
    doc = read_manifest(bundle)
    assert doc["schema_version"] == SCHEMA_VERSION and doc["name"] == "tiny"
    paths = [f["path"] for f in doc["files"]]
    assert paths == [
        "report.json",
        "targets/openvino/ir/model.bin",
        "targets/openvino/ir/model.xml",
        "targets/ort-int8/model.onnx",
        "targets/ort/model.onnx",
    ]
    for f in doc["files"]:
        data = (bundle / f["path"]).read_bytes()
        assert f["sha256"] == hashlib.sha256(data).hexdigest() and f["size"] == len(data)
    assert (bundle / "targets/ort/model.onnx").read_bytes() == (tmp_path / "src/a.onnx").read_bytes()
    assert json.loads((bundle / "report.json").read_text()) == {"gates": {"latency": "pass"}}
    assert onnx.load(bundle / "targets/ort/model.onnx").graph.node[0].op_type == "Mul"
    assert [p.name for p in bundle.parent.iterdir()] == ["tiny"]  # no temp dirs left beside it


def test_write_bundle_replaces_old_bundle_and_refuses_foreign_folder(bundle, tmp_path):
    new = write_bundle(bundle, {"m.onnx": tmp_path / "src/a.onnx"}, {"name": "tiny", "version": "2"}, {})
    assert read_manifest(new)["version"] == "2" and not (new / "targets").exists()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(BadInputError, match="not an edgepack bundle; refusing"):
        write_bundle(foreign, {"m.onnx": tmp_path / "src/a.onnx"}, {}, {})
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_write_bundle_failures_leave_nothing(tmp_path):
    out = tmp_path / "out" / "b"
    with pytest.raises(BadInputError, match="does-not-exist.onnx"):
        write_bundle(out, {"m.onnx": tmp_path / "does-not-exist.onnx"}, {}, {})
    with pytest.raises(BadInputError, match="reserved"):
        write_bundle(out, {"signatures/x": tiny_onnx(tmp_path / "m.onnx")}, {}, {})
    with pytest.raises(BadInputError, match=r"'\.\./m\.onnx'"):
        write_bundle(out, {"../m.onnx": tmp_path / "m.onnx"}, {}, {})
    assert not out.exists()
    (tmp_path / "afile").write_text("x")
    blocked = tmp_path / "afile" / "bundle"
    with pytest.raises(BadInputError, match=str(blocked)):
        write_bundle(blocked, {"m.onnx": tmp_path / "m.onnx"}, {}, {})


def test_read_manifest_missing_or_corrupt(tmp_path):
    with pytest.raises(BadInputError, match="edgepack.json not found"):
        read_manifest(tmp_path)
    (tmp_path / "edgepack.json").write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "edgepack.json").write_text(json.dumps({"schema_version": 1, "files": [{"path": 3}]}))
    with pytest.raises(BadInputError, match=r"files\[0\]"):
        read_manifest(tmp_path)


def test_keygen_modes_default_public_and_no_overwrite(tmp_path):
    priv, pub = keygen(tmp_path / "k" / "dev.pem")
    assert pub == tmp_path / "k" / "dev.pub.pem" == default_public_path(priv)
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in priv.read_bytes() and b"BEGIN PUBLIC KEY" in pub.read_bytes()
    assert load_private_key(priv).public_key().public_numbers() == load_public_key(pub).public_numbers()
    before = priv.read_bytes()
    with pytest.raises(BadInputError, match="dev.pem already exists"):
        keygen(priv)
    assert priv.read_bytes() == before
    keygen(priv, overwrite=True)
    assert priv.read_bytes() != before
    p384, _ = keygen(tmp_path / "k384.pem", curve="P-384")
    assert load_private_key(p384).curve.name == "secp384r1"
    with pytest.raises(BadInputError, match="unsupported curve"):
        keygen(tmp_path / "x.pem", curve="P-192")
    assert [p.name for p in (tmp_path / "k").iterdir() if p.name.startswith(".")] == []


def test_sign_and_verify_ok(signed, keys):
    assert sorted(p.name for p in (signed / "signatures").iterdir()) == ["model.sig"]
    summary = verify_bundle(signed, keys[1])
    der = load_public_key(keys[1]).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert summary["files_checked"] == 5
    assert summary["signer_fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert summary["name"] == "tiny" and summary["version"] == "1.0.0"


def test_verify_names_modified_file(signed, keys):
    p = signed / "targets/ort/model.onnx"
    p.write_bytes(p.read_bytes()[:-1] + b"\x01")
    with pytest.raises(VerificationError, match=r"^targets/ort/model\.onnx: sha256 mismatch$"):
        verify_bundle(signed, keys[1])


def test_verify_names_added_file(signed, keys):
    (signed / "targets/ort/extra.bin").write_bytes(b"payload")
    with pytest.raises(VerificationError, match=r"targets/ort/extra\.bin: not listed in edgepack\.json"):
        verify_bundle(signed, keys[1])


def test_verify_names_removed_file(signed, keys):
    (signed / "targets/openvino/ir/model.bin").unlink()
    with pytest.raises(VerificationError, match=r"targets/openvino/ir/model\.bin: listed in edgepack\.json but missing"):
        verify_bundle(signed, keys[1])


def test_tampered_manifest_caught_by_signature(signed, keys):
    doc = json.loads((signed / "edgepack.json").read_text())
    doc["version"] = "9.9.9"  # self-consistent edit: the file list still matches the disk
    (signed / "edgepack.json").write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match=r"do not match signatures/model\.sig: edgepack\.json: content differs from the signed content$"):
        verify_bundle(signed, keys[1])


def test_tampered_file_and_manifest_caught_by_signature(signed, keys):
    """An attacker who rewrites a file AND its entry in edgepack.json is still caught."""
    p = signed / "targets/ort/model.onnx"
    tiny_onnx(p, 7.0)
    doc = json.loads((signed / "edgepack.json").read_text())
    for f in doc["files"]:
        if f["path"] == "targets/ort/model.onnx":
            f.update(sha256=hashlib.sha256(p.read_bytes()).hexdigest(), size=p.stat().st_size)
    (signed / "edgepack.json").write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match=r"targets/ort/model\.onnx: content differs"):
        verify_bundle(signed, keys[1])


def test_git_paths_are_signed_too(tmp_path, keys):
    """model-signing ignores .git* by default; edgepack turns that off."""
    src = tiny_onnx(tmp_path / "m.onnx")
    (tmp_path / "gi").write_text("*.tmp\n")
    b = write_bundle(tmp_path / "b", {"m.onnx": src, ".gitignore": tmp_path / "gi"}, {}, {})
    sign_bundle(b, keys[0])
    verify_bundle(b, keys[1])
    (b / ".gitignore").write_text("evil\n")
    doc = json.loads((b / "edgepack.json").read_text())
    doc["files"] = [f for f in doc["files"] if f["path"] != ".gitignore"] + [
        {"path": ".gitignore", "sha256": hashlib.sha256(b"evil\n").hexdigest(), "size": 5}
    ]
    (b / "edgepack.json").write_text(json.dumps(doc))
    with pytest.raises(VerificationError, match=r"\.gitignore: content differs"):
        verify_bundle(b, keys[1])


def test_wrong_public_key(signed, tmp_path):
    _, other_pub = keygen(tmp_path / "other.pem")
    with pytest.raises(VerificationError, match="signed by a different key than .*other.pub.pem"):
        verify_bundle(signed, other_pub)


def test_missing_and_corrupt_signature(signed, keys):
    sig = signed / "signatures/model.sig"
    good = json.loads(sig.read_text())
    env = good["dsseEnvelope"]  # forge the signed statement: drop a file from it, keep the old signature
    stmt = json.loads(base64.b64decode(env["payload"]))
    stmt["predicate"]["resources"] = [r for r in stmt["predicate"]["resources"] if r["name"] != "report.json"]
    env["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
    sig.write_text(json.dumps(good))
    with pytest.raises(VerificationError, match=r"signatures/model\.sig: signature is invalid"):
        verify_bundle(signed, keys[1])
    sig.write_text("{garbage")
    with pytest.raises(VerificationError, match=r"signatures/model\.sig: corrupt signature file"):
        verify_bundle(signed, keys[1])
    sig.write_text(json.dumps({"mediaType": "x"}))
    with pytest.raises(VerificationError, match=r"signatures/model\.sig"):
        verify_bundle(signed, keys[1])
    sig.unlink()
    with pytest.raises(VerificationError, match=r"signatures/model\.sig: missing"):
        verify_bundle(signed, keys[1])


def test_unexpected_file_in_signatures(signed, keys):
    (signed / "signatures/notes.txt").write_text("hi")
    with pytest.raises(VerificationError, match=r"signatures/notes\.txt: unexpected"):
        verify_bundle(signed, keys[1])
    with pytest.raises(BadInputError, match=r"notes\.txt: unexpected file"):
        sign_bundle(signed, keys[0])


def test_missing_key_files(bundle, keys, tmp_path):
    with pytest.raises(BadInputError, match=r"private key .*nope\.pem not found") as e:
        sign_bundle(bundle, tmp_path / "nope.pem")
    assert "edgepack keygen" in e.value.one_line()
    assert not (bundle / "signatures").exists()
    sign_bundle(bundle, keys[0])
    with pytest.raises(BadInputError, match=r"public key .*nope\.pub\.pem not found"):
        verify_bundle(bundle, tmp_path / "nope.pub.pem")
    with pytest.raises(BadInputError, match="holds a private key"):
        verify_bundle(bundle, keys[0])
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(BadInputError, match="junk.pem is not a PEM private key"):
        load_private_key(tmp_path / "junk.pem")


@pytest.mark.parametrize("kind", ["Ed25519", "RSA"])
def test_non_ec_keys_rejected(bundle, tmp_path, kind):
    key = ed25519.Ed25519PrivateKey.generate() if kind == "Ed25519" else rsa.generate_private_key(65537, 2048)
    priv = tmp_path / "k.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub = tmp_path / "k.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(BadInputError, match=rf"private key .*k\.pem is a {kind} key; model-signing signs only with EC"):
        sign_bundle(bundle, priv)
    assert not (bundle / "signatures" / "model.sig").exists()
    with pytest.raises(BadInputError, match=rf"public key .*k\.pub\.pem is a {kind} key"):
        verify_bundle(bundle, pub)

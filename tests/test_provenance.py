"""Build provenance: signed in-toto SLSA v1 statement; tampering and wrong keys are caught. Real EC keys."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from edgepack.bundle import keygen, sign_bundle, verify_bundle, write_bundle
from edgepack.bundle.provenance import PROVENANCE_NAME, SLSA_PROVENANCE, verify_provenance, write_provenance
from edgepack.errors import VerificationError


@pytest.fixture
def keys(tmp_path):
    return keygen(tmp_path / "k" / "a.pem"), keygen(tmp_path / "k" / "b.pem", curve="P-384")


MANIFEST = {
    "name": "tiny", "version": "2.0.0", "recipe_sha256": "aa" * 32, "source": {"format": "pytorch", "sha256": "bb" * 32},
    "calibration_sha256": "cc" * 32, "validation_sha256": None, "targets": {"ort": {}, "ov": {}},
    "toolchain": {"onnx": "1.19.1", "edgepack": "0.1.0"},
}


def make(tmp_path: Path, key: Path) -> Path:
    src = tmp_path / "src"
    (src / "ov").mkdir(parents=True)
    (src / "m.onnx").write_bytes(b"onnx-bytes")
    (src / "ov" / "model.xml").write_bytes(b"<xml/>")
    files = {"targets/ort/m.onnx": src / "m.onnx", "targets/ov/model": src / "ov"}
    prov = write_provenance(tmp_path / "prov.json", files, MANIFEST, key, "2026-01-01T00:00:00+00:00",
                            "2026-01-01T00:05:00+00:00", "recipe.yaml")
    b = write_bundle(tmp_path / "bundle", {**files, PROVENANCE_NAME: prov}, MANIFEST, {})
    sign_bundle(b, key)
    return b


def test_statement_shape_and_verification(tmp_path, keys):
    b = make(tmp_path, keys[0][0])
    st = verify_provenance(b, keys[0][1])
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == SLSA_PROVENANCE
    subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert subjects == {"targets/ort/m.onnx": hashlib.sha256(b"onnx-bytes").hexdigest(),
                        "targets/ov/model/model.xml": hashlib.sha256(b"<xml/>").hexdigest()}
    bd, run = st["predicate"]["buildDefinition"], st["predicate"]["runDetails"]
    assert bd["externalParameters"]["recipe"] == {"name": "recipe.yaml", "digest": {"sha256": "aa" * 32}}
    deps = {d["name"]: d["digest"]["sha256"] for d in bd["resolvedDependencies"]}
    assert deps == {"source-model": "bb" * 32, "calibration-data": "cc" * 32}  # no validation data: not listed
    assert bd["internalParameters"]["toolchain"]["onnx"] == "1.19.1"
    assert run["metadata"] == {"startedOn": "2026-01-01T00:00:00+00:00", "finishedOn": "2026-01-01T00:05:00+00:00"}
    assert run["builder"]["id"].startswith("https://")
    assert str(tmp_path) not in (b / PROVENANCE_NAME).read_text()  # no build-host paths
    assert verify_bundle(b, keys[0][1])["files_checked"] >= 3  # the statement is covered by the bundle signature too


def test_wrong_key_tampered_subject_and_payload(tmp_path, keys):
    b = make(tmp_path, keys[0][0])
    with pytest.raises(VerificationError, match="signature is invalid"):
        verify_provenance(b, keys[1][1])
    (b / "targets/ort/m.onnx").write_bytes(b"other")
    with pytest.raises(VerificationError, match="targets/ort/m.onnx: differs from the provenance subject digest"):
        verify_provenance(b, keys[0][1])
    (b / "targets/ort/m.onnx").unlink()
    assert verify_provenance(b, keys[0][1], allow_missing=True)  # a per-target pull holds part of the subjects
    env = json.loads((b / PROVENANCE_NAME).read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["runDetails"]["builder"]["id"] = "https://evil.example/builder"
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    (b / PROVENANCE_NAME).write_text(json.dumps(env))
    with pytest.raises(VerificationError, match="signature is invalid"):
        verify_provenance(b, keys[0][1], allow_missing=True)
    (b / PROVENANCE_NAME).write_text("{not json")
    with pytest.raises(VerificationError, match="not a DSSE envelope"):
        verify_provenance(b, keys[0][1])


def test_build_writes_signed_provenance(digits_recipe, tmp_path, cli):
    out = tmp_path / "out"
    r = cli("build", digits_recipe, "-o", out, "--no-publish", "--target", "ort-int8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from edgepack.cache import edgepack_home

    pub = edgepack_home() / "keys" / "signing-key.pub.pem"
    st = verify_provenance(out, pub)
    manifest = json.loads((out / "edgepack.json").read_text())
    assert manifest["provenance"] == PROVENANCE_NAME
    assert {s["name"] for s in st["subject"]} == {t["path"] for t in manifest["targets"].values()}
    deps = {d["name"]: d["digest"]["sha256"] for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]}
    assert deps["source-model"] == manifest["source"]["sha256"] and deps["calibration-data"] == manifest["calibration_sha256"]
    assert st["predicate"]["buildDefinition"]["externalParameters"]["recipe"]["digest"]["sha256"] == manifest["recipe_sha256"]
    assert hashlib.sha256(digits_recipe.read_bytes()).hexdigest() == manifest["recipe_sha256"]
    assert not list(tmp_path.glob(f".out.{PROVENANCE_NAME}*"))  # the temp statement is gone

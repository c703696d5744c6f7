"""Embedded OCI image-layout registry: push, pull, tags, corruption, atomicity. Real signing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgepack import registry
from edgepack.bundle import keygen, sign_bundle, write_bundle
from edgepack.errors import BadInputError, VerificationError
from edgepack.registry import layout
from edgepack.registry.refs import parse_ref


def tiny_onnx(path: Path, scale: float) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    s = helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["y"])], "tiny", [x], [y], [s])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture
def keys(tmp_path):
    return keygen(tmp_path / "keys" / "dev.pem")


@pytest.fixture
def make_bundle(tmp_path, keys):
    def make(version="1.0.0", scale=2.0, name="b"):
        src = tmp_path / "src" / version
        files = {  # same basename in two folders
            "targets/ort/model.onnx": tiny_onnx(src / "a.onnx", scale),
            "targets/ort-int8/model.onnx": tiny_onnx(src / "b.onnx", scale + 1),
        }
        manifest = {"name": "tiny", "version": version, "targets": ["ort", "ort-int8"], "created": "2025-01-02T03:04:05Z"}
        b = write_bundle(tmp_path / "bundles" / name, files, manifest, {"ok": True})
        sign_bundle(b, keys[0])
        return b

    return make


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def index(reg: Path) -> dict:
    return json.loads((reg / "index.json").read_text())


def blob(reg: Path, digest: str) -> Path:
    return reg / "blobs" / "sha256" / digest.split(":", 1)[1]


def test_push_pull_roundtrip_byte_identical(make_bundle, keys, tmp_path):
    b = make_bundle()
    reg = tmp_path / "reg" / "tiny"
    res = registry.push(b, f"layout:{reg}:1.0.0")
    assert res["tag"] == "1.0.0" and res["digest"].startswith("sha256:")
    assert json.loads((reg / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [entry] = index(reg)["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "1.0.0"
    assert entry["digest"] == res["digest"] and entry["size"] == blob(reg, res["digest"]).stat().st_size
    for p in (reg / "blobs" / "sha256").iterdir():  # content addressed
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    man = json.loads(blob(reg, res["digest"]).read_text())
    assert man["artifactType"] == "application/vnd.edgepack.bundle.v1"
    assert man["config"]["mediaType"] == "application/vnd.edgepack.manifest.v1+json"
    assert blob(reg, man["config"]["digest"]).read_bytes() == (b / "edgepack.json").read_bytes()
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in man["layers"]]
    assert titles == ["report.json", "signatures/model.sig", "targets/ort-int8/model.onnx", "targets/ort/model.onnx"]
    assert man["annotations"]["org.opencontainers.image.version"] == "1.0.0"

    out = tmp_path / "pulled"
    summary = registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert tree(out) == tree(b)
    assert summary["files_checked"] == 3 and summary["digest"] == res["digest"]
    # both same-basename files kept their own content
    assert (out / "targets/ort/model.onnx").read_bytes() != (out / "targets/ort-int8/model.onnx").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_list_tags_and_repush_replaces_tag(make_bundle, tmp_path, keys):
    reg = tmp_path / "reg"
    first = registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:1.0.0")
    registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:stable")
    again = registry.push(make_bundle("1.1.0", 5.0, "two"), f"layout:{reg}:stable")
    assert again["digest"] != first["digest"]
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index(reg)["manifests"]]
    assert sorted(refs) == ["1.0.0", "stable"]  # the old "stable" entry was replaced, not duplicated
    tags = registry.list_tags(reg)
    assert [t["tag"] for t in tags] == ["1.0.0", "stable"]
    stable = next(t for t in tags if t["tag"] == "stable")
    assert stable == {
        "tag": "stable", "digest": again["digest"], "created": "2025-01-02T03:04:05Z",
        "name": "tiny", "targets": ["ort", "ort-int8"],
    }
    assert registry.list_tags(f"layout:{reg}") == tags
    out = tmp_path / "out"
    registry.pull(f"layout:{reg}:stable", out, keys[1])
    assert json.loads((out / "edgepack.json").read_text())["version"] == "1.1.0"
    registry.pull(f"layout:{reg}@{first['digest']}", out, keys[1])  # by digest, replacing out
    assert json.loads((out / "edgepack.json").read_text())["version"] == "1.0.0"


def test_corrupted_blob_detected_and_nothing_left(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg"
    res = registry.push(make_bundle(), f"layout:{reg}:1.0.0")
    man = json.loads(blob(reg, res["digest"]).read_text())
    layer = next(x for x in man["layers"] if x["annotations"]["org.opencontainers.image.title"] == "targets/ort/model.onnx")
    p = blob(reg, layer["digest"])
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    out = tmp_path / "pulled"
    with pytest.raises(VerificationError, match=r"^targets/ort/model\.onnx: blob sha256:[0-9a-f]{64} does not match"):
        registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    p.unlink()
    with pytest.raises(VerificationError, match=r"targets/ort/model\.onnx: blob .* is missing"):
        registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert not out.exists()


def test_pull_with_wrong_key_leaves_old_bundle(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg"
    registry.push(make_bundle(), f"layout:{reg}:1.0.0")
    out = tmp_path / "pulled"
    registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    before = tree(out)
    _, other = keygen(tmp_path / "other.pem")
    with pytest.raises(VerificationError, match="signed by a different key"):
        registry.pull(f"layout:{reg}:1.0.0", out, other)
    assert tree(out) == before
    with pytest.raises(BadInputError, match="missing.pub.pem not found"):
        registry.pull(f"layout:{reg}:1.0.0", tmp_path / "x", tmp_path / "missing.pub.pem")
    assert not (tmp_path / "x").exists()


def test_unknown_tag_lists_available(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg"
    b = make_bundle()
    registry.push(b, f"layout:{reg}:1.0.0")
    registry.push(b, f"layout:{reg}:beta")
    with pytest.raises(BadInputError, match=r"tag '2\.0\.0' not found in .*; available tags: 1\.0\.0, beta$"):
        registry.pull(f"layout:{reg}:2.0.0", tmp_path / "out", keys[1])
    with pytest.raises(BadInputError, match="no OCI image layout"):
        registry.pull(f"layout:{tmp_path / 'nothing'}:1.0.0", tmp_path / "out", keys[1])
    assert not (tmp_path / "out").exists()


def test_unwritable_registry_and_unsigned_bundle(make_bundle, tmp_path):
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "reg"
    with pytest.raises(BadInputError, match=rf"cannot write registry {bad}"):
        registry.push(make_bundle(), f"layout:{bad}:1.0.0")
    b = make_bundle()
    (b / "signatures" / "model.sig").unlink()
    with pytest.raises(BadInputError, match="is not signed"):
        registry.push(b, f"layout:{tmp_path / 'reg'}:1.0.0")
    assert not (tmp_path / "reg").exists()


def test_concurrent_pushes_to_a_new_layout_keep_every_tag(make_bundle, keys, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    b, reg = make_bundle(), tmp_path / "reg"
    with ThreadPoolExecutor(8) as ex:  # separate flocks per call, as separate processes would take
        list(ex.map(lambda i: registry.push(b, f"layout:{reg}:t{i}"), range(24)))
    assert sorted(t["tag"] for t in registry.list_tags(reg)) == sorted(f"t{i}" for i in range(24))
    assert [p.name for p in (reg / "blobs" / "sha256").iterdir() if p.name.startswith(".")] == []
    registry.pull(f"layout:{reg}:t17", tmp_path / "out", keys[1])


def test_interrupted_push_keeps_tag_on_complete_artifact(make_bundle, keys, tmp_path, monkeypatch):
    reg = tmp_path / "reg"
    first = registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:stable")
    real, calls = layout._put_file, []

    def dies_on_third_blob(*a, **k):
        calls.append(a)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process is interrupted mid-push
        return real(*a, **k)

    monkeypatch.setattr(layout, "_put_file", dies_on_third_blob)
    with pytest.raises(KeyboardInterrupt):
        registry.push(make_bundle("2.0.0", 9.0, "two"), f"layout:{reg}:stable")
    monkeypatch.undo()
    assert [m["digest"] for m in index(reg)["manifests"]] == [first["digest"]]
    registry.pull(f"layout:{reg}:stable", tmp_path / "out", keys[1])
    assert json.loads((tmp_path / "out" / "edgepack.json").read_text())["version"] == "1.0.0"


def test_unsafe_layer_title_rejected(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg"
    res = registry.push(make_bundle(), f"layout:{reg}:1.0.0")
    man = json.loads(blob(reg, res["digest"]).read_text())
    man["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../../escaped.json"
    data = json.dumps(man).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(reg, digest).write_bytes(data)
    idx = index(reg)
    idx["manifests"][0].update(digest=digest, size=len(data))
    (reg / "index.json").write_text(json.dumps(idx))
    with pytest.raises(VerificationError, match="unsafe or missing title '../../escaped.json'"):
        registry.pull(f"layout:{reg}:1.0.0", tmp_path / "a" / "out", keys[1])
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "a" / "out").exists()


def test_parse_ref(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    r = parse_ref("layout:~/reg/c:d/tiny:1.0.0")
    assert (r.kind, r.path, r.tag) == ("layout", tmp_path / "reg/c:d/tiny", "1.0.0")
    d = "sha256:" + "a" * 64
    assert parse_ref(f"layout:./reg@{d}").digest == d
    r = parse_ref("localhost:5000/team/resnet:v1")
    assert (r.kind, r.host, r.repository, r.tag) == ("remote", "localhost:5000", "team/resnet", "v1")
    r = parse_ref(f"ghcr.io/acme/resnet@{d}")
    assert (r.host, r.repository, r.tag, r.digest) == ("ghcr.io", "acme/resnet", None, d)
    assert str(r) == f"ghcr.io/acme/resnet@{d}"
    assert parse_ref("layout:/x", require_tag=False).tag is None
    for bad in ["", "layout:", "layout:/x", "layout:/x:", "layout:/x:-bad", "resnet:1.0",
                "ghcr.io/Acme/resnet:1", "ghcr.io/acme/resnet", "layout:/x@sha256:123"]:
        with pytest.raises(BadInputError):
            parse_ref(bad)

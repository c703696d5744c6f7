"""Embedded OCI image-layout registry: push, pull, tags, corruption, atomicity. Real signing."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgepack import registry
from edgepack.bundle import keygen, sign_bundle, write_bundle
from edgepack.errors import BadInputError, VerificationError
from edgepack.registry import layout
from edgepack.registry.refs import parse_ref

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli  # noqa: E402

REF_NAME = "org.opencontainers.image.ref.name"


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
        manifest = {"name": "tiny", "version": version, "created": "2025-01-02T03:04:05Z",
                    "targets": {t: {"path": f"targets/{t}/model.onnx", "runtime": "onnxruntime"} for t in ("ort", "ort-int8")}}
        b = write_bundle(tmp_path / "bundles" / name, files, manifest, {"ok": True})
        sign_bundle(b, keys[0])
        return b

    return make


def legacy_push(bundle: Path, root: Path, tag: str) -> str:
    """Write ``bundle`` in the older single-manifest layout form (every file a layer, the signature
    too), as layouts made before the one-OCI-form change hold it; return the manifest digest."""
    from edgepack.bundle.fsutil import atomic_write_bytes
    from edgepack.bundle.manifest import read_manifest

    root = layout._init_layout(root)
    m = read_manifest(bundle)
    config = layout._put_file(root, bundle / "edgepack.json", layout.CONFIG_TYPE)
    rels = sorted([f["path"] for f in m["files"]] + ["signatures/model.sig"])
    layers = [{**layout._put_file(root, bundle / rel, layout.SIGNATURE_TYPE if rel.startswith("signatures/") else layout.FILE_TYPE),
               "annotations": {layout.A_TITLE: rel}} for rel in rels]
    ann = {layout.A_CREATED: m.get("created", ""), layout.A_TITLE: m["name"], layout.A_VERSION: m["version"],
           layout.A_TARGETS: ",".join(sorted(m.get("targets") or {}))}
    doc = {"schemaVersion": 2, "mediaType": layout.OCI_MANIFEST, "artifactType": layout.ARTIFACT_TYPE,
           "config": config, "layers": layers, "annotations": ann}
    desc = layout._put_bytes(root, layout._json(doc), layout.OCI_MANIFEST)
    desc.update(artifactType=layout.ARTIFACT_TYPE, annotations={**ann, layout.A_REF: tag})
    idx = layout._read_index(root)
    idx["manifests"].append(desc)
    atomic_write_bytes(root / "index.json", layout._json(idx))
    return desc["digest"]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def index(reg: Path) -> dict:
    return json.loads((reg / "index.json").read_text())


def tagged(reg: Path) -> dict[str, dict]:
    return {m["annotations"][REF_NAME]: m for m in index(reg)["manifests"] if REF_NAME in (m.get("annotations") or {})}


def blob(reg: Path, digest: str) -> Path:
    return reg / "blobs" / "sha256" / digest.split(":", 1)[1]


def layer_of(reg: Path, top_digest: str, title: str) -> dict:
    doc = json.loads(blob(reg, top_digest).read_text())
    docs = [json.loads(blob(reg, e["digest"]).read_text()) for e in doc["manifests"]] if "manifests" in doc else [doc]
    return next(x for d in docs for x in d["layers"] if x["annotations"]["org.opencontainers.image.title"] == title)


def test_push_pull_roundtrip_byte_identical(make_bundle, keys, tmp_path):
    b = make_bundle()
    reg = tmp_path / "reg" / "tiny"
    res = registry.push(b, f"layout:{reg}:1.0.0")
    assert res["tag"] == "1.0.0" and res["digest"].startswith("sha256:")
    assert json.loads((reg / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    entry = tagged(reg)["1.0.0"]
    assert entry["digest"] == res["digest"] and entry["size"] == blob(reg, res["digest"]).stat().st_size
    for p in (reg / "blobs" / "sha256").iterdir():  # content addressed
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    top = json.loads(blob(reg, res["digest"]).read_text())  # the per-target image index, as on a registry
    assert top["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert top["artifactType"] == "application/vnd.edgepack.bundle.v1"
    assert top["annotations"]["org.opencontainers.image.version"] == "1.0.0"
    by_target = {e["annotations"]["dev.edgepack.target"]: e for e in top["manifests"]}
    man = json.loads(blob(reg, by_target["ort"]["digest"]).read_text())
    assert blob(reg, man["config"]["digest"]).read_bytes() == (b / "edgepack.json").read_bytes()
    assert [x["annotations"]["org.opencontainers.image.title"] for x in man["layers"]] == ["report.json", "targets/ort/model.onnx"]

    out = tmp_path / "pulled"
    summary = registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert tree(out) == tree(b)
    assert summary["digest"] == res["digest"] and summary["name"] == "tiny" and summary["version"] == "1.0.0"
    # both same-basename files kept their own content
    assert (out / "targets/ort/model.onnx").read_bytes() != (out / "targets/ort-int8/model.onnx").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_list_tags_and_tags_are_immutable(make_bundle, tmp_path, keys):
    """Issue 11 #15: a tag holding other content is not moved (exit 2, both digests) unless --force."""
    reg = tmp_path / "reg" / "tiny"
    first = registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:1.0.0")
    assert registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:1.0.0")["digest"] == first["digest"]  # idempotent
    second = registry.push(make_bundle("1.1.0", 5.0, "two"), f"layout:{reg}:1.1.0")
    rebuilt = make_bundle("1.0.0", 7.0, "three")
    before = index(reg)
    r = run_cli("publish", rebuilt, f"layout:{reg}:1.0.0", "--key", keys[1])
    assert r.returncode == 2 and first["digest"] in r.stderr and "refusing to move it" in r.stderr and "--force" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and index(reg) == before
    moved = registry.push(rebuilt, f"layout:{reg}:1.0.0", trust=keys[1], force=True)["digest"]
    assert tagged(reg)["1.0.0"]["digest"] == moved and moved not in (first["digest"], second["digest"])
    tags = registry.list_tags(reg)
    assert [t["tag"] for t in tags] == ["1.0.0", "1.1.0"]  # one entry per tag; referrers are not tags
    row = next(t for t in tags if t["tag"] == "1.1.0")
    assert row == {"tag": "1.1.0", "digest": second["digest"], "created": "2025-01-02T03:04:05Z", "name": "tiny",
                   "targets": ["ort", "ort-int8"]}
    assert registry.list_tags(f"layout:{reg}") == tags
    out = tmp_path / "out"
    registry.pull(f"layout:{reg}@{first['digest']}", out, keys[1])  # by digest: the old content stays reachable
    assert json.loads((out / "edgepack.json").read_text())["version"] == "1.0.0"


def test_downgrade_tag_repointed_or_other_name_is_refused(make_bundle, keys, tmp_path):
    """Issue 11 #2: tag 1.0.1 re-pointed at the signed 1.0.0 artifact must not pull or verify as OK."""
    import shutil

    reg = tmp_path / "reg" / "tiny"
    old = registry.push(make_bundle("1.0.0"), f"layout:{reg}:1.0.0")
    idx = index(reg)
    entry = dict(tagged(reg)["1.0.0"], annotations={**tagged(reg)["1.0.0"]["annotations"], REF_NAME: "1.0.1"})
    idx["manifests"].append(entry)
    (reg / "index.json").write_text(json.dumps(idx))
    r = run_cli("pull", f"layout:{reg}:1.0.1", "-o", tmp_path / "out", "--key", keys[1])
    assert r.returncode == 4 and "version '1.0.0'" in r.stderr and "tag is '1.0.1'" in r.stderr, r.stderr
    with pytest.raises(VerificationError, match="version '1.0.0' but the reference's tag is '1.0.1'"):
        registry.verify(f"layout:{reg}:1.0.1", keys[1])
    assert not (tmp_path / "out").exists()
    other = tmp_path / "reg" / "other"  # the same signed bytes under another model's name, pinned by digest
    shutil.copytree(reg, other)
    with pytest.raises(VerificationError, match="name 'tiny' but the reference names 'other'"):
        registry.pull(f"layout:{other}@{old['digest']}", tmp_path / "out", keys[1])
    registry.pull(f"layout:{reg}@{old['digest']}", tmp_path / "out", keys[1])
    with pytest.raises(BadInputError, match="version '1.0.0' but the reference's tag is 'stable'"):
        registry.push(make_bundle("1.0.0"), f"layout:{reg}:stable")  # nor published under another tag


def test_pull_refuses_a_folder_edgepack_did_not_write(make_bundle, keys, tmp_path):
    """Issue 11 #9: -o DIR holding edgepack.json next to the user's files is not replaced without --force."""
    reg = tmp_path / "reg" / "tiny"
    b = make_bundle()
    registry.push(b, f"layout:{reg}:1.0.0")
    out = tmp_path / "out"
    out.mkdir()
    (out / "edgepack.json").write_bytes((b / "edgepack.json").read_bytes())  # a real manifest, next to user files
    (out / "notes.txt").write_text("mine")
    r = run_cli("pull", f"layout:{reg}:1.0.0", "-o", out, "--key", keys[1])
    assert r.returncode == 2 and "holds notes.txt" in r.stderr and "--force" in r.stderr, r.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "thesis.tex").write_text("mine")
    with pytest.raises(BadInputError, match="holds no bundle written by edgepack; refusing to replace it"):
        registry.pull(f"layout:{reg}:1.0.0", plain, keys[1])
    assert (out / "notes.txt").read_text() == "mine" and (plain / "thesis.tex").read_text() == "mine"
    registry.pull(f"layout:{reg}:1.0.0", out, keys[1], force=True)
    assert not (out / "notes.txt").exists() and (out / "targets/ort/model.onnx").is_file()
    registry.pull(f"layout:{reg}:1.0.0", out, keys[1])  # a bundle edgepack wrote: replaced without --force
    registry.pull(f"layout:{reg}:1.0.0", plain, keys[1], force=True)
    assert not (plain / "thesis.tex").exists()


@pytest.mark.parametrize("damage", ["garbage", "symlink", "extra"])
def test_publish_verifies_before_the_first_byte(make_bundle, keys, tmp_path, damage):
    """Issue 11 #10: a garbage or symlinked model.sig, or an extra file in signatures/, is refused."""
    b = make_bundle()
    sig = b / "signatures" / "model.sig"
    if damage == "garbage":
        sig.write_bytes(b'{"not": "a signature"}')
    elif damage == "symlink":
        real = tmp_path / "elsewhere.sig"
        real.write_bytes(sig.read_bytes())
        sig.unlink()
        sig.symlink_to(real)
    else:
        (b / "signatures" / "extra.sig").write_bytes(b"x")
    reg = tmp_path / "reg" / "tiny"
    r = run_cli("publish", b, f"layout:{reg}:1.0.0", "--key", keys[1])
    assert r.returncode == 4 and "nothing was published" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(VerificationError, match="nothing was published"):
        registry.push(b, f"layout:{reg}:1.0.0")  # the library call (as build uses it) checks too
    assert not reg.exists()


def test_corrupted_blob_detected_and_nothing_left(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg" / "tiny"
    res = registry.push(make_bundle(), f"layout:{reg}:1.0.0")
    p = blob(reg, layer_of(reg, res["digest"], "targets/ort/model.onnx")["digest"])
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    out = tmp_path / "pulled"
    with pytest.raises(VerificationError, match=r"^targets/ort/model\.onnx: blob sha256:[0-9a-f]{64} does not match"):
        registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    p.unlink()
    with pytest.raises(VerificationError, match=r"blob .* is missing"):
        registry.pull(f"layout:{reg}:1.0.0", out, keys[1])
    assert not out.exists()


@pytest.mark.parametrize("form", ["index", "single"])
def test_layout_blob_that_is_not_a_regular_file_is_refused(make_bundle, keys, tmp_path, form):
    """Issue 11 #4: a layout blob symlinked to /dev/zero is refused, not streamed onto the disk."""
    b = make_bundle()
    reg = tmp_path / "reg" / "tiny"
    top = registry.push(b, f"layout:{reg}:1.0.0")["digest"] if form == "index" else legacy_push(b, reg, "1.0.0")
    p = blob(reg, layer_of(reg, top, "targets/ort/model.onnx")["digest"])
    p.unlink()
    p.symlink_to("/dev/zero")
    r = run_cli("pull", f"layout:{reg}:1.0.0", "-o", tmp_path / "out", "--key", keys[1], timeout=60)  # a reader without
    assert r.returncode == 4 and "not a regular file" in r.stderr, r.stderr  # the check would fill the disk: bounded
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_pull_with_wrong_key_leaves_old_bundle(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg" / "tiny"
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
    reg = tmp_path / "reg" / "tiny"
    registry.push(make_bundle("1.0.0", name="one"), f"layout:{reg}:1.0.0")
    registry.push(make_bundle("1.1.0", name="two"), f"layout:{reg}:1.1.0")
    with pytest.raises(BadInputError, match=r"tag '2\.0\.0' not found in .*; available tags: 1\.0\.0, 1\.1\.0$"):
        registry.pull(f"layout:{reg}:2.0.0", tmp_path / "out", keys[1])
    with pytest.raises(BadInputError, match="no OCI image layout"):
        registry.pull(f"layout:{tmp_path / 'nothing'}:1.0.0", tmp_path / "out", keys[1])
    assert not (tmp_path / "out").exists()


def test_unwritable_registry_and_unsigned_bundle(make_bundle, tmp_path):
    (tmp_path / "afile").write_text("x")
    bad = tmp_path / "afile" / "tiny"
    with pytest.raises(BadInputError, match=rf"cannot write registry {bad}"):
        registry.push(make_bundle(), f"layout:{bad}:1.0.0")
    b = make_bundle()
    (b / "signatures" / "model.sig").unlink()
    with pytest.raises(BadInputError, match="is not signed"):
        registry.push(b, f"layout:{tmp_path / 'tiny'}:1.0.0")
    assert not (tmp_path / "tiny").exists()


def test_concurrent_pushes_to_a_new_layout_keep_every_tag(make_bundle, keys, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    bundles, reg = [make_bundle(f"1.0.{i}", name=f"b{i}") for i in range(6)], tmp_path / "reg" / "tiny"
    with ThreadPoolExecutor(6) as ex:  # separate flocks per call, as separate processes would take
        list(ex.map(lambda i: registry.push(bundles[i], f"layout:{reg}:1.0.{i}"), range(6)))
    assert sorted(t["tag"] for t in registry.list_tags(reg)) == sorted(f"1.0.{i}" for i in range(6))
    assert [p.name for p in (reg / "blobs" / "sha256").iterdir() if p.name.startswith(".")] == []
    registry.pull(f"layout:{reg}:1.0.4", tmp_path / "out", keys[1])


def test_interrupted_push_leaves_no_tag_and_a_rerun_completes_it(make_bundle, keys, tmp_path, monkeypatch):
    reg = tmp_path / "reg" / "tiny"
    first = registry.push(make_bundle("1.0.0", 2.0, "one"), f"layout:{reg}:1.0.0")
    real, calls = layout._put_file, []

    def dies_on_second_blob(*a, **k):
        calls.append(a)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is interrupted mid-push
        return real(*a, **k)

    b2 = make_bundle("2.0.0", 9.0, "two")
    monkeypatch.setattr(layout, "_put_file", dies_on_second_blob)
    with pytest.raises(KeyboardInterrupt):
        registry.push(b2, f"layout:{reg}:2.0.0")
    monkeypatch.undo()
    assert list(tagged(reg)) == ["1.0.0"] and tagged(reg)["1.0.0"]["digest"] == first["digest"]
    registry.push(b2, f"layout:{reg}:2.0.0")
    registry.pull(f"layout:{reg}:2.0.0", tmp_path / "out", keys[1])
    assert json.loads((tmp_path / "out" / "edgepack.json").read_text())["version"] == "2.0.0"


def test_unsafe_layer_title_rejected_in_an_old_layout(make_bundle, keys, tmp_path):
    reg = tmp_path / "reg" / "tiny"
    digest = legacy_push(make_bundle(), reg, "1.0.0")
    man = json.loads(blob(reg, digest).read_text())
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


def test_one_signature_module_for_bundles_and_registries():
    """Issue 11 #15: signature checks live in edgepack.bundle.sigcheck, which imports no registry code."""
    import subprocess
    import sys

    code = ("import sys, edgepack.bundle.sigcheck, edgepack.bundle.sign; "
            "print(sorted(m for m in sys.modules if m.startswith('edgepack.registry')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    assert not (Path(layout.__file__).parent / "sigcheck.py").exists()


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

"""Remote OCI registry: a real CNCF distribution server on 127.0.0.1 (with and without htpasswd auth).

Real signing, real HTTP, real tampering of the registry's on-disk storage; skopeo and oras-py as
independent readers. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgepack import registry
from edgepack.bundle import keygen, sign_bundle, write_bundle
from edgepack.bundle.provenance import write_provenance
from edgepack.devices import DeviceProfile
from edgepack.errors import BadInputError, EdgepackError, VerificationError
from edgepack.registry.http import RemoteStore

sys.path.insert(0, str(Path(__file__).parent))
from conftest import run_cli
from registry_server import PASSWORD, USER, RegistryServer, available
from test_registry_layout import legacy_push

pytestmark = [pytest.mark.registry, pytest.mark.skipif(available() is not None, reason=available() or "")]

INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("registry")) as s:
        yield s


@pytest.fixture(scope="module")
def reg_auth(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("registry-auth"), auth=True) as s:
        yield s


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return keygen(d / "dev.pem"), keygen(d / "other.pem")


def _bytes(seed: str, n: int) -> bytes:
    """Deterministic incompressible bytes."""
    blocks, block = [], seed.encode()
    for _ in range(n // 32 + 1):
        block = hashlib.sha256(block).digest()
        blocks.append(block)
    return b"".join(blocks)[:n]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    """Three targets; two share the basename model.onnx; ort-int8 is the fastest validated one."""
    root = tmp_path_factory.mktemp("bundle")
    src = root / "src"
    src.mkdir()
    (src / "a.onnx").write_bytes(_bytes("fp32", 5000))
    (src / "b.onnx").write_bytes(_bytes("int8", 3000))
    (src / "ov").mkdir()
    (src / "ov" / "model.xml").write_bytes(b"<net/>")
    (src / "ov" / "model.bin").write_bytes(_bytes("ov", 700))
    files = {"targets/ort/model.onnx": src / "a.onnx", "targets/ort-int8/model.onnx": src / "b.onnx", "targets/ov/model": src / "ov"}
    t = {"ort": ("onnxruntime", "fp32", ["local", "pi5"]), "ort-int8": ("onnxruntime", "int8", ["local"]), "ov": ("openvino", "fp32", [])}
    manifest = {
        "name": "tiny", "version": "1.2.0", "created": "2026-01-02T03:04:05Z", "recipe_sha256": "ab" * 32,
        "source": {"format": "onnx", "sha256": "cd" * 32},
        "targets": {tid: {"path": f"targets/{tid}/model" + ("" if tid == "ov" else ".onnx"), "runtime": rt, "precision": p,
                          "validated_on": v} for tid, (rt, p, v) in t.items()},
    }
    report = {"targets": {
        "ort": {"devices": {"local": {"status": "ok", "latency": {"p50_ms": 2.0}}, "pi5": {"status": "ok", "latency": {"p50_ms": 9.0}}}},
        "ort-int8": {"devices": {"local": {"status": "ok", "latency": {"p50_ms": 1.0}}}},
    }}
    prov = write_provenance(root / "provenance.json", files, manifest, keys[0][0], "2026-01-02T03:00:00Z",
                            "2026-01-02T03:04:05Z", "recipe.yaml")
    b = write_bundle(root / "bundle", {**files, "provenance.json": prov}, manifest, report)
    sign_bundle(b, keys[0][0])
    return b


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def store(reg, repo) -> RemoteStore:
    return RemoteStore(reg.host, repo)


def manifest_doc(reg, repo, ref) -> tuple[dict, str]:
    data, _, digest = store(reg, repo).get_manifest(ref)
    return json.loads(data), digest


# ------------------------------------------------------------------ format and round trips


def test_push_makes_per_target_index_and_pull_is_byte_identical(reg, bundle, keys, tmp_path):
    res = registry.push(bundle, f"{reg.host}/team/tiny:1.2.0")
    index, digest = manifest_doc(reg, "team/tiny", "1.2.0")
    assert digest == res["digest"] and index["mediaType"] == INDEX
    assert index["artifactType"] == "application/vnd.edgepack.bundle.v1"
    ann = index["annotations"]
    assert ann["org.opencontainers.image.title"] == "tiny" and ann["org.opencontainers.image.version"] == "1.2.0"
    assert ann["dev.edgepack.targets"] == "ort,ort-int8,ov" and ann["dev.edgepack.source.digest"] == "sha256:" + "cd" * 32
    assert ann["org.opencontainers.image.created"] == "2026-01-02T03:04:05Z"
    by_target = {e["annotations"]["dev.edgepack.target"]: e for e in index["manifests"]}
    assert set(by_target) == {"ort", "ort-int8", "ov"}
    assert by_target["ort"]["annotations"]["dev.edgepack.validated-on"] == "local,pi5"
    assert by_target["ort-int8"]["annotations"]["dev.edgepack.precision"] == "int8"
    ov, _ = manifest_doc(reg, "team/tiny", by_target["ov"]["digest"])
    titles = [layer["annotations"]["org.opencontainers.image.title"] for layer in ov["layers"]]
    assert titles == ["provenance.json", "report.json", "targets/ov/model/model.bin", "targets/ov/model/model.xml"]  # full paths, no collisions
    cfg = store(reg, "team/tiny").read_blob(ov["config"]["digest"])
    assert cfg == (bundle / "edgepack.json").read_bytes()
    out = tmp_path / "pulled"
    info = registry.pull(f"{reg.host}/team/tiny:1.2.0", out, keys[0][1])
    assert tree(out) == tree(bundle) and not info["partial"]
    assert leftovers(tmp_path) == []


def test_signature_is_a_referrer_with_tag_schema_fallback(reg, bundle):
    res = registry.push(bundle, f"{reg.host}/sig/tiny:1.2.0")
    fallback = "sha256-" + res["digest"].split(":")[1]
    tags = store(reg, "sig/tiny").tags()
    assert fallback in tags  # distribution 2.8 has no referrers API, so the fallback tag is written
    refs, _ = manifest_doc(reg, "sig/tiny", fallback)
    [entry] = refs["manifests"]
    assert entry["artifactType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    sig_manifest, _ = manifest_doc(reg, "sig/tiny", entry["digest"])
    assert sig_manifest["subject"]["digest"] == res["digest"]
    assert store(reg, "sig/tiny").read_blob(sig_manifest["layers"][0]["digest"]) == (bundle / "signatures" / "model.sig").read_bytes()
    index, _ = manifest_doc(reg, "sig/tiny", "1.2.0")
    for e in index["manifests"]:  # every target manifest carries the signature too
        assert "sha256-" + e["digest"].split(":")[1] in tags


def test_pull_for_device_takes_only_the_best_validated_target(reg, bundle, keys, tmp_path):
    registry.push(bundle, f"{reg.host}/dev/tiny:1.2.0")
    local = DeviceProfile(name="local", runtimes=["onnxruntime", "openvino"])
    info = registry.pull(f"{reg.host}/dev/tiny:1.2.0", tmp_path / "local", keys[0][1], device=local)
    assert info["targets"] == ["ort-int8"] and info["partial"] and info["selection"]["p50_ms"] == 1.0
    assert info["provenance"] == "verified"
    got = tree(tmp_path / "local")
    assert "targets/ort-int8/model.onnx" in got and not any(k.startswith(("targets/ort/", "targets/ov/")) for k in got)
    pi = DeviceProfile(name="pi5", runtimes=["onnxruntime"])
    assert registry.pull(f"{reg.host}/dev/tiny:1.2.0", tmp_path / "pi", keys[0][1], device=pi)["targets"] == ["ort"]
    jetson = DeviceProfile(name="jetson", runtimes=["tensorrt"])
    with pytest.raises(BadInputError, match="no target was validated on device 'jetson'"):
        registry.pull(f"{reg.host}/dev/tiny:1.2.0", tmp_path / "jetson", keys[0][1], device=jetson)
    assert not (tmp_path / "jetson").exists()


def test_large_file_uploads_in_chunks(reg, bundle, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_REGISTRY_CHUNK", "1024")  # the 5000-byte model goes in 5 PATCHes
    registry.push(bundle, f"{reg.host}/chunks/tiny:1.2.0")
    registry.pull(f"{reg.host}/chunks/tiny:1.2.0", tmp_path / "out", keys[0][1])
    assert tree(tmp_path / "out") == tree(bundle)


def test_verify_remote_without_download_and_wrong_key(reg, bundle, keys):
    registry.push(bundle, f"{reg.host}/verify/tiny:1.2.0")
    info = registry.verify(f"{reg.host}/verify/tiny:1.2.0", keys[0][1])
    assert info["targets"] == ["ort", "ort-int8", "ov"] and info["layers_checked"] == 7
    with pytest.raises(VerificationError, match="signed by a different key"):
        registry.verify(f"{reg.host}/verify/tiny:1.2.0", keys[1][1])


def test_ls_and_copy_preserve_digests(reg, bundle, keys, tmp_path):
    res = registry.push(bundle, f"{reg.host}/copy/tiny:1.2.0")
    layout = tmp_path / "layout" / "tiny"
    c1 = registry.copy(f"{reg.host}/copy/tiny:1.2.0", f"layout:{layout}:1.2.0", keys[0][1])
    assert c1["digest"] == res["digest"]
    c2 = registry.copy(f"layout:{layout}:1.2.0", f"{reg.host}/mirror/tiny:1.2.0", keys[0][1])
    assert c2["digest"] == res["digest"] and manifest_doc(reg, "mirror/tiny", "1.2.0")[1] == res["digest"]
    for ref in (f"layout:{layout}:1.2.0", f"{reg.host}/mirror/tiny:1.2.0"):
        registry.pull(ref, tmp_path / "out", keys[0][1])
        assert tree(tmp_path / "out") == tree(bundle)
    [row] = registry.list_tags(f"{reg.host}/mirror/tiny")  # no sha256-* fallback tags listed
    assert row["tag"] == "1.2.0" and row["signed"] and row["digest"] == res["digest"]
    t = {x["target"]: x for x in row["targets"]}
    assert t["ort"]["validated_on"] == ["local", "pi5"] and t["ov"]["validated_on"] == []
    shared = sum((bundle / f).stat().st_size for f in ("report.json", "provenance.json"))
    assert t["ort-int8"]["size"] == 3000 + shared


def test_one_oci_form_one_digest_everywhere_and_old_layouts_still_read(reg, bundle, keys, tmp_path):
    """Issue 11 #15: the embedded layout holds the same image index as a registry (one digest to pin)."""
    direct = registry.push(bundle, f"layout:{tmp_path / 'embedded' / 'tiny'}:1.2.0")
    remote = registry.push(bundle, f"{reg.host}/form/tiny:1.2.0")
    assert direct["digest"] == remote["digest"]
    [entry] = [m for m in json.loads((tmp_path / "embedded/tiny/index.json").read_text())["manifests"]
               if "org.opencontainers.image.ref.name" in (m.get("annotations") or {})]
    assert entry["mediaType"] == INDEX and entry["digest"] == remote["digest"]
    # a layout written before (single manifest, signature as a layer) still pulls, verifies and copies
    old = legacy_push(bundle, tmp_path / "old" / "tiny", "1.2.0")
    assert registry.verify(f"layout:{tmp_path / 'old' / 'tiny'}:1.2.0", keys[0][1])["kind"] == "single"
    registry.pull(f"layout:{tmp_path / 'old' / 'tiny'}:1.2.0", tmp_path / "whole", keys[0][1])
    assert tree(tmp_path / "whole") == tree(bundle)
    c3 = registry.copy(f"layout:{tmp_path / 'old' / 'tiny'}:1.2.0", f"{reg.host}/legacy/tiny:1.2.0", keys[0][1])
    assert c3["digest"] == old
    one = registry.pull(f"{reg.host}/legacy/tiny:1.2.0", tmp_path / "one", keys[0][1], target="ov")
    assert one["targets"] == ["ov"] and sorted(tree(tmp_path / "one")) == [
        "edgepack.json", "provenance.json", "report.json", "signatures/model.sig", "targets/ov/model/model.bin",
        "targets/ov/model/model.xml"]


# ------------------------------------------------------------------ faults


def test_corrupted_blob_in_registry_storage(reg, bundle, keys, tmp_path):
    registry.push(bundle, f"{reg.host}/corrupt/tiny:1.2.0")
    digest = "sha256:" + hashlib.sha256((bundle / "targets/ort/model.onnx").read_bytes()).hexdigest()
    blob = reg.blob_path(digest)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF  # same size: only a re-hash notices
    blob.write_bytes(bytes(data))
    try:
        with pytest.raises(VerificationError, match="targets/ort/model.onnx: blob .* does not match"):
            registry.pull(f"{reg.host}/corrupt/tiny:1.2.0", tmp_path / "out", keys[0][1])
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    finally:
        data[100] ^= 0xFF
        blob.write_bytes(bytes(data))


def test_edited_manifest_in_storage_and_repushed_forgery(reg, bundle, keys, tmp_path):
    res = registry.push(bundle, f"{reg.host}/forge/tiny:1.2.0")
    index, _ = manifest_doc(reg, "forge/tiny", "1.2.0")
    target_digest = index["manifests"][0]["digest"]
    path = reg.blob_path(target_digest)
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"ort"', b'"oRt"'))  # an edit on disk, same length
    try:
        with pytest.raises(VerificationError, match="does not match its digest"):
            registry.pull(f"{reg.host}/forge/tiny:1.2.0", tmp_path / "out", keys[0][1])
    finally:
        path.write_bytes(original)
    # A consistent forgery: swap ort's model for ort-int8's (valid digests everywhere) and re-tag.
    s = store(reg, "forge/tiny")
    doc, _ = manifest_doc(reg, "forge/tiny", target_digest)
    swap = "sha256:" + hashlib.sha256((bundle / "targets/ort-int8/model.onnx").read_bytes()).hexdigest()
    for layer in doc["layers"]:
        if layer["annotations"]["org.opencontainers.image.title"] == "targets/ort/model.onnx":
            layer.update(digest=swap, size=3000)
    forged = json.dumps(doc).encode()
    fd = "sha256:" + hashlib.sha256(forged).hexdigest()
    s.put_manifest(forged, doc["mediaType"], fd)
    index["manifests"][0].update(digest=fd, size=len(forged))
    s.put_manifest(json.dumps(index).encode(), INDEX, "1.2.0")
    # the signature is still attached to the old index digest only
    with pytest.raises(VerificationError, match="no signature found"):
        registry.pull(f"{reg.host}/forge/tiny:1.2.0", tmp_path / "out", keys[0][1])
    # ... and copying the genuine signature onto the forged index does not help either
    from edgepack.registry.index import attach_referrer, fallback_tag, list_referrers

    sig_ref = list_referrers(s, res["digest"])[0]
    sig_doc, _ = manifest_doc(reg, "forge/tiny", sig_ref["digest"])
    raw, _, new_digest = s.get_manifest("1.2.0")
    sig_doc["subject"] = {"mediaType": INDEX, "digest": new_digest, "size": len(raw)}
    attach_referrer(s, json.dumps(sig_doc).encode(), sig_doc["subject"])
    assert fallback_tag(new_digest) in s.tags()
    with pytest.raises(VerificationError, match="targets/ort/model.onnx: registry digest .* differs from the signed digest"):
        registry.pull(f"{reg.host}/forge/tiny:1.2.0", tmp_path / "out", keys[0][1])
    assert not (tmp_path / "out").exists()


def test_missing_signature_wrong_key_exit_codes(reg, bundle, keys, tmp_path):
    res = registry.push(bundle, f"{reg.host}/nosig/tiny:1.2.0")
    ref = f"{reg.host}/nosig/tiny:1.2.0"
    r = run_cli("pull", ref, "-o", tmp_path / "out", "--key", keys[1][1])
    assert r.returncode == 4 and "signed by a different key" in r.stderr and not (tmp_path / "out").exists()
    r = run_cli("verify", ref, "--key", keys[0][1])
    assert r.returncode == 0 and "7 layer digests match" in r.stdout
    fallback = "sha256-" + res["digest"].split(":")[1]
    s = store(reg, "nosig/tiny")
    _, _, fdigest = s.get_manifest(fallback)
    s._request("DELETE", f"manifests/{fdigest}", "deleting the signature index", ok=(202,))
    r = run_cli("pull", ref, "-o", tmp_path / "out", "--key", keys[0][1])
    assert r.returncode == 4 and "no signature found" in r.stderr and not (tmp_path / "out").exists()
    r = run_cli("pull", f"{reg.host}/nosig/tiny:9.9", "-o", tmp_path / "out", "--key", keys[0][1])
    assert r.returncode == 2 and "not found" in r.stderr


def test_unreachable_registry(bundle, keys, tmp_path):
    from registry_server import free_port

    host = f"127.0.0.1:{free_port()}"
    with pytest.raises(EdgepackError, match=f"registry {host} is unreachable"):
        registry.push(bundle, f"{host}/x/tiny:1.2.0")
    r = run_cli("pull", f"{host}/x/tiny:1.2.0", "-o", tmp_path / "out", "--key", keys[0][1])
    assert r.returncode == 1 and "unreachable" in r.stderr and not (tmp_path / "out").exists()


def test_interrupted_push_leaves_no_tag(reg, bundle, keys, tmp_path):
    big = tmp_path / "big"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "m.onnx").write_bytes(_bytes("big", 2 << 20))
    b = write_bundle(big, {"targets/m/m.onnx": tmp_path / "src" / "m.onnx"},
                     {"name": "big", "version": "1", "targets": {"m": {"path": "targets/m/m.onnx", "runtime": "onnxruntime"}}}, {})
    sign_bundle(b, keys[0][0])
    code = f"from edgepack import registry; registry.push({str(b)!r}, {reg.host + '/team/big:1'!r})"
    env = {**os.environ, "EDGEPACK_REGISTRY_CHUNK": "2048"}  # ~1000 PATCH requests: slow enough to interrupt
    p = subprocess.Popen([sys.executable, "-c", code], env=env)
    uploads = reg.storage / "docker" / "registry" / "v2" / "repositories" / "team" / "big" / "_uploads"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (uploads.is_dir() and any(uploads.iterdir())):
        time.sleep(0.02)
    time.sleep(0.3)
    assert p.poll() is None, "the push finished before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert "1" not in store(reg, "team/big").tags()
    with pytest.raises(BadInputError, match="not found"):
        registry.pull(f"{reg.host}/team/big:1", tmp_path / "out", keys[0][1])
    registry.push(b, f"{reg.host}/team/big:1")  # a re-run completes it
    registry.pull(f"{reg.host}/team/big:1", tmp_path / "out", keys[0][1])
    assert tree(tmp_path / "out") == tree(b)


# ------------------------------------------------------------------ auth


def test_htpasswd_auth_from_env_and_docker_config(reg_auth, bundle, keys, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPACK_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("EDGEPACK_REGISTRY_PASSWORD", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    ref = f"{reg_auth.host}/auth/tiny:1.2.0"
    with pytest.raises(BadInputError, match="401 unauthorized.*no credentials found"):
        registry.push(bundle, ref)
    wrong = {"EDGEPACK_REGISTRY_AUTH": json.dumps({reg_auth.host: {"username": USER, "password": "wrong"}})}
    r = run_cli("publish", bundle, ref, "--key", keys[0][1], env=wrong)
    assert r.returncode == 2 and "401 unauthorized" in r.stderr and "wrong" not in r.stderr
    r = run_cli("publish", bundle, ref, "--key", keys[0][1], env=reg_auth.env)
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"auths": {reg_auth.host: {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    info = registry.pull(ref, tmp_path / "out", keys[0][1])
    assert tree(tmp_path / "out") == tree(bundle) and info["digest"].startswith("sha256:")
    secret = PASSWORD.encode()
    assert not any(secret in p.read_bytes() for p in reg_auth.storage.rglob("*") if p.is_file())


def test_build_preflight_refuses_registry_before_any_stage(reg_auth, digits_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    r = run_cli("build", digits_recipe, "-o", tmp_path / "denied", "--registry", f"{reg_auth.host}/team/digits", cwd=tmp_path)
    assert r.returncode == 2 and "401 unauthorized" in r.stderr and not (tmp_path / "denied").exists()
    assert "convert" not in r.stdout  # no stage ran


# ------------------------------------------------------------------ interoperability


def test_skopeo_and_oras_read_what_edgepack_pushed(reg, bundle, tmp_path):
    import shutil

    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed (scripts/setup-tests.sh installs it)")
    res = registry.push(bundle, f"{reg.host}/interop/tiny:1.2.0")
    out = tmp_path / "skopeo"
    r = subprocess.run(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{reg.host}/interop/tiny:1.2.0", f"oci:{out}:1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    [top] = json.loads((out / "index.json").read_text())["manifests"]
    blobs = out / "blobs" / "sha256"
    index = json.loads((blobs / top["digest"].split(":")[1]).read_bytes())
    ours, _ = manifest_doc(reg, "interop/tiny", res["digest"])
    # skopeo 1.9 re-serializes the index (it drops artifactType) but keeps every target manifest byte for byte
    assert [e["digest"] for e in index["manifests"]] == [e["digest"] for e in ours["manifests"]]
    got = {}
    for e in index["manifests"]:
        m = json.loads((blobs / e["digest"].split(":")[1]).read_bytes())
        for layer in m["layers"]:
            got[layer["annotations"]["org.opencontainers.image.title"]] = (blobs / layer["digest"].split(":")[1]).read_bytes()
    assert got == {k: v for k, v in tree(bundle).items() if k not in ("edgepack.json", "signatures/model.sig")}
    try:
        import oras.client
    except ImportError:
        return
    m_digest = index["manifests"][0]["digest"]
    oras.client.OrasClient(insecure=True).pull(target=f"{reg.host}/interop/tiny@{m_digest}", outdir=str(tmp_path / "oras"))
    assert (tmp_path / "oras" / "targets/ort/model.onnx").read_bytes() == (bundle / "targets/ort/model.onnx").read_bytes()


# ------------------------------------------------------------------ company PKI

from conftest import make_pki as _pki  # noqa: E402


def test_certificate_chain_trust(reg, bundle, tmp_path):
    import shutil

    from model_signing import signing

    from edgepack.bundle.sign import _hashing_config
    from edgepack.bundle.sigcheck import Trust

    acme, other = _pki(tmp_path / "pki", "acme"), _pki(tmp_path / "pki", "other")
    b = tmp_path / "cert-bundle"
    shutil.copytree(bundle, b)
    (b / "signatures" / "model.sig").unlink()
    cfg = signing.Config().use_certificate_signer(private_key=acme["key"], signing_certificate=acme["leaf"],
                                                 certificate_chain=[acme["ca"]])
    cfg.set_hashing_config(_hashing_config()).sign(b, tmp_path / "model.sig")
    shutil.copy(tmp_path / "model.sig", b / "signatures" / "model.sig")
    registry.push(b, f"{reg.host}/pki/tiny:1.2.0")
    info = registry.pull(f"{reg.host}/pki/tiny:1.2.0", tmp_path / "out", Trust(cert_chain=(acme["ca"],)), target="ov")
    assert info["targets"] == ["ov"] and (tmp_path / "out/targets/ov/model/model.bin").is_file()
    with pytest.raises(VerificationError, match="not verified with certificate chain"):
        registry.verify(f"{reg.host}/pki/tiny:1.2.0", Trust(cert_chain=(other["ca"],)))
    r = run_cli("verify", f"{reg.host}/pki/tiny:1.2.0", "--cert-chain", acme["ca"])
    assert r.returncode == 0, r.stderr

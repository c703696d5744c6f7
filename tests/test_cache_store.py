"""The shared cache store: two cache directories sharing one backend (a real docker-registry, or a
directory), entries verified by digest on read, a tampered shared entry refused and never kept."""

from __future__ import annotations

import io
import json

import pytest
from registry_server import RegistryServer, available
from test_engine import Copy, _input

from edgepack.cache import StageCache, check_entry
from edgepack.cache_store import store_for
from edgepack.engine import Engine, Progress

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("cache-registry")) as s:
        yield s


def _stores(registry, tmp_path):
    return {"oci": f"oci://{registry.host}/edgepack-cache/{tmp_path.name.lower().replace('_', '-')}",
            "file": f"file://{tmp_path / 'shared'}"}


@pytest.mark.parametrize("kind", ["oci", "file"])
def test_a_second_cache_directory_hits_what_the_first_pushed(registry, tmp_path, kind):
    url = _stores(registry, tmp_path)[kind]
    x = _input(tmp_path, b"model bytes" * 100)
    first = Engine(StageCache(tmp_path / "a", store=store_for(url))).run("copy", Copy(), {"x": x})
    assert not first.cached
    out = io.StringIO()
    eng = Engine(StageCache(tmp_path / "b", store=store_for(url)), Progress(stream=out))
    again = eng.run("copy", Copy(), {"x": x})
    assert again.cached and again.key == first.key and eng.lineage[-1]["from_store"] is True
    assert again.outputs["y"].path.is_relative_to(tmp_path / "b")  # a verified local copy, not the other cache's file
    assert again.outputs["y"].path.read_bytes() == b"model bytes" * 100 and again.outputs["y"].digest == first.outputs["y"].digest
    assert "from the shared store" in out.getvalue()
    assert check_entry(again.outputs["y"].path.parent, json.loads((again.outputs["y"].path.parent / "entry.json").read_text())["files"]) is None
    assert Engine(StageCache(tmp_path / "b", store=store_for(url))).run("copy", Copy(), {"x": x}).cached  # now a local hit
    assert not Engine(StageCache(tmp_path / "c")).run("copy", Copy(), {"x": x}).cached  # no store: nothing shared


def _tamper(registry, tmp_path, kind, key, digest):
    if kind == "oci":
        blob = registry.blob_path(f"sha256:{digest}")
    else:
        blob = tmp_path / "shared" / key[:2] / key / "out.bin"
    data = bytearray(blob.read_bytes())
    data[0] ^= 0xFF  # same size: only the digest tells
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["oci", "file"])
def test_a_tampered_shared_entry_is_refused_by_digest_and_the_stage_reruns(registry, tmp_path, kind):
    url = _stores(registry, tmp_path)[kind]
    x = _input(tmp_path, b"the real model, unique to " + kind.encode())
    first = Engine(StageCache(tmp_path / "a", store=store_for(url))).run("copy", Copy(), {"x": x})
    _tamper(registry, tmp_path, kind, first.key, first.outputs["y"].digest)
    out = io.StringIO()
    cache = StageCache(tmp_path / "b", store=store_for(url))
    eng = Engine(cache, Progress(stream=out))
    again = eng.run("copy", Copy(), {"x": x})
    assert not again.cached  # refused, computed here instead
    assert again.outputs["y"].path.read_bytes() == b"the real model, unique to " + kind.encode()
    assert f"copy: cache entry {first.key[:12]} failed its check (shared entry in {url}: out.bin: sha256 mismatch; refused, not used); re-running" in out.getvalue()
    entry = cache.entry_dir(again.key)
    assert check_entry(entry, json.loads((entry / "entry.json").read_text())["files"]) is None  # the local entry is whole
    assert not list((tmp_path / "b" / "tmp").iterdir())  # the refused copy left nothing behind
    if kind == "file":  # the recomputed entry replaced the refused one: the next cache hits it
        assert Engine(StageCache(tmp_path / "c", store=store_for(url))).run("copy", Copy(), {"x": x}).cached


def test_a_shared_entry_whose_entry_json_disagrees_with_its_layers_is_refused(registry, tmp_path):
    url = _stores(registry, tmp_path)["oci"]
    x = _input(tmp_path, b"layers vs entry.json")
    store = store_for(url)
    first = Engine(StageCache(tmp_path / "a", store=store)).run("copy", Copy(), {"x": x})
    client = store._store()
    data, _, _ = client.get_manifest(first.key)
    manifest = json.loads(data)
    manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] = "../../escape.bin"
    client.put_manifest(json.dumps(manifest).encode(), manifest["mediaType"], first.key)
    hit, problem = StageCache(tmp_path / "b", store=store_for(url)).lookup(first.key)
    assert hit is None and "the manifest's layers are not the files entry.json lists" in problem
    assert not (tmp_path / "escape.bin").exists()


@pytest.mark.parametrize("url, msg", [("ftp://x/y", "unknown cache store 'ftp://x/y'"), ("oci://nohost", "is not oci://HOST[:PORT]/REPO"),
                                      ("file://relative/x", "is not an absolute file:// URL")])
def test_a_bad_store_url_is_bad_input_naming_the_flag(url, msg, tiny_recipe, cli):
    r = cli("build", tiny_recipe, "--no-publish", "--cache-store", url)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and "--cache-store" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_two_builds_with_separate_cache_directories_share_one_registry(registry, tiny_recipe, tmp_path, cli):
    url = f"oci://{registry.host}/edgepack-cache/builds"
    runs = []
    for name in ("a", "b"):
        r = cli("build", tiny_recipe, "--no-publish", "--cache-dir", tmp_path / f"cache-{name}", "-o", tmp_path / f"out-{name}",
                env={"EDGEPACK_CACHE_STORE": url})
        assert r.returncode == 0, r.stdout + r.stderr
        runs.append(json.loads((tmp_path / f"out-{name}" / "report.json").read_text()))
    stages = [s for s in runs[1]["stages"] if s["cached"]]
    assert stages and all(s.get("from_store") for s in stages)  # every cached stage of build b came from the store
    assert {s["name"] for s in stages} >= {"convert", "optimize[0] quantize", "compile ort"}
    assert not any(s.get("from_store") for s in runs[0]["stages"])
    manifests = [json.loads((tmp_path / f"out-{n}" / "edgepack.json").read_text()) for n in ("a", "b")]
    arts = [[f for f in m["files"] if f["path"].startswith("targets/")] for m in manifests]
    assert arts[0] and arts[0] == arts[1]  # same artifact digests (provenance and report carry times)

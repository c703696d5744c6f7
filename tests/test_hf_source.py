"""A Hugging Face folder as the build's source (issue 12/15): exactly the files loading it reads, digested with
symlinks followed (a hub snapshot is all symlinks), put into the stage cache as an input entry that a Ray task
fetches from the store and re-hashes before any stage reads it. No model is loaded here: the files are stand-ins."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from edgepack.artifact import digest_path
from edgepack.cache import ENTRY_NAME, StageCache, put_input
from edgepack.cache_store import DirStore
from edgepack.errors import StageError
from edgepack.ingest import source_artifact
from edgepack.ingest.hf import folder_files
from edgepack.recipe import load_recipe

MODEL = {"config.json": '{"model_type": "bert"}', "model.safetensors": "weights", "tokenizer.json": "{}",
         "tokenizer_config.json": "{}"}
OTHER = {"README.md": "card", "pytorch_model.bin": "other weights", ".git/HEAD": "ref"}

RECIPE = """name: hfsrc
version: 0.1.0
model: {format: hf, path: FOLDER, task: feature-extraction}
targets:
  - {type: onnxruntime, name: ort}
"""


def _write(folder: Path, files: dict) -> Path:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def _snapshot(root: Path, files: dict) -> Path:
    """The layout of a hub cache: snapshots/REV/FILE -> ../../blobs/SHA."""
    snap = root / "snapshots" / "rev1"
    for rel, text in files.items():
        blob = root / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_text(text)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).symlink_to(blob)
    return snap


def _source(tmp_path: Path, folder: Path, cache: StageCache):
    (tmp_path / "r").mkdir(exist_ok=True)
    (tmp_path / "r" / "recipe.yaml").write_text(RECIPE.replace("FOLDER", str(folder)))
    lr = load_recipe(tmp_path / "r" / "recipe.yaml")
    return source_artifact(lr.recipe.model, lr, cache)


def test_the_source_is_the_files_a_load_reads_symlinks_followed(tmp_path):
    real = _write(tmp_path / "real", {**MODEL, **OTHER})
    assert folder_files(real) == sorted(MODEL)
    cache = StageCache(tmp_path / "cache", store=DirStore(tmp_path / "store"))
    art = _source(tmp_path, real, cache)
    assert art.format == "hf" and art.path.is_relative_to(cache.root)  # stages read the cache's entry
    assert sorted(p.name for p in art.path.iterdir()) == sorted(MODEL)
    assert art.digest == digest_path(art.path) == digest_path(real, sorted(MODEL))
    assert not (tmp_path / "store").exists()  # a local build does not upload its source; a Ray build's publish does

    snap = _snapshot(tmp_path / "hub", MODEL)
    same = _source(tmp_path, snap, StageCache(tmp_path / "cache2"))
    assert same.digest == art.digest  # the symlinks' targets are hashed (they used to be skipped: one digest for every snapshot)
    assert not any(p.is_symlink() for p in same.path.iterdir()) and (same.path / "model.safetensors").read_text() == "weights"
    other = _snapshot(tmp_path / "hub2", {**MODEL, "model.safetensors": "other"})
    assert _source(tmp_path, other, StageCache(tmp_path / "cache3")).digest != art.digest


def test_a_ray_task_refuses_an_hf_input_that_does_not_hash_to_its_digest(tmp_path, monkeypatch):
    """The store's entry is rewritten consistently (files and entry.json agree): the entry check passes, the
    folder's own digest does not, and the task stops before the stage runs."""
    from edgepack.engine import Stage
    from edgepack.executors.ray import run_ray_work
    from edgepack.plan import Work

    store = DirStore(tmp_path / "store")
    coordinator = StageCache(tmp_path / "coord", store=store)
    art = _source(tmp_path, _write(tmp_path / "real", MODEL), coordinator)
    key, _ = put_input(coordinator, art)  # what the Ray executor publishes
    entry = tmp_path / "store" / key[:2] / key
    (entry / art.path.name / "model.safetensors").write_text("tampered")
    meta = json.loads((entry / ENTRY_NAME).read_text())
    rel = f"{art.path.name}/model.safetensors"
    meta["files"][rel] = {"sha256": hashlib.sha256(b"tampered").hexdigest(), "size": len(b"tampered")}
    (entry / ENTRY_NAME).write_text(json.dumps(meta))

    class Never(Stage):
        kind = "never"

        def run(self, inputs, workdir):  # pragma: no cover - must not be reached
            raise AssertionError("the stage ran on a tampered input")

    monkeypatch.setenv("EDGEPACK_CACHE", str(tmp_path / "worker"))
    with pytest.raises(StageError, match="does not hash to its digest"):
        run_ray_work(Work("compile ort", Never(), {}), {"source": key}, store.url, True)

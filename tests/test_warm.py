"""Warm rebuilds (issue 12 item 7) and streamed calibration (item 6), on the real digits recipe.

One cold build (a child process), then a fully cached rebuild in a second child that reports what
it imported and whether the op-coverage pre-flight ran; the bundle's signature is checked with
upstream model-signing's own verifier; calibration read and collected in batches gives the same quantized
model, byte for byte, as the whole-array reader and one-pass collect it replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]

WARM = r"""
import json, sys
import edgepack.targets.coverage as cov
calls = []
orig = cov.preflight
def counted(*a, **k):
    calls.append(1)
    return orig(*a, **k)
cov.preflight = counted
from edgepack.cli import main
code = 0
try:
    main(["build", sys.argv[1], "-o", sys.argv[2], "--no-publish", "--json"])
except SystemExit as e:
    code = e.code
heavy = ["torch", "sigstore", "tuf", "sklearn", "tensorflow", "model_signing.verifying", "model_signing.signing", "sigstore_models", "in_toto_attestation", "google.protobuf"]
json.dump({"code": code, "preflight": len(calls), "imported": [m for m in heavy if m in sys.modules]},
          open(sys.argv[3], "w"))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("warm")
    home = root / "home"
    shutil.copytree(REPO / "recipes" / "digits", root / "digits", ignore=shutil.ignore_patterns("__pycache__"))
    recipe, out = root / "digits" / "recipe.yaml", root / "bundle"
    env = {"EDGEPACK_HOME": str(home), "PYTHONPATH": str(REPO)}
    cold = run_cli("build", recipe, "-o", out, "--no-publish", "--json", env=env)
    assert cold.returncode == 0, cold.stderr[-2000:]
    res = root / "warm.json"
    warm = subprocess.run([sys.executable, "-c", WARM, str(recipe), str(out), str(res)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr[-2000:]
    return {"home": home, "out": out, "warm": json.loads(res.read_text())}


def test_cached_build_imports_only_what_it_needs(built):
    w = built["warm"]
    assert w["code"] == 0
    assert w["imported"] == [], f"a fully cached build imported {w['imported']}"
    assert w["preflight"] == 0, "the op-coverage pre-flight ran although every compile was cached"
    report = json.loads((built["out"] / "report.json").read_text())
    assert all(t["coverage"]["checked"] for t in report["targets"].values())  # the memoized result, not a stub


def test_upstream_model_signing_verifies_the_bundle(built):
    from model_signing import verifying

    from edgepack.bundle.sigcheck import hashing_config

    key = built["home"] / "keys" / "signing-key.pem"
    pub = key.with_name(key.stem + ".pub.pem")
    cfg = verifying.Config().use_elliptic_key_verifier(public_key=pub).set_hashing_config(hashing_config())
    cfg.verify(built["out"], built["out"] / "signatures" / "model.sig")  # raises on any mismatch
    tampered = built["out"].parent / "tampered"
    import shutil

    shutil.copytree(built["out"], tampered)
    (tampered / "report.json").write_text("{}\n")
    with pytest.raises(ValueError, match="Signature mismatch"):
        cfg.verify(tampered, tampered / "signatures" / "model.sig")


class _WholeArrayReader:
    """The calibration reader before item 6: every feed held in a list."""

    def __init__(self, npz, model_path, model=None, recipe_dir=None):
        from edgepack.data import read_npz
        from edgepack.feeding import onnx_feeds

        self._samples = onnx_feeds(model_path, read_npz(npz)[0], model, recipe_dir)
        self._it = iter(self._samples)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._samples)


def test_batched_calibration_gives_the_same_quantized_model(built, tmp_path, monkeypatch):
    from edgepack.optimize import ort_static

    calib = next(p for p in (built["home"] / "cache" / "data").glob("*.npz") if _samples(p) == 128)  # digits calibration
    model = next((built["out"] / "targets" / "ort-fp32").glob("*.onnx"))
    digests = []
    for reader, chunk in ((ort_static.NpzReader, ort_static.CALIBRATION_CHUNK), (_WholeArrayReader, None)):
        monkeypatch.setattr(ort_static, "NpzReader", reader)
        monkeypatch.setattr(ort_static, "CALIBRATION_CHUNK", chunk)  # None: ORT's one-pass collect, as before
        work = tmp_path / reader.__name__
        work.mkdir()
        ranges = ort_static.calibrate(model, calib, "minmax", None, work)
        out = work / "q.onnx"
        ort_static.quantize_with_ranges(model, out, ranges, qformat="qdq", per_channel=True, symmetric_activations=False,
                                        symmetric_weights=True, op_types=None, include=None, exclude=[])
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def _samples(npz: Path) -> int:
    with np.load(npz) as z:
        return len(z["input"])


def test_iter_batches_reads_rows_by_offset(tmp_path):
    from edgepack.data import freeze, iter_batches, npz_layout, read_data

    x = np.arange(10 * 3 * 2, dtype=np.float32).reshape(10, 3, 2)
    art = freeze({"input": x}, np.arange(10), tmp_path, "calibration")
    assert npz_layout(art.path) is not None
    got = list(iter_batches(art.path, ["input"], batch=4))
    assert [len(b["input"]) for b in got] == [4, 4, 2]
    assert np.array_equal(np.concatenate([b["input"] for b in got]), read_data(art.path)[0]["input"])
    np.savez_compressed(tmp_path / "c.npz", input=x)  # compressed (hand-made): read whole, same batches
    assert npz_layout(tmp_path / "c.npz") is None
    assert np.array_equal(np.concatenate([b["input"] for b in iter_batches(tmp_path / "c.npz", ["input"], 3)]), x)

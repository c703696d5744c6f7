"""The browser target (type: web) validated in a real headless Chromium (Debian `chromium`) with
onnxruntime-web from the npm registry (tests/ortweb.py caches the pinned package), on the digits model
and on a real pretrained model from a PyPI wheel; a missing Chromium or ort-web is one line, exit 2."""

from __future__ import annotations

import json
import re

import chromium
import numpy as np
import pytest
from conftest import run_cli
from ortweb import ort_web_package

pytestmark = pytest.mark.skipif(chromium.skip_reason() is not None, reason=chromium.skip_reason() or "")

BENCH = """benchmark:
  warmup_runs: 3
  warmup_seconds: 0
  runs: 30
  min_seconds: 0
  threads: 1
"""


@pytest.fixture(scope="module")
def ort_web():
    return ort_web_package()


def _web_recipe(recipe, targets: str, gates: str = "") -> None:
    text = recipe.read_text().split("targets:")[0]
    recipe.write_text(text + f"targets:\n{targets}devices: [chromium]\n{gates}{BENCH}")


def _device(report: dict, tid: str) -> dict:
    t = report["targets"][tid]
    assert t["status"] == "ok", t
    return t["devices"]["chromium"]


def test_digits_web_target_in_headless_chromium(digits_recipe, ort_web, tmp_path, monkeypatch):
    _web_recipe(digits_recipe, "  - {type: web, name: web-int8}\n"
                               "  - {type: web, name: web-fp32, input: fp32, options: {ort_format: true}}\n",
                "gates:\n  max_accuracy_drop: 0.02\n  min_cosine: 0.98\n")
    out = tmp_path / "bundle"
    res = run_cli("build", digits_recipe, "-o", out, "--no-publish", cwd=digits_recipe.parent, env={"EDGEPACK_ORT_WEB": str(ort_web)})
    assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-2000:]
    report = json.loads((out / "report.json").read_text())
    ref_top1 = report["evaluate"]["reference"]["top1"]["value"]
    for tid in ("web-int8", "web-fp32"):
        dev = _device(report, tid)
        assert dev["runtime"] == "onnxruntime-web" and dev["transport"]["type"] == "browser", dev
        assert dev["runtime_version"].startswith("1.23.0 (Chromium"), dev["runtime_version"]
        assert dev["load"]["cross_origin_isolated"] is True and dev["load"]["execution_providers"] == ["wasm"], dev["load"]
        assert dev["cold_load_ms"] > 0 and dev["first_inference_ms"] > 0, dev
        lat = dev["latency"]
        assert lat["count"] >= 30 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"], lat
        assert dev["memory"]["model_memory_mb"] is not None and dev["memory"]["peak_rss_mb"] > 0, dev["memory"]
        assert dev["accuracy"]["metrics"]["top1"]["per_sample"]["n"] == 597, dev["accuracy"]  # every sample came back from the page
    fp32 = _device(report, "web-fp32")
    assert fp32["load"]["model_file"] == "model.ort"  # the .ort file is what the page ran
    fid = fp32["accuracy"]["fidelity"]["outputs"]["logits"]
    assert fid["max_abs_error"] < 1e-4 and fid["cosine_min"] > 0.99999, fid
    assert fp32["accuracy"]["metrics"]["top1"]["value"] == pytest.approx(ref_top1)
    assert _device(report, "web-int8")["accuracy"]["metrics"]["top1"]["drop"] <= 0.02
    folder = out / "targets" / "web-fp32" / "web"
    assert {"index.html", "runner.js", "webjob.json", "model.onnx", "model.ort"} <= {p.name for p in folder.iterdir()}
    assert "cdn" not in (folder / "index.html").read_text().lower()  # ort-web is served locally, never from a CDN
    monkeypatch.setenv("EDGEPACK_ORT_WEB", str(ort_web))
    monkeypatch.syspath_prepend(str(digits_recipe.parent))
    _page_matches_onnxruntime(folder)


def _page_matches_onnxruntime(folder, n: int = 8):
    """The transport on the bundle's own folder: the page's outputs equal onnxruntime's on the same inputs."""
    import digits_data
    import onnxruntime as ort

    from edgepack.devices import load_profile
    from edgepack.devices.browser import BrowserTransport
    from edgepack.errors import StageError

    x = digits_data.validation()[0]["input"][:n]
    np.savez(folder.parent / "val.npz", input=x)
    contract = {"inputs": [{"name": "input", "source": "input", "batch_axis": 0}], "outputs": [{"name": "logits", "index": 0, "batch_axis": 0}],
                "options": {"model_file": "model.onnx"}}
    job = {"mode": "bench", "runtime": "onnxruntime-web", "protocol": {"runs": 3, "warmup_runs": 1, "min_seconds": 0, "warmup_seconds": 0},
           "contract": contract}
    profile = load_profile("chromium")[0]
    dest = folder.parent / "outputs.npz"
    BrowserTransport(profile).execute(job, {"artifact": folder, "inputs": folder.parent / "val.npz"}, {"outputs": dest})
    got = np.load(dest)["logits"]
    want = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4, (got.shape, want.shape)
    quick = profile.model_copy(update={"transport": profile.transport.model_copy(update={"step_timeout_s": 0.3})})
    with pytest.raises(StageError, match=r"device chromium: the page posted no result within 0s|Chromium exited"):
        BrowserTransport(quick).execute(job, {"artifact": folder, "inputs": folder.parent / "val.npz"}, {})


def test_missing_chromium_or_ort_web_is_one_line(tiny_recipe, tmp_path, ort_web):
    _web_recipe(tiny_recipe, "  - {type: web, name: web}\n")
    res = run_cli("check", tiny_recipe, cwd=tiny_recipe.parent, env={"EDGEPACK_ORT_WEB": str(tmp_path / "nothing")})
    assert res.returncode == 2, res.stderr + res.stdout
    assert "Traceback" not in res.stderr
    line = res.stderr.strip().splitlines()[0]
    assert "device chromium: the onnxruntime-web files" in line and "npm pack onnxruntime-web@1.23.0" in res.stderr, res.stderr
    res = run_cli("build", tiny_recipe, "--no-publish", cwd=tiny_recipe.parent,
                  env={"EDGEPACK_ORT_WEB": str(ort_web), "EDGEPACK_CHROMIUM": str(tmp_path / "no-such-chromium")})
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert re.search(r"device chromium: no Chromium binary found .*no-such-chromium", res.stderr), res.stderr
    assert "convert" not in res.stdout  # refused before any stage


def test_real_pretrained_rnet_in_headless_chromium(ort_web, tmp_path, edgepack_home, monkeypatch):
    """MTCNN RNet (facenet-pytorch 2.6.0's weights, a two-output detector) as a web target: the page's face accuracy
    is onnxruntime's on the same model.onnx, its outputs within 1e-4 of the FP32 reference."""
    from realmodels import data, harness, recipes, wheels

    weights = wheels.wheel_files("facenet-pytorch", "2.6.0") / "rnet.pt"
    d = harness.recipe_dir(tmp_path, "nets.py")
    x, y = data.face_crops()
    np.savez(d / "crops.npz", input=x)
    np.save(d / "face.npy", y)
    text = recipes.rnet_head("mtcnn-rnet-web", weights) + "targets:\n  - {type: web, name: web-fp32}\ndevices: [chromium]\n"
    monkeypatch.setenv("EDGEPACK_ORT_WEB", str(ort_web))
    b = harness.build(d, text + BENCH.replace("runs: 30", "runs: 10"), edgepack_home)
    assert b.rc == 0, b.why()
    dev = _device(b.report, "web-fp32")
    assert dev["runtime"] == "onnxruntime-web" and dev["accuracy"]["metrics"]["face_accuracy"]["per_sample"]["n"] == len(y), dev["accuracy"]
    fid = dev["accuracy"]["fidelity"]
    assert fid["max_abs_error"] < 1e-4, fid
    model = next(p for p in (b.bundle / "targets" / "web-fp32").rglob("model.onnx"))
    _, prob = harness.run_artifact({"path": str(model)}, harness.samples({"input": x}))
    acc = float(np.mean((prob[:, 1] > 0.5) == (y == 1)))
    assert acc >= 0.95 and dev["accuracy"]["metrics"]["face_accuracy"]["value"] == pytest.approx(acc)

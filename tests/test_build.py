"""`edgepack build` end to end: real export, quantization, validation, signing, registry; cache and interruption."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli


def _stages(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    return {s["name"]: s["cached"] for s in report["stages"]}


def test_digits_end_to_end_then_cached_then_one_target_changed(digits_recipe, edgepack_home, tmp_path):
    out = tmp_path / "bundle"
    res = run_cli("build", digits_recipe, "-o", out, "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["status"] == "ok"
    rows = {r["target"]: r for r in result["summary"]}
    assert set(rows) == {"ort-int8", "ort-fp32"}
    assert rows["ort-int8"]["precision"] == "int8-static" and rows["ort-fp32"]["precision"] == "fp32"
    assert rows["ort-fp32"]["top1"] > 0.95 and rows["ort-fp32"]["cosine"] > 0.9999
    assert rows["ort-int8"]["size_mb"] < rows["ort-fp32"]["size_mb"]
    assert abs(rows["ort-fp32"]["top1"] - rows["ort-int8"]["top1"]) <= 0.02

    manifest = json.loads((out / "edgepack.json").read_text())
    assert manifest["name"] == "digits" and manifest["version"] == "1.0.0"
    assert manifest["calibration_sha256"] and manifest["source"]["sha256"] and manifest["recipe_sha256"]
    assert {f["path"] for f in manifest["files"]} == {"report.json", "provenance.json", "targets/ort-int8/model.onnx", "targets/ort-fp32/model.onnx",
                                                     "timings.json", "report.html", "MODEL_CARD.md"}
    assert manifest["targets"]["ort-int8"]["inputs"][0]["name"] == "input"
    assert "onnxruntime" in manifest["toolchain"] and "torch" in manifest["toolchain"]
    report = json.loads((out / "report.json").read_text())
    conv = report["stages"][0]
    assert conv["name"] == "convert" and not conv["cached"]
    dev = report["targets"]["ort-int8"]["devices"]["local"]
    for k in ("cold_load_ms", "first_inference_ms", "memory"):
        assert k in dev
    samples = json.loads((out / "timings.json").read_text())["targets"]["ort-int8"]["local"]["samples_ms"]
    assert dev["samples"] == "timings.json#/targets/ort-int8/local" and len(samples) == dev["latency"]["count"]
    for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "cv"):
        assert dev["latency"][k] > 0
    assert dev["accuracy"]["fidelity"]["top1_agreement"] > 0.95

    pub = tmp_path / "pub.pem"
    pub.write_bytes((edgepack_home / "keys" / "signing-key.pub.pem").read_bytes())
    assert run_cli("verify", out, "--key", pub).returncode == 0
    pulled = tmp_path / "pulled"
    res = run_cli("pull", f"layout:{edgepack_home / 'registry' / 'digits'}:1.0.0", "-o", pulled, "--key", pub)
    assert res.returncode == 0, res.stderr
    assert (pulled / "targets/ort-int8/model.onnx").read_bytes() == (out / "targets/ort-int8/model.onnx").read_bytes()

    # Version 1.0.0 is published: a rebuild is refused before any stage (release tags are immutable) ...
    res = run_cli("build", digits_recipe, "-o", out, cwd=tmp_path)
    assert res.returncode == 2 and "already published" in res.stderr and "convert" not in res.stdout, res.stderr
    # ... unless --force. An unchanged rebuild reuses every stage.
    res = run_cli("build", digits_recipe, "-o", out, "--force", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert all(_stages(out / "report.json").values())

    # Changing one target's config re-runs only what depends on it.
    text = digits_recipe.read_text().replace("    name: ort-fp32\n    input: fp32", "    name: ort-fp32\n    input: fp32\n    precision: fp32")  # a real key (unknown options are rejected)
    digits_recipe.write_text(text)
    res = run_cli("build", digits_recipe, "-o", out, "--force", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stages = _stages(out / "report.json")
    rerun = sorted(k for k, cached in stages.items() if not cached)
    assert rerun == ["compile ort-fp32"], stages  # same artifact bytes, so its validation is a cache hit


def test_gate_failure_lists_every_failure_and_ships_nothing(tiny_recipe, edgepack_home):
    text = tiny_recipe.read_text().replace("  min_cosine: 0.9", "  min_cosine: 0.9999999\n  max_p90_ms: 0.000001\n  max_size_mb: 0.000001")
    tiny_recipe.write_text(text)
    out = tiny_recipe.parent / "out"
    res = run_cli("build", tiny_recipe, "-o", out, cwd=tiny_recipe.parent)
    assert res.returncode == 3, res.stderr
    line = res.stderr.strip()
    assert "3 gate(s) failed" in line and "max_p90_ms" in line and "max_size_mb" in line and "min_cosine" in line
    assert not out.exists()
    assert not (edgepack_home / "registry").exists()
    report = json.loads((tiny_recipe.parent / "out.report.json").read_text())
    assert len(report["gates"]["failures"]) == 3
    assert report["summary"]["status"] == "gates-failed" and report["timings"] == "out.timings.json"  # HTML report beside it too
    assert (tiny_recipe.parent / "out.timings.json").is_file() and "plot-latency" in (tiny_recipe.parent / "out.report.html").read_text()

    # Waiving gates by name lets the build ship, and the report says what was waived.
    tiny_recipe.write_text(text.replace("  max_size_mb: 0.000001", "  max_size_mb: 0.000001\n  waive: [max_p90_ms, max_size_mb, min_cosine]"))
    res = run_cli("build", tiny_recipe, "-o", out, cwd=tiny_recipe.parent)
    assert res.returncode == 0, res.stderr
    gates = json.loads((out / "report.json").read_text())["targets"]["ort"]["devices"]["local"]["gates"]
    assert len(gates["waived"]) == 3 and gates["passed"]


def test_kill_9_mid_build_leaves_nothing_broken_and_resumes(digits_recipe, edgepack_home, tmp_path):
    out = tmp_path / "bundle"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgepack.cli", "build", digits_recipe, "-o", out], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    seen = []
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until convert has finished, then kill while the next stage runs
        seen.append(line)
        if line.strip().startswith("convert") and " ok " in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    cache = edgepack_home / "cache"
    for entry in cache.glob("??/[!.]*"):  # (.KEY.lock: a dead owner's entry lock, removed by the next run)
        assert (entry / "entry.json").is_file(), f"half-written cache entry {entry}"
    assert not out.exists()
    assert not (edgepack_home / "registry" / "digits" / "index.json").exists()

    res = run_cli("build", digits_recipe, "-o", out, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    stages = _stages(out / "report.json")
    assert stages["convert"] is True  # finished before the kill: reused
    assert stages["optimize[0] quantize"] is False or stages["optimize[0] quantize"] is True
    assert (edgepack_home / "registry" / "digits" / "index.json").exists()


def test_no_validation_data_still_builds_and_says_so(tiny_recipe, tmp_path):
    text = tiny_recipe.read_text()
    text = text.replace("  validation:\n    path: val.npz\n    labels: labels.npy\n", "")
    tiny_recipe.write_text(text)
    out = tmp_path / "b"
    res = run_cli("build", tiny_recipe, "-o", out, "--no-publish", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    assert "no data.validation" in report["targets"]["ort"]["validation"]

"""The benchmark protocol's statistics on known samples, `edgepack bench` on this host, and --compare."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepack.bench import compare, make_inputs, protocol_for, run_bench
from edgepack.devices import LOCAL
from edgepack.devices.runner import stats
from edgepack.errors import BadInputError

sys.path.insert(0, str(Path(__file__).parent))
from sshd import tiny_bundle

FAST = {"runs": 30, "min_seconds": 0.05, "warmup_runs": 3}


def test_stats_known_samples():
    s = stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["count"] == 5 and s["min_ms"] == 1.0 and s["max_ms"] == 5.0
    assert s["mean_ms"] == pytest.approx(3.0)
    assert s["std_ms"] == pytest.approx(math.sqrt(2.5))  # sample standard deviation (ddof=1)
    assert s["cv"] == pytest.approx(math.sqrt(2.5) / 3.0)
    assert s["p50_ms"] == pytest.approx(3.0)
    assert s["p90_ms"] == pytest.approx(4.6)  # linear interpolation between order statistics
    assert s["p99_ms"] == pytest.approx(4.96)
    assert s["throughput_per_s"] == pytest.approx(1000.0 / 3.0)


def test_stats_constant_and_single_and_empty():
    s = stats([2.5] * 100)
    assert s["std_ms"] == 0.0 and s["cv"] == 0.0 and s["p99_ms"] == 2.5 and s["throughput_per_s"] == pytest.approx(400.0)
    one = stats([7.0])
    assert one["count"] == 1 and one["std_ms"] == 0.0 and one["p50_ms"] == 7.0
    assert stats([]) == {}


def test_stats_outlier_moves_p99_not_p50():
    base = [1.0] * 99 + [100.0]
    s = stats(base)
    assert s["p50_ms"] == 1.0
    assert s["p99_ms"] == pytest.approx(1.99)  # 99th percentile of 100 samples sits between 1 and 100
    assert s["cv"] > 1.0  # one 100x outlier in 100 samples: variation far above any noisy threshold


def test_protocol_layers_and_validation():
    prof = LOCAL.model_copy(update={"benchmark": {"threads": 2, "runs": 10}})
    p = protocol_for(prof, {"runs": 77, "min_seconds": None})
    assert p["threads"] == 2 and p["runs"] == 77 and p["min_seconds"] == 0.5  # defaults <- profile <- overrides
    with pytest.raises(BadInputError, match="benchmark.runs"):
        protocol_for(prof, {"runs": 0})


def test_synthetic_inputs_follow_the_layout_map(tmp_path):
    entry = {"inputs": [{"name": "x_nhwc", "shape": ["n", 8, 8, 3], "dtype": "float32"}],
             "runner": {"input_map": [{"source": "x", "name": "x_nhwc", "perm": [0, 2, 3, 1]}]}}
    how = make_inputs(entry, "t", tmp_path / "in.npz", None)
    with np.load(tmp_path / "in.npz") as z:
        assert z["x"].shape == (1, 3, 8, 8)  # source layout (NCHW); the runner transposes to the artifact's NHWC
    assert how["kind"] == "synthetic" and "--data" in how["reason"]


def test_bench_local_protocol_is_followed(tmp_path):
    bundle = tiny_bundle(tmp_path / "b")
    rep = run_bench(str(bundle), ["local"], overrides={"runs": 40, "min_seconds": 0.2, "warmup_runs": 7, "threads": 1})
    assert rep["status"] == "ok" and rep["exit_code"] == 0
    t = rep["devices"]["local"]["targets"]["ort"]
    # warm-up bounded both ways: 7 runs or 0.2 s, whichever comes first
    assert 1 <= t["warmup"]["runs"] <= 7 and (t["warmup"]["runs"] == 7 or t["warmup"]["stopped_by"] == "warmup_seconds")
    assert t["latency"]["count"] >= 40 and len(t["samples_ms"]) == t["latency"]["count"]
    assert t["timed"]["elapsed_s"] >= 0.2 and t["timed"]["stopped_by"] in ("runs", "min_seconds")  # default max_runs does not cut it
    assert t["threads"] == 1 and t["runtime"] == "onnxruntime" and t["runtime_version"]
    assert t["cold_load_ms"] > 0 and t["first_inference_ms"] > 0 and t["host"]["cpu_model"]
    assert "governor" in t["host"]
    assert t["memory"]["peak_rss_mb"] > t["memory"]["rss_before_load_mb"] > 0  # measured in its own process
    assert rep["inputs"]["ort"]["kind"] == "synthetic"


def test_noisy_flag_follows_the_threshold(tmp_path):
    bundle = tiny_bundle(tmp_path / "b")
    strict = run_bench(str(bundle), ["local"], overrides={**FAST, "noisy_spread": 1e-9})
    lax = run_bench(str(bundle), ["local"], overrides={**FAST, "noisy_spread": 1e9})
    assert strict["devices"]["local"]["targets"]["ort"]["noisy"] is True
    assert lax["devices"]["local"]["targets"]["ort"]["noisy"] is False


def test_bench_refuses_a_tampered_bundle_and_unknown_target(tmp_path):
    from edgepack.errors import VerificationError

    bundle = tiny_bundle(tmp_path / "b")
    with pytest.raises(BadInputError, match="--target nope"):
        run_bench(str(bundle), ["local"], targets=["nope"], overrides=FAST)
    model = bundle / "targets/ort/model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(VerificationError, match="sha256 mismatch"):
        run_bench(str(bundle), ["local"], overrides=FAST)


def _bench_doc(p50s: dict) -> dict:
    return {"schema": "edgepack-bench/1", "devices": {"pi": {"targets": {
        t: {"status": "ok", "noisy": False, "latency": {"p50_ms": v, "p90_ms": 2 * v, "mean_ms": v}} for t, v in p50s.items()}}}}


def test_compare_ratios_per_target(tmp_path, cli):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_bench_doc({"ort": 2.0, "tflite": 4.0, "old": 1.0})))
    b.write_text(json.dumps(_bench_doc({"ort": 1.0, "tflite": 6.0})))
    cmp = compare(a, b)
    ratios = {r["target"]: r["ratio_p50"] for r in cmp["rows"]}
    assert ratios == {"ort": pytest.approx(0.5), "tflite": pytest.approx(1.5)}
    assert cmp["unmatched"] == ["old@pi"]
    res = cli("bench", "--compare", a, b)
    assert res.returncode == 0, res.stderr
    assert "0.500" in res.stdout and "1.500" in res.stdout and "old@pi" in res.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    res = cli("bench", "--compare", a, bad)
    assert res.returncode == 2 and "neither an `edgepack bench --json` result" in res.stderr


def test_bench_cli_json_then_compare_with_itself(tmp_path, cli):
    bundle = tiny_bundle(tmp_path / "b")
    res = cli("bench", bundle, "--runs", "20", "--min-seconds", "0.05", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["devices"]["local"]["targets"]["ort"]["latency"]["count"] >= 20
    out = tmp_path / "run.json"
    out.write_text(res.stdout)
    cmp = cli("bench", "--compare", out, out, "--json")
    assert json.loads(cmp.stdout)["rows"][0]["ratio_p50"] == pytest.approx(1.0)
    res = cli("bench", tmp_path / "missing-bundle")
    assert res.returncode == 2 and "not a bundle folder or registry reference" in res.stderr


def test_bench_with_no_runnable_target_is_a_failure_not_ok(tmp_path):
    import yaml

    bundle = tiny_bundle(tmp_path / "b")
    prof = tmp_path / "tflite-only.yaml"
    prof.write_text(yaml.safe_dump({"name": "tflite-only", "transport": {"type": "local"}, "runtimes": ["tflite"]}))
    rep = run_bench(str(bundle), [str(prof)], overrides=FAST)
    t = rep["devices"]["tflite-only"]["targets"]["ort"]
    assert t["status"] == "skipped" and "no onnxruntime runtime" in t["reason"]
    assert rep["status"] == "failed" and rep["exit_code"] == 1 and "nothing ran" in rep["failures"][0]

"""Honest labels: a quantize pass that changed nothing is shown `unchanged` and fails min_quantized_fraction;
a non-fp32 target larger or slower than its FP32 counterpart is flagged and can be gated."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import TINY_RECIPE, run_cli
from edgepack.optimize.share import QuantizedShare, quantized_share
from edgepack.recipe import Gates
from edgepack.report import summary_table
from edgepack.validate.vs_fp32 import label_and_gate
from test_optimize_quantize import _matmul_mlp, _mlp_data, run_pass


def conv_only(path, channels: int = 4):
    """Conv -> Relu -> GlobalAveragePool -> Flatten: 36 weights, no MatMul/Gemm (dynamic INT8 has nothing to take)."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(channels, 1, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=(channels,)).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["logits"], name="flatten")]
    g = helper.make_graph(nodes, "conv_only", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", channels])], [w, b])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_share_counts_weights_and_nodes(tmp_path):
    model = _matmul_mlp(tmp_path / "mlp.onnx")
    cal, val = _mlp_data(tmp_path)
    res = run_pass({"mode": "dynamic"}, model, tmp_path, validation=val)
    q = res.record["quantized"]
    assert q["weights_fraction"] == 1.0 and q["nodes_fraction"] == 1.0 and q["modified"] and q["unchanged_reason"] is None
    share = quantized_share(model.path, res.outputs["model"].path)
    assert share == QuantizedShare.from_json(q) and share.weights_total == q["weights_quantized"] > 0
    # one MatMul excluded: the share drops by exactly its weights
    first = onnx.load(str(model.path)).graph.node[0]
    part = run_pass({"mode": "dynamic", "exclude_nodes": [first.name]}, model, tmp_path, validation=val).record["quantized"]
    assert 0 < part["weights_fraction"] < 1 and part["nodes_quantized"] == part["nodes_total"] - 1


def _recipe(d, mode: str, gates: str, fp32_target: bool):
    conv_only(d / "model.onnx")
    text = TINY_RECIPE.replace("    mode: static\n", f"    mode: {mode}\n").replace("gates:\n  min_cosine: 0.9\n", f"gates:\n{gates}")
    if fp32_target:
        text = text.replace("gates:\n", "  - type: onnxruntime\n    name: ort-fp32\n    input: fp32\ngates:\n")
    (d / "recipe.yaml").write_text(text)
    return d / "recipe.yaml"


def test_dynamic_int8_of_a_conv_model_is_unchanged_and_gated(tiny_recipe, tmp_path):
    # the observed case: dynamic quantization leaves Conv in float (no int8 ConvInteger kernel on CPU)
    recipe = _recipe(tiny_recipe.parent, "dynamic", "  min_quantized_fraction: 0.5\n", fp32_target=False)
    out = tmp_path / "b"
    res = run_cli("build", recipe, "-o", out, "--no-publish", cwd=recipe.parent)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "ort on local: quantized 0.00% of the weights < min_quantized_fraction 0.5" in res.stderr
    report = json.loads((tmp_path / "b.report.json").read_text())
    table = summary_table(report)
    assert "int8-dynamic (unchanged)" in table and "! unchanged: quantized 0 of 36 weight parameters" in table
    ort = report["targets"]["ort"]
    assert ort["precision_label"] == "int8-dynamic (unchanged)" and ort["quantized"]["weights_fraction"] == 0.0
    assert report["optimize"][0]["quantized"]["modified"] is False and not out.exists()


def test_int8_larger_than_fp32_is_flagged_and_latency_ratio_gated(tiny_recipe, tmp_path):
    # 36 conv weights: QDQ's scales and extra nodes outweigh 108 saved bytes (deterministic: sizes, not timings)
    recipe = _recipe(tiny_recipe.parent, "static", "  max_latency_ratio_vs_fp32: 0.000001\n", fp32_target=True)
    out = tmp_path / "b"
    res = run_cli("build", recipe, "-o", out, "--no-publish", cwd=recipe.parent)
    assert res.returncode == 3, res.stderr[-2000:]
    report = json.loads((tmp_path / "b.report.json").read_text())
    ort, fp32 = report["targets"]["ort"], report["targets"]["ort-fp32"]
    assert ort["size_bytes"] > fp32["size_bytes"] and ort["quantized"]["modified"] is True
    assert ort["flags"][0] == f"larger than FP32: {ort['size_bytes'] / fp32['size_bytes']:.2f}x the size of ort-fp32"
    vs = ort["devices"]["local"]["vs_fp32"]
    assert vs["counterpart"] == "ort-fp32" and vs["size_ratio"] > 1 and vs["latency_ratio"] > 0
    assert [f["gate"] for f in report["gates"]["failures"]] == ["max_latency_ratio_vs_fp32"]
    assert "ort on local: p50 latency" in res.stderr and "x ort-fp32 on local > max_latency_ratio_vs_fp32 1e-06" in res.stderr
    assert "vs_fp32" not in fp32["devices"]["local"] and "flags" not in fp32  # the FP32 target is its own baseline
    assert "! larger than FP32" in summary_table(report)


def _entry(precision, size, p50, input_="optimized"):
    return {"type": "onnxruntime", "input": input_, "precision": precision, "size_bytes": size, "status": "ok",
            "devices": {"pi": {"status": "ok", "latency": {"p50_ms": p50}, "gates": {"passed": True, "failures": [], "waived": [], "checked": []}}}}


def test_slower_flag_counterpart_and_reference_fallback():
    targets = {"int8": _entry("int8-static", 500, 83.0), "fp32": _entry("fp32", 1000, 57.0, "fp32")}
    failures: list = []
    label_and_gate(Gates(max_latency_ratio_vs_fp32=1.2), targets, [], 1000, set(), failures)
    assert targets["int8"]["flags"] == ["slower than FP32 on pi: p50 1.46x fp32 on pi"]
    assert targets["int8"]["status"] == "gates-failed" and failures[0]["gate"] == "max_latency_ratio_vs_fp32"
    # no fp32 target: size vs the FP32 ONNX; latency vs its host ORT p50 only on the build host
    targets = {"int8": _entry("int8-static", 1200, 10.0)}
    recs = [{"index": 0, "pass": "quantize", "mode": "static", "status": "ok", "before": {"latency": {"p50_ms": 5.0}},
             "quantized": QuantizedShare(100, 100, 2, 2).to_json()}]
    label_and_gate(Gates(), targets, recs, 1000, {"pi"}, failures := [])
    assert targets["int8"]["flags"] == ["larger than FP32: 1.20x the size of the FP32 ONNX model",
                                        "slower than FP32 on pi: p50 2.00x the FP32 ONNX model on ONNX Runtime (build host, 1 thread)"]
    assert not failures and "precision_label" not in targets["int8"]
    targets = {"int8": _entry("int8-static", 800, 10.0)}
    label_and_gate(Gates(max_latency_ratio_vs_fp32=2.0), targets, recs, 1000, set(), failures := [])
    assert failures[0]["message"].endswith("cannot be checked (no FP32 latency on this device)") and "flags" not in targets["int8"]

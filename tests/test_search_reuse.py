"""The accuracy-aware search's cost cuts (issue 12 item 5) change nothing but the cost: quantized
initializers reused across trials give byte-identical models, candidates that cannot change the
quantized model are recorded as skipped, and parallel evaluation chooses what the serial search chose."""

from __future__ import annotations

import hashlib

import onnx
import pytest

from edgepack.optimize import accuracy_aware, ort_static
from edgepack.optimize.accuracy_aware import LEGACY, SearchSpeed
from edgepack.optimize.quant_reuse import ReusedQuantizer
from edgepack.recipe import Gates
from test_optimize_accuracy_aware import outlier  # noqa: F401  (the module fixture)
from test_optimize_quantize import run_pass

OPTS = {
    "qdq": dict(qformat="qdq", per_channel=True, symmetric_activations=False, symmetric_weights=True, op_types=None, include=None),
    "qoperator": dict(qformat="qoperator", per_channel=False, symmetric_activations=False, symmetric_weights=True, op_types=None, include=None),
}


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_reused_initializers_give_the_same_bytes(outlier, tmp_path, fmt):  # noqa: F811
    model, cal, _, _ = outlier
    rec = {"preprocess": []}
    pre = ort_static.preprocess(model.path, tmp_path, rec, 13, "test")
    ranges = ort_static.calibrate(pre, cal.path, "minmax", None, tmp_path)
    nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type in ("Conv", "Gemm", "Relu")]
    trials = [[], [nodes[0]], [nodes[1], nodes[2]], [], [nodes[-1]], nodes[:3]]  # repeats hit the cache
    reused = ReusedQuantizer(pre, ranges, exclude=[], **OPTS[fmt])
    for k, exclude in enumerate(trials):
        ort_static.quantize_with_ranges(pre, tmp_path / f"plain{k}.onnx", ranges, exclude=exclude, **OPTS[fmt])
        data = reused.quantize(exclude, tmp_path / f"reused{k}.onnx")
        assert data == (tmp_path / f"plain{k}.onnx").read_bytes(), (fmt, exclude)
        assert data == (tmp_path / f"reused{k}.onnx").read_bytes()
    assert reused.hits > 0  # the weights were quantized once, then reused
    # different exclusions really give different models (the comparison above can fail)
    assert (tmp_path / "plain0.onnx").read_bytes() != (tmp_path / "plain1.onnx").read_bytes()


def _search(monkeypatch, speed, outlier, tmp_path, cfg):  # noqa: F811
    model, cal, val, _ = outlier
    monkeypatch.setattr(accuracy_aware, "SPEED", speed)
    res = run_pass(cfg, model, tmp_path, Gates(max_accuracy_drop=0.02), calibration=cal, validation=val)
    return res.record["accuracy_aware"], hashlib.sha256(res.outputs["model"].path.read_bytes()).hexdigest()


def _choice(aa: dict) -> dict:
    return {
        "float_nodes": [f["node"] for f in aa["float_nodes"]],
        "sensitivity": [(e["node"], e["drop_when_kept_float"], e["mse_when_kept_float"], e["gain"]) for e in aa["sensitivity"]],
        "steps": aa["steps"],
        "result": aa["result"],
    }


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_fast_search_chooses_what_the_serial_search_chose(outlier, tmp_path, monkeypatch, fmt):  # noqa: F811
    cfg = {"mode": "static", "format": fmt, "per_channel": fmt == "qdq", "accuracy_aware": {"max_accuracy_drop": 0.01, "metric": "top1"}}
    legacy, legacy_model = _search(monkeypatch, LEGACY, outlier, tmp_path / "legacy", cfg)
    serial, serial_model = _search(monkeypatch, SearchSpeed(jobs=1), outlier, tmp_path / "serial", cfg)
    parallel, parallel_model = _search(monkeypatch, SearchSpeed(jobs=3), outlier, tmp_path / "parallel", cfg)
    assert legacy["float_nodes"] and legacy["result"]["met"]
    assert _choice(serial) == _choice(legacy) and _choice(parallel) == _choice(legacy)
    assert serial_model == legacy_model == parallel_model  # the pass's model, byte for byte
    assert legacy["jobs"] == 1 and serial["jobs"] == 1 and parallel["jobs"] == 3
    # the legacy search evaluates everything; the fast one records what it skipped, and why
    assert legacy["skipped"] == 0 and not any("skipped" in e for e in legacy["sensitivity"])
    skipped = [e for e in parallel["sensitivity"] if "skipped" in e]
    assert parallel["skipped"] == len(skipped) > 0
    relus = [e for e in skipped if e["op_type"] == "Relu"]
    assert relus and all("folded into its producer" in e["skipped"] for e in relus)
    # a skipped candidate's recorded result is exactly what the legacy search measured for it
    measured = {e["node"]: e for e in legacy["sensitivity"]}
    for e in skipped:
        assert (e["drop_when_kept_float"], e["mse_when_kept_float"]) == (measured[e["node"]]["drop_when_kept_float"], measured[e["node"]]["mse_when_kept_float"])


def test_reuse_is_on_only_for_the_verified_onnxruntime(monkeypatch):
    """quant_reuse hooks onnxruntime's quantizer internals: on a release it was not checked against
    (the core takes onnxruntime as a range) the search quantizes every trial from scratch instead."""
    from edgepack.optimize import quant_reuse

    assert quant_reuse.supported(), "this onnxruntime is not in quant_reuse.VERIFIED_ORT: verify these tests, then add it"
    monkeypatch.setattr(quant_reuse, "VERIFIED_ORT", ("0.0.",))
    assert not quant_reuse.supported()

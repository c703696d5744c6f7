"""Accuracy-aware quantization: a model that plain INT8 breaks (extreme activation outliers) is rescued
by keeping the offending nodes in float, and the report names them."""

from __future__ import annotations

import pytest

from edgepack.data import freeze
from edgepack.errors import BadInputError, StageError
from edgepack.optimize import count_ops
from edgepack.recipe import Gates
from test_optimize_quantize import digits, export, run_pass, train_digits_cnn

SCALE = 1e4  # channel 0 of the first conv is scaled up by this; the second conv's matching inputs down


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """A trained digits CNN, rewritten so one activation channel carries values 10^4 times larger.

    ReLU is positively homogeneous, so FP32 outputs are unchanged; per-tensor INT8 activations of
    that tensor, however, round every other channel to zero.
    """
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("aa")
    m = train_digits_cnn()
    with torch.no_grad():
        c1, c2 = m.features[0], m.features[2]
        c1.weight[0] *= SCALE
        c1.bias[0] *= SCALE
        c2.weight[:, 0] /= SCALE
    x, y, vx, vy = digits()
    cal = freeze({"input": x[:128]}, None, d / "data", "calibration")
    val = freeze({"input": vx}, vy, d / "data", "validation")
    unlabeled = freeze({"input": vx}, None, d / "data", "validation")
    return export(m, d / "outlier.onnx"), cal, val, unlabeled


def test_plain_int8_breaks_the_budget(outlier, tmp_path):
    model, cal, val, _ = outlier
    with pytest.raises(StageError, match=r"optimize\[0\]: top-1 fell from 0\.9\d+ to 0\.\d+ \(drop 0\.\d+ > gates.max_accuracy_drop 0\.02\)"):
        run_pass({"mode": "static"}, model, tmp_path, Gates(max_accuracy_drop=0.02), calibration=cal, validation=val)
    # waived: the model is produced, and the record says the budget was not met
    res = run_pass({"mode": "static"}, model, tmp_path, Gates(max_accuracy_drop=0.02, waive=["max_accuracy_drop"]), calibration=cal, validation=val)
    assert res.record["accuracy_budget"]["met"] is False and res.record["accuracy_budget"]["waived"] is True


def test_accuracy_aware_keeps_offending_nodes_in_float(outlier, tmp_path):
    model, cal, val, _ = outlier
    cfg = {"mode": "static", "accuracy_aware": {"max_accuracy_drop": 0.01, "metric": "top1"}}
    res = run_pass(cfg, model, tmp_path, Gates(max_accuracy_drop=0.02), calibration=cal, validation=val)
    aa = res.record["accuracy_aware"]
    assert aa["all_quantized"]["drop"] > 0.3  # plain INT8 collapses
    assert aa["result"]["met"] and aa["result"]["drop"] <= 0.01
    float_nodes = [f["node"] for f in aa["float_nodes"]]
    # the conv that consumes the outlier tensor is the most sensitive node and is named first
    assert float_nodes[0] == "/features/features.2/Conv"
    assert aa["sensitivity"][0]["node"] == "/features/features.2/Conv" and aa["sensitivity"][0]["gain"] > 0.2
    assert all(f["reason"].startswith("kept in float") and f["effect_in_search"] is not None for f in aa["float_nodes"])
    assert len(float_nodes) < aa["candidates"]  # the rest stays quantized
    assert "QuantizeLinear" in count_ops(res.outputs["model"].path)
    assert res.record["before"]["accuracy"]["top1"] - res.record["after"]["accuracy"]["top1"] <= 0.01


def test_fidelity_metric_relative_budget(outlier, tmp_path):
    model, cal, _, unlabeled = outlier  # no labels needed for fidelity metrics
    cfg = {"mode": "static", "accuracy_aware": {"max_accuracy_drop": 0.02, "relative": True, "metric": "cosine"}}
    res = run_pass(cfg, model, tmp_path, calibration=cal, validation=unlabeled)
    aa = res.record["accuracy_aware"]
    assert aa["metric"] == "cosine" and aa["fp32_score"] == pytest.approx(1.0)
    assert aa["result"]["met"] and res.record["after"]["accuracy"]["cosine"] >= 0.98
    assert "/features/features.2/Conv" in [f["node"] for f in aa["float_nodes"]]


def test_no_configuration_meets_the_budget(outlier, tmp_path):
    model, cal, val, _ = outlier
    cfg = {"mode": "static", "accuracy_aware": {"max_accuracy_drop": 0.0, "metric": "max_abs_error", "max_float_nodes": 1}}
    with pytest.raises(StageError, match=r"accuracy_aware: no configuration meets max_abs_error drop <= 0; best found: drop [\d.e-]+ with 1 node\(s\) in float \(/features/features.2/Conv\)"):
        run_pass(cfg, model, tmp_path, calibration=cal, validation=val)


def test_top1_metric_needs_labels(outlier, tmp_path):
    model, cal, _, unlabeled = outlier
    with pytest.raises(BadInputError, match="'top1' needs labels"):
        run_pass({"mode": "static", "accuracy_aware": {"max_accuracy_drop": 0.01}}, model, tmp_path, calibration=cal, validation=unlabeled)

"""One metric everywhere: a named `evaluate:` metric drives the quantize pass's budget and the
accuracy-aware search (the old builtin names still work), and `bench --compare` reports metric deltas."""

from __future__ import annotations

import json

import pytest

from edgepack.bench import compare
from edgepack.errors import PassFailedError, RecipeError, StageError
from edgepack.optimize import PassContext, make_pass
from edgepack.recipe import Gates, QuantizePass, load_recipe, parse_recipe
from test_optimize_accuracy_aware import outlier  # noqa: F401  (module fixture: a CNN plain INT8 breaks)
from test_optimize_quantize import Engine, StageCache

BASE = "name: t\nversion: '1'\nmodel: {format: onnx, path: m.onnx, inputs: [{name: input, shape: [batch, 1, 8, 8]}], outputs: [logits]}\n"


def _specs(tmp_path, text: str):
    return tuple(parse_recipe(BASE + text, tmp_path / "r.yaml").evaluate)


def _run(cfg: dict, model, tmp_path, specs, gates=None, **data):
    ctx = PassContext(0, "r.yaml:9:5 optimize[0]", tmp_path, None, gates or Gates(), specs)
    stage = make_pass(QuantizePass.model_validate({"pass": "quantize", **cfg}), ctx)
    return Engine(StageCache(tmp_path / "cache")).run("optimize[0] quantize", stage, {"model": model, **data})


def test_search_driven_by_a_named_metric(outlier, tmp_path):  # noqa: F811
    model, cal, val, _ = outlier
    specs = _specs(tmp_path, "evaluate:\n  - {name: digit_acc, type: top1, output: logits}\n")
    res = _run({"mode": "static", "accuracy_aware": {"metric": "digit_acc", "max_drop": 0.01}}, model, tmp_path, specs, calibration=cal, validation=val)
    aa = res.record["accuracy_aware"]
    assert aa["metric"] == "digit_acc" and aa["metric_source"] == "evaluate" and aa["max_drop"] == 0.01
    assert aa["all_quantized"]["drop"] > 0.3 and aa["result"]["met"]
    assert aa["float_nodes"][0]["node"] == "/features/features.2/Conv"
    before, after = res.record["before"]["metrics"]["digit_acc"], res.record["after"]["metrics"]["digit_acc"]
    assert aa["fp32_score"] == pytest.approx(before["value"]) and before["value"] - after["value"] <= 0.01


def test_lower_is_better_metric_missing_its_budget_keeps_the_record(outlier, tmp_path):  # noqa: F811
    model, cal, val, _ = outlier
    specs = _specs(tmp_path, "evaluate:\n  - {name: err, type: mse, against: reference}\n")
    with pytest.raises(PassFailedError, match=r"accuracy_aware: no configuration meets err drop <= 0; best found") as e:
        _run({"mode": "static", "accuracy_aware": {"metric": "err", "max_drop": 0.0, "max_float_nodes": 1}}, model, tmp_path, specs,
             calibration=cal, validation=val)
    aa = e.value.record["accuracy_aware"]
    assert aa["higher_is_better"] is False and aa["fp32_score"] == 0.0
    assert aa["all_quantized"]["score"] > 0 and aa["all_quantized"]["drop"] == pytest.approx(aa["all_quantized"]["score"])
    assert len(aa["sensitivity"]) == aa["candidates"] and aa["sensitivity"][0]["node"] == "/features/features.2/Conv"


def test_gates_metrics_is_the_pass_budget(outlier, tmp_path):  # noqa: F811
    model, cal, val, _ = outlier
    specs = _specs(tmp_path, "evaluate:\n  - {name: digit_acc, type: top1}\n")
    gates = parse_recipe(BASE + "evaluate:\n  - {name: digit_acc, type: top1}\ngates: {metrics: {digit_acc: {max_drop: 0.02}}}\n", tmp_path / "r.yaml").gates
    with pytest.raises(StageError, match=r"optimize\[0\]: digit_acc went from 0\.9\d+ to 0\.\d+ \(drop 0\.\d+ > gates.metrics.digit_acc.max_drop 0.02\)"):
        _run({"mode": "static"}, model, tmp_path, specs, gates, calibration=cal, validation=val)
    waived = gates.model_copy(update={"waive": ["metrics.digit_acc"]})
    res = _run({"mode": "static"}, model, tmp_path, specs, waived, calibration=cal, validation=val)
    b = res.record["accuracy_budget"]["metrics"]["digit_acc"]
    assert b["met"] is False and b["waived"] is True and b["drop"] > 0.02


def test_unknown_metric_name_is_a_load_time_error(tmp_path):
    (tmp_path / "r.yaml").write_text(BASE + "data: {validation: {path: val.npz, labels: labels.npy}}\nevaluate:\n  - {name: digit_acc, type: top1}\noptimize:\n"
                                     "  - pass: quantize\n    accuracy_aware: {metric: digit_accc, max_drop: 0.01}\n")
    with pytest.raises(RecipeError, match=r"r.yaml:\d+:\d+ optimize\[0\].accuracy_aware.metric: 'digit_accc' is not a metric of evaluate: "
                                          r"\(digit_acc\) nor a builtin \(top1, cosine, max_abs_error, top1_agreement\)"):
        load_recipe(tmp_path / "r.yaml")
    # the old spelling still loads
    (tmp_path / "r.yaml").write_text(BASE + "optimize:\n  - pass: quantize\n    accuracy_aware: {metric: cosine, max_accuracy_drop: 0.01}\n")
    assert load_recipe(tmp_path / "r.yaml").recipe.optimize[0].accuracy_aware.max_drop == 0.01


def _report(acc: float, cer: float, p50: float) -> dict:
    dev = {"latency": {"p50_ms": p50, "p90_ms": p50, "mean_ms": p50},
           "accuracy": {"metrics": {"acc": {"value": acc, "higher_is_better": True}, "cer": {"value": cer, "higher_is_better": False}}}}
    return {"targets": {"ort": {"devices": {"local": dev}}}}


def test_bench_compare_reports_metric_deltas(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(0.95, 0.10, 2.0)))
    b.write_text(json.dumps(_report(0.90, 0.05, 1.0)))
    row = compare(a, b)["rows"][0]
    assert row["ratio_p50"] == 0.5
    assert row["metrics"]["acc"] == {"a": 0.95, "b": 0.90, "delta": pytest.approx(-0.05), "worse_by": pytest.approx(0.05), "higher_is_better": True}
    assert row["metrics"]["cer"]["delta"] == pytest.approx(-0.05) and row["metrics"]["cer"]["worse_by"] == pytest.approx(-0.05)

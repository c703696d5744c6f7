"""Metric gates: load-time recipe errors for gates/metrics that cannot be computed (exit 2, one line, naming the
outputs), and real builds with `evaluate:` + `gates.metrics` (report.json per target and device, summary table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_recipe
from edgepack.errors import RecipeError
from edgepack.recipe import parse_recipe
from edgepack.validate_plan import check_evaluation


def two_output_onnx(path: Path) -> Path:
    """x [batch, 8] -> bbox [batch, 4] (MatMul), prob [batch, 2] (Softmax(MatMul)): an MTCNN-RNet-like head."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 2)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["bbox"]), helper.make_node("MatMul", ["x", "w2"], ["z"]),
             helper.make_node("Softmax", ["z"], ["prob"], axis=1)]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("bbox", TensorProto.FLOAT, ["batch", 4]),
                               helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 2])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


HEAD = """\
name: head
version: 0.1.0
model:
  format: onnx
  path: model.onnx
  inputs: [{name: x, shape: [batch, 8]}]
data:
  validation: {path: val.npz, labels: {face: face.npy, box: box.npy}}
targets: [{type: onnxruntime, name: ort-fp32, input: fp32}]
benchmark: {warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0, max_runs: 3}
"""


@pytest.fixture
def head(tmp_path) -> Path:
    d = tmp_path / "head"
    d.mkdir()
    two_output_onnx(d / "model.onnx")
    x = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    np.savez(d / "val.npz", x=x)
    import onnxruntime as ort

    bbox, prob = ort.InferenceSession(str(d / "model.onnx")).run(None, {"x": x})
    face = (prob[:, 1] > 0.5).astype(np.int64)
    face[:4] = 1 - face[:4]  # FP32 is right on 36 of 40
    np.save(d / "face.npy", face)
    np.save(d / "box.npy", bbox + 0.1)
    return d / "recipe.yaml"


def fails_at_load(res, *needles):
    assert res.returncode == 2, res.stderr + res.stdout
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert "convert" not in res.stderr and "reference" not in res.stderr  # before any long stage
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


@pytest.mark.parametrize("extra, needles", [
    # max_accuracy_drop on a two-output model with no classifier named: names both outputs (ONNX names read cheaply)
    ("gates: {max_accuracy_drop: 0.01}\n", ["gates.max_accuracy_drop", "outputs bbox, prob", "evaluate: [{type: top1, output: NAME}]"]),
    ("evaluate: [{type: top1, output: score, labels: face}]\n", ["evaluate[0].output", "no output 'score'", "outputs: bbox, prob"]),
    ("evaluate: [{type: f1, labels: face}]\n", ["evaluate[0]", "outputs bbox, prob", "add 'output: NAME'"]),
    ("evaluate: [{type: top1, output: prob}]\n", ["evaluate[0]", "label sets: box, face", "add 'labels: NAME'"]),
    ("evaluate: [{type: top1, output: prob, labels: text}]\n", ["evaluate[0].labels", "no label set 'text'"]),
    ("evaluate: [{type: roc_auc, output: bbox, labels: face}]\n", ["'roc_auc' on output 'bbox'", "[N], [N, 1] or [N, 2]", "['batch', 4]"]),
    ("evaluate: [{type: mse, output: bbox, labels: box}]\ngates: {metrics: {msee: {max: 0.1}}}\n", ["gates.metrics.msee", "no metric named 'msee'", "metrics: mse"]),
])
def test_gate_that_cannot_be_computed_is_a_recipe_error(head, extra, needles, tmp_path):
    write_recipe(head, HEAD + extra)
    fails_at_load(run_cli("build", head, "-o", tmp_path / "out", "--no-publish", cwd=tmp_path), *needles)


def test_check_after_convert_with_exported_shapes(tmp_path):
    """Names/shapes known only after convert (a PyTorch source without model.outputs): the same checks."""
    base = "name: t\nversion: '1'\nmodel: {format: pytorch, entrypoint: m:f, inputs: [{name: x, shape: [batch, 3]}]}\n"
    r = parse_recipe(base + "data: {validation: {path: v.npz}}\ngates: {max_accuracy_drop: 0.01}\n", tmp_path / "r.yaml")
    where = lambda *loc: "r.yaml " + ".".join(map(str, loc))  # noqa: E731
    check_evaluation(r, where)  # output names unknown yet: nothing to say at load time
    with pytest.raises(RecipeError, match="outputs output_0, output_1"):
        check_evaluation(r, where, outputs={"output_0": ["batch", 4], "output_1": ["batch", 2]}, label_sets=set())
    with pytest.raises(RecipeError, match=r"output 'output_0' has shape \['batch', 1\]"):
        check_evaluation(r, where, outputs={"output_0": ["batch", 1]}, label_sets=set())
    with pytest.raises(RecipeError, match="top-1 drop against labels, and data.validation has none"):
        check_evaluation(r, where, outputs={"output_0": ["batch", 10]}, label_sets=set())  # argmax of what? never guessed
    check_evaluation(r, where, outputs={"output_0": ["batch", 10]}, label_sets={"labels"})
    with pytest.raises(RecipeError, match="against which labels.*label sets a, b"):
        check_evaluation(r, where, outputs={"output_0": ["batch", 10]}, label_sets={"a", "b"})
    with pytest.raises(RecipeError, match="needs labels; data.validation has none"):
        r2 = parse_recipe(base + "data: {validation: {path: v.npz}}\nevaluate: [{type: top1}]\n", tmp_path / "r.yaml")
        check_evaluation(r2, where, outputs={"output_0": ["batch", 10]}, label_sets=set())
    with pytest.raises(RecipeError, match="the recipe has none"):
        check_evaluation(parse_recipe(base + "evaluate: [{type: cosine}]\n", tmp_path / "r.yaml"), where)


def test_head_build_gates_on_the_named_output(head, tmp_path):
    """Binary metrics on 'prob', MSE on 'bbox' vs its label set, fidelity: FP32 passes, a min gate fails alone."""
    write_recipe(head, HEAD + (
        "evaluate:\n"
        "  - {type: binary_accuracy, output: prob, labels: face, primary: true}\n"
        "  - {name: face_f1, type: f1, output: prob, labels: face}\n"
        "  - {type: mse, output: bbox, labels: box}\n"
        "  - {type: cosine, output: prob}\n"
        "  - {name: face_top1, type: top1, output: prob, labels: face}\n"
        "gates:\n  max_accuracy_drop: 0.0\n  metrics: {binary_accuracy: {max_drop: 0.0, min: 0.95}, mse: {max: 0.02}}\n"
        "  min_cosine: {min: 0.999, per_sample: worst}\n"
    ))
    res = run_cli("build", head, "-o", tmp_path / "out", "--no-publish", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    # 36/40 = 0.9 < min 0.95 fails; the drop (0.0), mse (0.1^2 = 0.01), cosine and top-1 pass
    assert "binary_accuracy 0.9 < min 0.95" in res.stderr and res.stderr.count("ort-fp32 on local") == 1
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["evaluate"]["primary"] == "binary_accuracy" and report["evaluate"]["declared"]
    d = report["targets"]["ort-fp32"]["devices"]["local"]
    m = d["accuracy"]["metrics"]
    assert m["binary_accuracy"]["value"] == pytest.approx(0.9) and m["binary_accuracy"]["drop"] == 0.0
    assert m["binary_accuracy"]["per_sample"]["n"] == 40 and len(m["binary_accuracy"]["per_sample"]["values"]) == 40
    assert m["mse"]["value"] == pytest.approx(0.01, rel=1e-4) and m["mse"]["output"] == "bbox"
    assert m["face_f1"]["reference"] == m["face_f1"]["value"] and m["cosine"]["value"] == pytest.approx(1.0)
    assert m["face_top1"]["value"] == pytest.approx(0.9) and d["accuracy"]["top1"] == pytest.approx(0.9)
    gates = d["gates"]
    assert [f["gate"] for f in gates["failures"]] == ["metrics.binary_accuracy"]
    assert {"max_accuracy_drop", "min_cosine", "metrics.mse"} <= set(gates["checked"])
    assert set(d["accuracy"]["fidelity"]["outputs"]) == {"bbox", "prob"}


DIGITS_EVAL = """
evaluate:
  - {name: top3, type: topk, k: 3, primary: true}
  - {type: top1}
  - {type: cosine}
  - {name: recall, fn: digits_metrics:macro_recall, output: logits, higher_is_better: true}
"""


def test_digits_build_with_evaluate_and_metric_gates(digits_recipe, tmp_path):
    (digits_recipe.parent / "digits_metrics.py").write_text(
        "import numpy as np\n"
        "def macro_recall(outputs, labels):\n"
        "    pred = outputs['logits'].argmax(1)\n"
        "    return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))\n"
    )
    text = digits_recipe.read_text().replace("devices: [local]\n", "devices: [local]\n" + DIGITS_EVAL)
    text = text.replace("  max_size_mb: 5\n", "  max_size_mb: 5\n  metrics: {top1: {max_drop: 0.02}, top3: {min: 0.97}, cosine: {min: 0.9}, recall: {max_drop: 0.05}}\n")
    digits_recipe.write_text(text)
    res = run_cli("build", digits_recipe, "-o", tmp_path / "b", "--no-publish", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    head = next(line for line in res.stdout.splitlines() if line.startswith("target ")).split()
    assert "top3" in head and "top-1" not in head  # the primary metric's column, named after it
    row = next(line for line in res.stdout.splitlines() if line.startswith("ort-int8"))
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    ref = report["evaluate"]["reference"]
    assert report["evaluate"]["primary"] == "top3" and ref["top1"]["value"] > 0.95 and ref["cosine"]["value"] == pytest.approx(1.0)
    assert ref["top3"]["value"] >= ref["top1"]["value"] and 0.9 < ref["recall"]["value"] <= 1.0
    for tid in ("ort-int8", "ort-fp32"):
        dev = report["targets"][tid]["devices"]["local"]
        m = dev["accuracy"]["metrics"]
        assert set(m) == {"top3", "top1", "cosine", "recall"}
        assert m["top1"]["reference"] == ref["top1"]["value"]
        assert m["top1"]["drop"] == pytest.approx(ref["top1"]["value"] - m["top1"]["value"])
        assert m["top3"]["per_sample"]["n"] == 597 and "values" not in m["top3"]["per_sample"]  # summary only: > 256 samples
        assert {"metrics.top1", "metrics.top3", "metrics.cosine", "metrics.recall", "max_accuracy_drop"} <= set(dev["gates"]["checked"])
    assert f"{report['targets']['ort-int8']['devices']['local']['accuracy']['metrics']['top3']['value']:.4f}" in row
    fp32 = report["targets"]["ort-fp32"]["devices"]["local"]["accuracy"]["metrics"]
    assert fp32["top1"]["drop"] == 0.0 and fp32["cosine"]["value"] == pytest.approx(1.0)
    # a metric gate that fails: exit 3, the message names the metric and both numbers; validation is cached
    digits_recipe.write_text(text.replace("top3: {min: 0.97}", "top3: {min: 0.9999}"))
    res = run_cli("build", digits_recipe, "-o", tmp_path / "b2", "--no-publish", cwd=tmp_path)
    assert res.returncode == 3, res.stderr
    assert "ort-int8 on local: top3 0.9" in res.stderr and "< min 0.9999" in res.stderr


def test_named_label_sets_from_a_loader_are_checked_and_frozen_deterministically(tmp_path):
    from edgepack.data import freeze, load_source, read_data, read_npz
    from edgepack.errors import BadInputError
    from edgepack.recipe import load_recipe

    (tmp_path / "loader.py").write_text(
        "import numpy as np\n"
        "def val():\n"
        "    return {'x': np.zeros((3, 8), np.float32)}, {'text': np.array(['a', 'bb', 'c']), 'face': np.array([0, 1, 1])}\n"
        "def short():\n"
        "    return {'x': np.zeros((3, 8), np.float32)}, {'face': np.array([0, 1])}\n"
    )
    two_output_onnx(tmp_path / "model.onnx")
    text = HEAD.replace("validation: {path: val.npz, labels: {face: face.npy, box: box.npy}}", "validation: {loader: loader:val}")
    lr = load_recipe(write_recipe(tmp_path / "recipe.yaml", text))
    arrays, labels = load_source(lr, lr.recipe.data.validation, "validation", lr.recipe.model.inputs)
    assert sorted(labels) == ["face", "text"]
    a = freeze(arrays, labels, tmp_path / "d", "validation")
    b = freeze(arrays, dict(reversed(list(labels.items()))), tmp_path / "d", "validation")
    assert a.digest == b.digest and a.meta["label_sets"] == ["face", "text"]  # same content, same file, any dict order
    _, sets = read_data(a.path)
    assert list(sets["text"]) == ["a", "bb", "c"] and read_npz(a.path)[1] is None  # two sets: no single 'labels' array
    lr2 = load_recipe(write_recipe(tmp_path / "recipe.yaml", text.replace("loader:val", "loader:short")))
    with pytest.raises(BadInputError, match="label set 'face' has 2 labels for 3 samples"):
        load_source(lr2, lr2.recipe.data.validation, "validation", lr2.recipe.model.inputs)


def test_min_cosine_gate_blocks_a_bias_dominated_int8_output():
    """The issue's MobileNetV2 case in miniature: logits = big class bias + tiny signal, per-tensor INT8."""
    from edgepack.recipe import Gates
    from edgepack.validate.gates import evaluate
    from edgepack.validate.scoring import score_outputs

    rng = np.random.default_rng(0)
    ref = {"logits": rng.uniform(20, 60, size=10) + 0.05 * rng.standard_normal((64, 10))}
    scale = np.abs(ref["logits"]).max() / 127
    q = {"logits": np.round(ref["logits"] / scale) * scale}
    acc = score_outputs([], q, None, ref, None)
    assert acc["fidelity"]["cosine_uncentred"] > 0.9999  # what min_cosine checked before
    res = evaluate(Gates(min_cosine=0.99), "ort-int8", "local", {"accuracy": acc}, 1000)
    assert not res["passed"] and "centred cosine vs FP32" in res["failures"][0]["message"]
    good = score_outputs([], {"logits": ref["logits"] + 1e-4}, None, ref, None)
    assert evaluate(Gates(min_cosine=0.99), "ort-fp32", "local", {"accuracy": good}, 1000)["passed"]

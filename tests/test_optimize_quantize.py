"""Quantization pass on tiny models trained here on scikit-learn's digits (real ORT quantizers)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepack.artifact import Artifact
from edgepack.cache import StageCache
from edgepack.data import freeze
from edgepack.engine import Engine
from edgepack.errors import BadInputError, RecipeError, StageError
from edgepack.ingest import onnx_specs
from edgepack.optimize import PassContext, count_ops, make_pass
from edgepack.recipe import Gates, QuantizePass, parse_recipe

DIGITS = Path(__file__).resolve().parents[1] / "recipes" / "digits"


def digits():
    sys.path.insert(0, str(DIGITS))
    import digits_data

    (x, y), (vx, vy) = digits_data.training(), digits_data.validation()
    return x["input"], y, vx["input"], vy


def train_digits_cnn(epochs: int = 6, width: int = 8, seed: int = 0):
    import torch

    sys.path.insert(0, str(DIGITS))
    from digits_model import DigitsCNN

    torch.manual_seed(seed)
    x, y, _, _ = digits()
    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    m = DigitsCNN(width)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(X[idx]), Y[idx]).backward()
            opt.step()
    return m.eval()


def export(module, path: Path, opset: int = 17) -> Artifact:
    import torch

    torch.onnx.export(module, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=opset, dynamo=False)
    ins, outs = onnx_specs(path)
    return Artifact(path, "onnx", inputs=ins, outputs=outs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    torch.set_num_threads(1)  # other test runs share the 2 cores: oversubscribed threads are far slower
    d = tmp_path_factory.mktemp("q")
    x, y, vx, vy = digits()
    cal = freeze({"input": x[:128]}, None, d / "data", "calibration")
    val = freeze({"input": vx}, vy, d / "data", "validation")
    return export(train_digits_cnn(), d / "fp32.onnx"), cal, val


def run_pass(cfg: dict, model: Artifact, tmp_path: Path, gates: Gates | None = None, **data):
    stage = make_pass(QuantizePass.model_validate({"pass": "quantize", **cfg}), PassContext(0, "r.yaml:9:5 optimize[0]", tmp_path, None, gates or Gates()))
    return Engine(StageCache(tmp_path / "cache")).run("optimize[0] quantize", stage, {"model": model, **data})


@pytest.mark.parametrize(
    "cfg, op",
    [
        ({"format": "qdq", "per_channel": True, "calibration": "minmax"}, "QuantizeLinear"),
        ({"format": "qoperator", "per_channel": False, "calibration": "entropy"}, "QLinearConv"),
        ({"format": "qdq", "per_channel": False, "calibration": "percentile", "symmetric_weights": False}, "QuantizeLinear"),
    ],
)
def test_static_int8_within_two_points(trained, tmp_path, cfg, op):
    model, cal, val = trained
    res = run_pass({"mode": "static", **cfg}, model, tmp_path, Gates(max_accuracy_drop=0.02), calibration=cal, validation=val)
    rec = res.record
    assert op in count_ops(res.outputs["model"].path)
    b, a = rec["before"]["accuracy"]["top1"], rec["after"]["accuracy"]["top1"]
    assert b > 0.9
    assert b - a <= 0.02, (b, a)
    assert rec["accuracy_budget"]["met"] is True
    assert rec["size_after"] < rec["size_before"] * 0.6
    assert rec["calibration_sha256"] == cal.digest  # the hashed calibration set is named in the record
    assert any("quant_pre_process" in p for p in rec["preprocess"])
    assert rec["after"]["latency"]["p50_ms"] > 0


def test_symmetric_activations_use_int8(trained, tmp_path):
    model, cal, _ = trained
    res = run_pass({"mode": "static", "symmetric_activations": True}, model, tmp_path, calibration=cal)
    m = onnx.load(str(res.outputs["model"].path))
    zps = [i for i in m.graph.initializer if i.name.endswith("zero_point") and not i.dims]
    assert zps and all(i.data_type == TensorProto.INT8 for i in zps)


def test_dynamic_and_fp16(trained, tmp_path):
    model, cal, val = trained
    mlp = _matmul_mlp(tmp_path / "mlp.onnx")
    _, mval = _mlp_data(tmp_path)
    dyn = run_pass({"mode": "dynamic"}, mlp, tmp_path, validation=mval)
    ops = count_ops(dyn.outputs["model"].path)
    assert "DynamicQuantizeLinear" in ops and "MatMulInteger" in ops, ops
    assert dyn.record["after"]["accuracy"]["cosine"] > 0.99
    cnn = run_pass({"mode": "dynamic"}, model, tmp_path, validation=val)  # Conv stays float, and the record says why
    assert "ConvInteger" in cnn.record["kept_float"] and "ConvInteger" not in count_ops(cnn.outputs["model"].path)
    with pytest.raises(BadInputError, match="op_types: dynamic quantization of Conv"):
        run_pass({"mode": "dynamic", "op_types": ["Conv"]}, model, tmp_path, validation=val)
    fp16 = run_pass({"mode": "fp16", "keep_io_types": True}, model, tmp_path, validation=val)
    m = onnx.load(str(fp16.outputs["model"].path))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # I/O kept in FP32
    assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
    assert abs(fp16.record["after"]["accuracy"]["top1"] - fp16.record["before"]["accuracy"]["top1"]) < 0.01
    full = run_pass({"mode": "fp16", "keep_io_types": False}, model, tmp_path, validation=val)  # float16 I/O, measured too
    m = onnx.load(str(full.outputs["model"].path))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert full.record["after"]["accuracy"]["cosine"] > 0.999


def test_already_quantized_is_left_alone(trained, tmp_path):
    model, cal, val = trained
    q = run_pass({"mode": "static"}, model, tmp_path, calibration=cal).outputs["model"]
    again = run_pass({"mode": "static"}, q, tmp_path, calibration=cal)
    assert "already quantized" in again.record["skipped"]
    assert again.outputs["model"].digest == q.digest


def _matmul_mlp(path: Path, opset: int = 17, constants: bool = False) -> Artifact:
    """input [batch, 64] -> MatMul 64x128 -> Relu -> MatMul 128x10, weights as initializers or Constant nodes."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 128)).astype(np.float32) * 0.1
    w2 = rng.standard_normal((128, 10)).astype(np.float32) * 0.1
    nodes, inits = [], []
    for name, w in (("w1", w1), ("w2", w2)):
        t = onnx.numpy_helper.from_array(w, name)
        if constants:
            nodes.append(helper.make_node("Constant", [], [name], name=f"const_{name}", value=t))
        else:
            inits.append(t)
    nodes += [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"], name="mm2"),
    ]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, str(path))
    ins, outs = onnx_specs(path)
    return Artifact(path, "onnx", inputs=ins, outputs=outs)


def _mlp_data(tmp_path):
    _, _, vx, vy = digits()
    flat = vx.reshape(len(vx), 64)
    return freeze({"input": flat[:64]}, None, tmp_path / "data", "calibration"), freeze({"input": flat}, vy, tmp_path / "data", "validation")


def test_int4_weight_only_matmul(tmp_path):
    model = _matmul_mlp(tmp_path / "mlp.onnx")
    _, val = _mlp_data(tmp_path)
    res = run_pass({"mode": "int4", "block_size": 32}, model, tmp_path, validation=val)
    ops = count_ops(res.outputs["model"].path)
    assert ops.get("MatMulNBits") == 2 and "MatMul" not in ops, ops
    assert res.record["after"]["accuracy"]["cosine"] > 0.97  # 4-bit blocks of 32 on random weights: ~0.99
    assert res.record["size_after"] < res.record["size_before"] / 3


def test_int4_without_matmul_says_why(trained, tmp_path):
    model, _, val = trained  # the CNN exports Linear as Gemm
    res = run_pass({"mode": "int4"}, model, tmp_path, validation=val)
    assert "MatMul only" in res.record["skipped"]


def test_constant_weights_are_folded_and_opset_upgraded(tmp_path):
    model = _matmul_mlp(tmp_path / "mlp_const.onnx", opset=11, constants=True)
    cal, val = _mlp_data(tmp_path)
    res = run_pass({"mode": "static", "per_channel": True}, model, tmp_path, calibration=cal, validation=val)
    pre = " | ".join(res.record["preprocess"])
    assert "2 weight tensor(s) held in Constant nodes" in pre
    assert "opset upgraded 11 -> 13" in pre
    m = onnx.load(str(res.outputs["model"].path))
    # the weights are now quantized initializers (int8), not float Constant nodes
    assert sum(1 for i in m.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 2) == 2
    assert res.record["after"]["accuracy"]["cosine"] > 0.98


def test_recipe_fields(tmp_path):
    base = "name: t\nversion: '1'\nmodel: {format: onnx, path: m.onnx, inputs: [{name: input, shape: [1, 4]}]}\noptimize:\n"
    r = parse_recipe(base + "  - {pass: quantize, mode: int4, block_size: 64}\n  - {pass: prune, method: '2:4'}\n"
                     "  - {pass: distill, student: s:build, training: {epochs: 3}}\n", tmp_path / "r.yaml")
    assert [p.pass_ for p in r.optimize] == ["quantize", "prune", "distill"]
    with pytest.raises(RecipeError, match=r"r.yaml:5:5 optimize\[0\].*finetune works with method 'channel'"):
        parse_recipe(base + "  - pass: prune\n    method: magnitude\n    finetune: {epochs: 2}\n", tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match="accuracy_aware works with mode"):
        parse_recipe(base + "  - {pass: quantize, mode: fp16, accuracy_aware: {max_accuracy_drop: 0.01}}\n", tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"optimize\[0\].temprature: unknown key") as e:
        parse_recipe(base + "  - {pass: distill, student: s:build, temprature: 2}\n", tmp_path / "r.yaml")
    assert e.value.hint == "did you mean 'temperature'?"


def test_static_failure_is_a_stage_error(tmp_path):
    # a model whose only input is int64 cannot be statically quantized into anything useful, but ORT
    # must not crash the build: whatever happens is either a recorded no-op or a StageError
    model = _matmul_mlp(tmp_path / "mlp.onnx")
    cal, _ = _mlp_data(tmp_path)
    with pytest.raises(StageError, match="static quantization failed|calibration failed"):
        run_pass({"mode": "static", "nodes": None, "op_types": ["NoSuchOp"], "per_channel": False, "format": "qoperator", "calibration": "entropy"},
                 model, tmp_path, calibration=freeze({"input": np.zeros((4, 3), np.float32)}, None, tmp_path / "bad", "calibration"))

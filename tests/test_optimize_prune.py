"""Pruning passes: magnitude / 2:4 on ONNX weights, structured channels on the PyTorch source (real
torch-pruning, real fine-tuning, real build)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgepack.cache import StageCache
from edgepack.data import freeze
from edgepack.engine import Engine
from edgepack.errors import BadInputError
from edgepack.optimize import PassContext, make_pass
from edgepack.optimize.prune import two_four_mask
from edgepack.recipe import Gates, PrunePass, load_recipe
from test_optimize_quantize import DIGITS, digits, export

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # workers share 2 cores with other test runs


@pytest.fixture(scope="module")
def digits_fp32(tmp_path_factory):
    """The digits recipe's trained CNN (committed weights) as ONNX, with validation data."""
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("prune")
    lr = load_recipe(DIGITS / "recipe.yaml")
    from edgepack.optimize.torch_model import build_module

    m = build_module(lr.recipe.model.entrypoint, DIGITS, "model.entrypoint")
    m.load_state_dict(torch.load(DIGITS / "weights.pt", weights_only=True))
    _, _, vx, vy = digits()
    val = freeze({"input": vx}, vy, d / "data", "validation")
    return export(m.eval(), d / "fp32.onnx"), val, lr


def run(cfg: dict, model, tmp_path, lr, gates=None, **data):
    stage = make_pass(PrunePass.model_validate({"pass": "prune", **cfg}), PassContext(0, "r.yaml:20:5 optimize[0]", DIGITS, lr.recipe.model, gates or Gates()))
    return Engine(StageCache(tmp_path / "cache")).run("optimize[0] prune", stage, {"model": model, **data})


def _weights(path: Path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if len(i.dims) >= 2}


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_reaches_target_sparsity(digits_fp32, tmp_path, scope):
    model, val, lr = digits_fp32
    res = run({"method": "magnitude", "sparsity": 0.5, "scope": scope}, model, tmp_path, lr, validation=val)
    rec = res.record
    assert rec["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rec["after"]["weight_sparsity"] == pytest.approx(0.5, abs=0.01) and rec["before"]["weight_sparsity"] == 0.0
    per_layer = [entry["sparsity"] for entry in rec["layers"]]
    if scope == "layer":
        assert all(abs(s - 0.5) < 0.02 for s in per_layer)
    else:
        assert max(per_layer) - min(per_layer) > 0.05  # one global threshold prunes layers unevenly
    assert rec["after"]["compressed_bytes"] < rec["before"]["compressed_bytes"] * 0.8
    assert "dense ONNX storage" in rec["note"]
    assert rec["after"]["accuracy"]["top1"] > 0.9


def test_two_four_pattern(digits_fp32, tmp_path):
    model, val, lr = digits_fp32
    res = run({"method": "2:4"}, model, tmp_path, lr, validation=val)
    w = _weights(res.outputs["model"].path)
    conv2 = next(v for k, v in w.items() if v.ndim == 4 and v.shape[1] == 8)  # [16, 8, 3, 3]: 8 input channels
    groups = np.moveaxis(conv2, 1, -1).reshape(-1, 4)
    assert np.all(np.count_nonzero(groups, axis=1) <= 2)
    # the first conv has a single input channel: not a multiple of 4, left alone with the reason
    assert any("not a multiple of 4" in s["reason"] for s in res.record["skipped_layers"])
    assert res.record["layers_pruned"] == 3
    assert two_four_mask(np.arange(8, dtype=np.float32).reshape(2, 4), 1).tolist() == [[False, False, True, True]] * 2


def test_nothing_to_prune_says_why(digits_fp32, tmp_path):
    model, val, lr = digits_fp32
    res = run({"method": "magnitude", "op_types": ["LSTM"]}, model, tmp_path, lr, validation=val)
    assert "no weight matched" in res.record["unchanged"]
    assert res.record["after"]["weight_sparsity"] == 0.0


def test_channel_pruning_needs_pytorch_model_before_onnx_passes(digits_fp32, tmp_path):
    model, val, lr = digits_fp32
    model.meta["passes"] = ["quantize:static"]
    try:
        with pytest.raises(BadInputError, match="changed by ONNX-level passes"):
            run({"method": "channel"}, model, tmp_path, lr, validation=val)
    finally:
        model.meta.pop("passes")
    from edgepack.recipe import ModelFormat

    onnx_src = lr.recipe.model.model_copy(update={"format": ModelFormat.ONNX, "path": "m.onnx"})
    stage = make_pass(PrunePass.model_validate({"pass": "prune", "method": "channel"}), PassContext(0, "r.yaml:20:5 optimize[0]", DIGITS, onnx_src, Gates()))
    with pytest.raises(BadInputError, match="needs a PyTorch source"):
        Engine(StageCache(tmp_path / "c2")).run("optimize[0] prune", stage, {"model": model, "validation": val})


def test_channel_pruning_in_a_build(digits_recipe, tmp_path, monkeypatch):
    """Real build: convert -> prune half the channels + fine-tune -> static INT8 -> validate, sign."""
    for k, v in ONE_THREAD.items():
        monkeypatch.setenv(k, v)
    text = digits_recipe.read_text()
    text = text.replace("    loader: digits_data:validation     # returns (inputs, labels)\n",
                        "    loader: digits_data:validation     # returns (inputs, labels)\n  training:\n    loader: digits_data:training\n")
    text = re.sub(r"optimize:\n(.*\n)*?\ntargets:", """optimize:
  - pass: prune
    method: channel
    sparsity: 0.5
    finetune: {epochs: 4, learning_rate: 0.003, batch_size: 64, seed: 0}
  - pass: quantize
    mode: static

targets:""", text)
    text = re.sub(r"  - type: onnxruntime\n    name: ort-fp32\n    input: fp32\n", "", text)
    # a pruned, fine-tuned model is a different model: its logits drift from FP32 (centred cosine ~0.82) while top-1 holds
    text = text.replace("min_cosine: 0.98", "min_cosine: 0.75")
    digits_recipe.write_text(text)
    from edgepack.pipeline import BuildOptions, build

    res = build(load_recipe(digits_recipe), BuildOptions(output=tmp_path / "out", publish=False, quiet=True, cache_dir=tmp_path / "cache"))
    report = json.loads((res.bundle / "report.json").read_text())
    prune, quant = report["optimize"]
    assert prune["pass"] == "prune" and quant["pass"] == "quantize"
    assert prune["torch_params"]["reduction"] >= 0.4
    assert prune["after"]["params"] <= 0.6 * prune["before"]["params"]
    assert prune["after"]["macs"] < 0.6 * prune["before"]["macs"]
    assert prune["ignored_layers"] == {"classifier.3": "produces the model output"}
    assert prune["finetune"]["epochs_run"] == 4 and len(prune["finetune"]["history"]) == 4
    assert prune["accuracy_budget"]["met"] and prune["accuracy_budget"]["drop"] <= 0.02
    assert quant["accuracy_budget"]["met"]
    assert report["targets"]["ort-int8"]["status"] == "ok"

"""Core ML target with the real coremltools: PyTorch frontend (fp16, fp32, int8, palettized), the
ONNX-only path through onnx2tf, structural checks on Linux, numeric checks marked macos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_onnx

from edgepack.artifact import Artifact
from edgepack.errors import BadInputError
from edgepack.ingest import onnx_specs
from edgepack.recipe import load_recipe
from edgepack.targets import TargetContext, make_target

MODULE = '''
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10),
    ).eval()
'''


def _recipe(tmp_path: Path, fmt: str = "pytorch", targets: str = "[{type: coreml}]") -> Path:
    (tmp_path / "cm_model.py").write_text(MODULE)
    model = "  entrypoint: cm_model:build\n" if fmt == "pytorch" else "  path: m.onnx\n"
    text = f"""name: cm
version: "1"
model:
  format: {fmt}
{model}  inputs: [{{name: input, shape: [batch, 1, 8, 8], layout: NCHW}}]
  outputs: [logits]
targets: {targets}
"""
    p = tmp_path / "recipe.yaml"
    p.write_text(text)
    return p


def _stage(recipe: Path, i: int = 0):
    lr = load_recipe(recipe)
    return make_target(lr.recipe.targets[i], TargetContext(lr.where("targets", i), lr.dir, lr.recipe.model)), lr


def _fp32(tmp_path: Path) -> Artifact:
    """The FP32 ONNX the build would pass in (the module above, exported here)."""
    import sys

    import torch

    sys.path.insert(0, str(tmp_path))
    import cm_model

    path = tmp_path / "fp32.onnx"
    torch.onnx.export(cm_model.build(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)
    ins, outs = onnx_specs(path, {"input": "NCHW"})
    return Artifact(path, "onnx", inputs=ins, outputs=outs)


def _run(tmp_path, recipe, i, fp32, name, model=None):
    from edgepack.ingest import source_artifact

    stage, lr = _stage(recipe, i)
    work = tmp_path / name
    work.mkdir()
    return stage.run({"source": source_artifact(lr.recipe.model, lr), "fp32": fp32, "model": model or fp32}, work)


def test_pytorch_source_fp16_fp32_int8_palettized(tmp_path):
    recipe = _recipe(tmp_path, targets="""
  - {type: coreml, name: half}
  - {type: coreml, name: full, precision: fp32, options: {minimum_deployment_target: macOS13}}
  - {type: coreml, name: q8, precision: int8, options: {weight_threshold: 512}}
  - {type: coreml, name: lut, precision: palettized, options: {palette_bits: 4, weight_threshold: 512}}""")
    fp32 = _fp32(tmp_path)
    optimized = Artifact(tiny_onnx(tmp_path / "optimized.onnx"), "onnx")  # stands for an optimize chain's output
    res = {n: _run(tmp_path, recipe, i, fp32, n, optimized if n == "half" else None) for i, n in enumerate(("half", "full", "q8", "lut"))}
    assert any("optimize chain's model is not used" in n for n in res["half"].record["notes"])  # said, not silent
    assert not any("optimize chain" in n for n in res["full"].record["notes"])
    for name, r in res.items():
        art, s = r.outputs["artifact"], r.record["structure"]
        assert art.path.name == "model.mlpackage" and art.path.is_dir() and art.format == "mlpackage"
        assert (art.path / "Manifest.json").is_file()
        assert s["model_type"] == "mlProgram"
        # I/O as the recipe says: float32 NCHW in, float32 logits out (dynamic batch fixed to 1)
        assert s["inputs"] == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
        assert s["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
        assert s["ops"]["conv"] == 2 and s["ops"]["relu"] == 2
        assert art.meta["runtime"] == "coreml" and "macOS" in r.record["numeric_validation"]
    assert res["half"].record["structure"]["opset"] == "CoreML6"  # iOS16 default
    assert res["full"].record["structure"]["opset"] == "CoreML6"
    sizes = {n: r.record["structure"]["size_bytes"] for n, r in res.items()}
    assert sizes["half"] < 0.6 * sizes["full"]  # fp16 weights: about half the fp32 package
    assert res["q8"].record["structure"]["ops"].get("constexpr_affine_dequantize", 0) >= 2
    assert res["lut"].record["structure"]["ops"].get("constexpr_lut_to_dense", 0) >= 2
    assert sizes["q8"] < 0.7 * sizes["half"] and sizes["lut"] < sizes["q8"]
    assert res["half"].record["structure"]["compressed_weights"] == 0
    assert "cast" not in res["full"].record["structure"]["ops"]  # fp32 compute: no fp16 casts


def test_onnx_only_source_goes_through_onnx2tf(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    recipe = _recipe(tmp_path, fmt="onnx")
    path = tmp_path / "m.onnx"
    ins, outs = onnx_specs(path, {"input": "NCHW"})
    stage, lr = _stage(recipe)
    assert stage.frontend == "onnx"
    assert stage.coverage_input(None, Artifact(path, "onnx"))[0] == "onnx2tf"
    work = tmp_path / "w"
    work.mkdir()
    r = stage.run({"source": Artifact(path, "onnx"), "fp32": Artifact(path, "onnx", inputs=ins, outputs=outs)}, work)
    s = r.record["structure"]
    assert s["inputs"] == [{"name": "input", "shape": [1, 1, 8, 8], "dtype": "float32"}]
    assert s["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert max(r.record["tf_vs_onnx_max_abs_diff"]) < 1e-4  # the TensorFlow leg, checked numerically here
    assert r.record["frontend"] == "onnx" and s["ops"].get("conv") == 2


@pytest.mark.parametrize("targets, match", [
    ("[{type: coreml, precision: int4}]", r"targets\[0\]\.precision: must be 'fp16', 'fp32', 'int8' or 'palettized'"),
    ("[{type: coreml, options: {minimum_deployment_target: iOS11}}]", r"targets\[0\]\.options\.minimum_deployment_target: must be 'iOS15', "),
    ("[{type: coreml, precision: int8, options: {minimum_deployment_target: iOS15}}]",
     r"targets\[0\]\.options\.minimum_deployment_target: int8 weights need iOS16 / macOS13 or newer"),
    ("[{type: coreml, options: {palette_bit: 4}}]", r"targets\[0\]\.options\.palette_bit: unknown key"),
    ("[{type: coreml, options: {palette_bits: 5}}]", r"options\.palette_bits: must be 1, 2, 3, 4, 6 or 8"),
])
def test_bad_recipe_values_name_the_field(tmp_path, targets, match):
    with pytest.raises(BadInputError, match=match) as e:
        _stage(_recipe(tmp_path, targets=targets))
    assert "recipe.yaml:" in str(e.value)


def test_pytorch_frontend_needs_a_pytorch_source(tmp_path):
    tiny_onnx(tmp_path / "m.onnx")
    with pytest.raises(BadInputError, match=r"options\.frontend: 'pytorch' needs a PyTorch source .* this recipe's is onnx") as e:
        _stage(_recipe(tmp_path, fmt="onnx", targets="[{type: coreml, options: {frontend: pytorch}}]"))
    assert "frontend: onnx" in e.value.hint


@pytest.mark.macos
def test_prediction_matches_torch_on_macos(tmp_path):
    """On macOS the runner's Core ML adapter predicts; fp16 outputs stay close to PyTorch's."""
    import sys

    import torch

    from edgepack.devices.runtimes import CoreMLAdapter

    recipe = _recipe(tmp_path)
    r = _run(tmp_path, recipe, 0, _fp32(tmp_path), "mac")
    sys.path.insert(0, str(tmp_path))
    import cm_model

    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    adapter = CoreMLAdapter()
    adapter.load(str(r.outputs["artifact"].path), None, {"compute_units": "CPU_ONLY"})
    got = adapter.run({"input": x})[0]
    ref = cm_model.build()(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - ref).max() < 5e-2, json.dumps(r.record["structure"])


def test_mac_profile_is_where_core_ml_validates():
    from edgepack.devices import load_profile

    p, _ = load_profile("mac")
    assert p.os == "darwin" and "coreml" in p.runtimes and p.transport.type.value == "ssh"

"""TFLite / LiteRT target: real onnx2tf conversions of a tiny CNN and a tiny MLP, run by the real
device runner (ai-edge-litert interpreter with XNNPACK) and compared with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, tiny_onnx

from edgepack.artifact import Artifact, digest_path
from edgepack.cache import StageCache
from edgepack.data import freeze
from edgepack.devices import LOCAL
from edgepack.engine import Engine
from edgepack.errors import BadInputError
from edgepack.recipe import Benchmark, InputSpec, ModelSection, Target, TargetType
from edgepack.targets import TargetContext, make_target
from edgepack.validate import ReferenceStage, ValidateStage

WHERE = "recipe.yaml:30:5 targets[1]"


def tiny_mlp_onnx(path: Path, seed: int = 0) -> Path:
    """A 2-layer MLP (input 'x' [batch,16], output 'y' [batch,5]) with a dynamic batch axis."""
    import onnx
    import torch

    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)).eval()
    torch.onnx.export(mlp, (torch.randn(1, 16),), str(path), input_names=["x"], output_names=["y"], opset_version=17, dynamo=False)
    m = onnx.load(str(path))
    for v in (m.graph.input[0], m.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_param = "batch"  # what a dynamic-batch export looks like
    onnx.save(m, str(path))
    return path


def model_section(name: str, shape: list, layout=None) -> ModelSection:
    return ModelSection(format="onnx", path="model.onnx", inputs=[InputSpec(name=name, shape=shape, layout=layout)])


def compile_and_validate(tmp_path: Path, typ: str, precision: str, onnx_path: Path, section: ModelSection, calib: np.ndarray,
                         val: np.ndarray, options: dict | None = None):
    """compile -> validate on this host through the real runner; returns (artifact, compile record, validate record)."""
    name = section.inputs[0].name
    target = Target(type=typ, precision=precision, options=options or {})
    stage = make_target(target, TargetContext(WHERE, tmp_path, section))
    engine = Engine(StageCache(tmp_path / "cache"), log_dir=tmp_path / "logs")
    data = tmp_path / "data"
    calibration = freeze({name: calib}, None, data, "calibration")
    labels = np.zeros(len(val), dtype=np.int64)
    validation = freeze({name: val}, labels, data, "validation")
    model = Artifact(onnx_path, "onnx")
    res = engine.run(f"compile {typ}", stage, {"model": model, "calibration": calibration})
    assert digest_path(onnx_path) == model.digest  # the input artifact is never modified (onnx2tf rewrites its input file)
    art = res.outputs["artifact"]
    reference = engine.run("reference", ReferenceStage(), {"model": model, "validation": validation}).outputs["outputs"]
    bench = Benchmark(warmup_runs=2, warmup_seconds=0, runs=5, min_seconds=0, threads=1)
    vres = engine.run(f"validate {typ}", ValidateStage(LOCAL, bench, [name]), {"artifact": art, "validation": validation, "reference": reference})
    return art, res.record, vres.record


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_cnn_full_integer_int8_nhwc(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "cnn.onnx")
    art, rec, val = compile_and_validate(tmp_path, "tflite", "int8", onnx_path, model_section("input", ["batch", 1, 8, 8], "NCHW"),
                                         images(32, 1), images(24, 2))
    assert art.format == "tflite" and art.path.suffix == ".tflite" and art.path.is_file()
    assert rec["onnx2tf_file"].endswith("_full_integer_quant.tflite")
    assert rec["calibration"]["samples"] == 32
    # 1-channel input: no stand-in for onnx2tf's sample images needed; the dynamic batch is pinned, and said;
    # onnx2tf's own shape estimation did not run on 4-D -cind data, and said
    assert rec["notes"][0] == "input 'input': batch dimension 'batch' fixed to 1" and len(rec["notes"]) == 2
    assert rec["notes"][1].startswith("onnx2tf skipped its ONNX-side shape estimation")
    # the artifact's contract: int8 NHWC input fed through a transpose, int8 output
    assert [(s.shape, s.dtype, s.layout) for s in art.inputs] == [((1, 8, 8, 1), "int8", "NHWC")]
    assert art.outputs[0].dtype == "int8"
    assert art.meta["runner"]["inputs"][0]["perm"] == [0, 2, 3, 1] and art.meta["runner"]["inputs"][0]["source"] == "input"
    assert art.meta["quantized_io"] is True and art.meta["precision"] == "int8"
    assert rec["tensor_dtypes"].get("int8", 0) > 0 and "float32" not in rec["tensor_dtypes"]
    # the real runner: XNNPACK recorded, outputs dequantized and close to FP32 ONNX
    assert val["runtime"] == "tflite" and val["load"]["xnnpack"] is True
    assert val["load"]["quantized_inputs"] == [art.inputs[0].name]
    fid = val["accuracy"]["fidelity"]
    assert fid["samples"] == 24 and fid["cosine"] > 0.98 and fid["top1_agreement"] >= 0.9
    assert fid["max_abs_error"] > 0  # it really is quantized


BUILD = """\
name: tfl
version: '1'
model:
  format: onnx
  path: model.onnx
  inputs:
    - {name: input, shape: [batch, 1, 8, 8], layout: NCHW}
  outputs: [logits]
data:
  calibration: {path: calib.npz}
  validation: {path: val.npz}
targets:
  - {type: tflite, name: tfl-fp32}
  - {type: tflite, name: tfl-int8, precision: int8}
devices: [local]
benchmark: {warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0}
"""


def test_build_with_two_tflite_precisions_converts_onnx_once(tmp_path):
    """fp32 + int8 TFLite targets of one model: one onnx2tf run (a shared SavedModel stage), each
    compile converts only its own variant from it, and both stay close to FP32 ONNX."""
    import json

    tiny_onnx(tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", input=images(32, 1))
    np.savez(tmp_path / "val.npz", input=images(24, 2))
    (tmp_path / "recipe.yaml").write_text(BUILD)
    res = run_cli("build", tmp_path / "recipe.yaml", "-o", tmp_path / "out", "--no-publish", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    conv = [s for s in report["stages"] if s["stage"] == "convert.onnx2tf-savedmodel"]
    assert len(conv) == 1 and not conv[0]["cached"]  # the second target reused it: no second onnx2tf run
    compiles = {s["name"]: s for s in report["stages"] if s["stage"] == "compile.tflite"}
    assert set(compiles) == {"compile tfl-fp32", "compile tfl-int8"}
    assert {c["inputs"]["saved_model"] for c in compiles.values()} == {conv[0]["outputs"]["saved_model"]}
    logs = sorted(p.name for p in (tmp_path / ".out.logs").glob("*.log"))
    assert [n for n in logs if "saved_model" in n] == ["compile_tfl-fp32_[saved_model].log"]
    fp32, int8 = report["targets"]["tfl-fp32"], report["targets"]["tfl-int8"]
    assert fp32["compile"]["onnx2tf_produced"] == ["model_float32.tflite"]  # only the requested variant
    assert int8["compile"]["onnx2tf_produced"] == ["model_full_integer_quant.tflite"]
    assert int8["compile"]["tflite_converter"]["representative_samples"] == 32
    assert fp32["compile"]["saved_model"]["shared_stage"] is True
    assert int8["artifact"]["inputs"][0]["dtype"] == "int8" and "float32" not in int8["compile"]["tensor_dtypes"]
    f32, i8 = fp32["devices"]["local"]["accuracy"]["fidelity"], int8["devices"]["local"]["accuracy"]["fidelity"]
    assert f32["cosine"] > 0.9999 and f32["max_abs_error"] < 1e-4
    assert i8["cosine"] > 0.98 and i8["top1_agreement"] >= 0.9 and i8["max_abs_error"] > 0


def test_mlp_dynamic_batch_dynamic_range(tmp_path):
    onnx_path = tiny_mlp_onnx(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(3)
    calib, val = rng.standard_normal((16, 16), dtype=np.float32), rng.standard_normal((20, 16), dtype=np.float32)
    art, rec, v = compile_and_validate(tmp_path, "tflite", "int8-dynamic", onnx_path, model_section("x", ["batch", 16]), calib, val)
    assert rec["onnx2tf_file"].endswith("_dynamic_range_quant.tflite")
    assert rec["onnx2tf_args"]["overwrite_input_shape"] == ["x:1,16"]  # dynamic batch pinned to 1, and said
    assert "input 'x': batch dimension 'batch' fixed to 1" in rec["notes"]
    assert art.inputs[0].shape == (1, 16) and art.meta["runner"]["inputs"][0]["perm"] is None and art.inputs[0].layout is None
    # 16x32 and 32x5 weights are below TFLite's dynamic-range threshold: the model stays float, and says so
    assert "int8" not in rec["tensor_dtypes"]
    assert any("dynamic-range" in n for n in rec["notes"])
    fid = v["accuracy"]["fidelity"]
    assert fid["max_abs_error"] < 1e-4 and fid["top1_agreement"] == 1.0


def test_rgb_input_without_calibration_stays_offline(tmp_path, monkeypatch):
    """A 3-channel image input makes onnx2tf fetch sample images from GitHub; with the network made
    unreachable (a dead proxy for the worker) the conversion must still succeed, and say what it did."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).eval()
    onnx_path = tmp_path / "rgb.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(onnx_path), input_names=["image"], output_names=["scores"],
                      opset_version=17, dynamo=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    section = model_section("image", ["batch", 3, 8, 8], "NCHW")
    stage = make_target(Target(type=TargetType.TFLITE, precision="fp32"), TargetContext(WHERE, tmp_path, section))
    model = Artifact(onnx_path, "onnx")
    res = Engine(StageCache(tmp_path / "cache"), log_dir=tmp_path / "logs").run("compile tflite", stage, {"model": model})
    rec, art = res.record, res.outputs["artifact"]
    assert "onnx2tf's sample-image download replaced by seeded random images (no calibration data)" in rec["notes"]
    assert rec["calibration"].startswith("none")
    assert art.inputs[0].shape == (1, 8, 8, 3) and art.inputs[0].layout == "NHWC"
    check = rec["sample_check"]["outputs"][0]
    assert check["cosine"] > 0.9999 and check["max_abs_error"] < 1e-4  # seeded random sample vs ONNX Runtime
    assert digest_path(onnx_path) == model.digest


def test_conversion_runs_isolated_with_its_timeout(tmp_path):
    """options.timeout_s bounds the worker: a conversion that cannot finish fails that stage with one line."""
    from edgepack.errors import StageError

    section = model_section("input", ["batch", 1, 8, 8], "NCHW")
    stage = make_target(Target(type=TargetType.TFLITE, precision="fp32", options={"timeout_s": 1}), TargetContext(WHERE, tmp_path, section))
    assert stage.isolated and stage.timeout == 1.0
    model = Artifact(tiny_onnx(tmp_path / "cnn.onnx"), "onnx")
    with pytest.raises(StageError) as e:
        Engine(StageCache(tmp_path / "cache"), log_dir=tmp_path / "logs").run("compile tflite", stage, {"model": model})
    assert "compile tflite" in str(e.value) and "timed out after 1s" in str(e.value)
    assert not list((tmp_path / "cache").rglob("*.tflite"))  # nothing half-written left in the cache


def _stage(precision=None, options=None, **kw):
    return make_target(Target(type=TargetType.TFLITE, precision=precision, options=options or {}, **kw),
                       TargetContext(WHERE, Path("."), model_section("input", ["batch", 1, 8, 8])))


@pytest.mark.parametrize(
    "precision, options, expect",
    [
        ("int4", {}, "targets[0].precision: must be 'fp32', 'fp16', 'int8-dynamic' or 'int8'"),
        ("fp32", {"io_dtype": "int8"}, "targets[0].options.io_dtype: only applies to precision int8"),
        ("int8", {"io_type": "int8"}, "targets[0].options.io_type: unknown key"),
        ("int8", {"io_dtype": "int16"}, "targets[0].options.io_dtype: must be 'int8', 'uint8' or 'float32'"),
        ("int8", {"keep_nchw": "yes"}, "targets[0].options.keep_nchw: must be a valid boolean"),
    ],
)
def test_bad_precision_and_options_name_the_field(precision, options, expect):
    """Checked when the recipe loads (edgepack/recipe_targets.py), at the field's line."""
    import json

    from edgepack.recipe import parse_recipe

    text = ("name: m\nversion: '1'\nmodel: {format: onnx, path: m.onnx, inputs: [{name: x, shape: [1, 3]}]}\n"
            f"targets:\n  - {json.dumps({'type': 'tflite', 'precision': precision, 'options': options})}\n")
    with pytest.raises(BadInputError) as e:
        parse_recipe(text, Path("recipe.yaml"))
    assert expect in str(e.value) and str(e.value).startswith("recipe.yaml:5:")
    assert "\n" not in e.value.one_line()


def test_int8_needs_calibration_and_an_unquantized_model(tmp_path):
    stage = _stage("int8")
    model = Artifact(tiny_onnx(tmp_path / "cnn.onnx"), "onnx")
    with pytest.raises(BadInputError) as e:
        stage.check_inputs({"model": model})
    assert "targets[1].precision: int8 (full-integer) needs calibration data" in str(e.value)
    assert "data.calibration" in e.value.hint
    _stage("int8-dynamic").check_inputs({"model": model})  # no calibration needed
    assert _stage().precision == "fp32"  # the default

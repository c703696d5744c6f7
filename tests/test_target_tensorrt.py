"""TensorRT target: TensorRT-ready ONNX + build spec made here (real onnx / onnxruntime), engine built
where TensorRT and a GPU exist (marked gpu), pre-flight op coverage failing the target alone."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REPO, tiny_onnx, write_recipe
from onnx import helper, numpy_helper

from edgepack.artifact import Artifact
from edgepack.devices.runtime_tensorrt import jetpack_release, trt_cache_key
from edgepack.errors import BadInputError
from edgepack.ingest import onnx_specs
from edgepack.recipe import ModelFormat, ModelSection, Target, TargetType
from edgepack.targets import TargetContext, make_target

WHERE = "recipe.yaml:9:5 targets[0]"


def _stage(tmp_path, precision=None, **options):
    model = ModelSection(format=ModelFormat.ONNX, path="m.onnx", inputs=[{"name": "input", "shape": ["batch", 1, 8, 8]}])
    t = Target(type=TargetType.TENSORRT, precision=precision, options=options)
    return make_target(t, TargetContext(WHERE, tmp_path, model))


def _art(path: Path) -> Artifact:
    ins, outs = onnx_specs(path)
    return Artifact(path, "onnx", inputs=ins, outputs=outs)


def _calibration(tmp_path) -> Artifact:
    rng = np.random.default_rng(1)
    p = tmp_path / "calib.npz"
    np.savez(p, input=rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
    return Artifact(p, "npz")


def _input_dims(path: Path) -> list:
    m = onnx.load(str(path))
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]


def test_fp16_static_shapes_and_build_spec(tmp_path):
    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    assert _input_dims(src.path)[0] == "batch"
    work = tmp_path / "work"
    work.mkdir()
    res = _stage(tmp_path).run({"model": src, "fp32": src}, work)
    art = res.outputs["artifact"]
    assert art.path.is_dir() and art.format == "tensorrt-onnx"
    assert _input_dims(art.path / "model.onnx") == [1, 1, 8, 8]  # dynamic batch fixed: a static engine
    m = onnx.load(str(art.path / "model.onnx"))
    assert [d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    spec = json.loads((art.path / "build_spec.json").read_text())
    assert spec["precision"] == "fp16" and spec["workspace_mb"] == 1024 and spec["profile"] is None
    assert "--fp16" in spec["trtexec"] and "--int8" not in spec["trtexec"] and "--timingCacheFile=timing.cache" in spec["trtexec"]
    assert art.meta["runtime"] == "tensorrt" and art.meta["precision"] == "fp16"
    assert res.record["shapes"]["fixed"]["input"]["to"] == [1, 1, 8, 8]
    assert max(res.record["check"]["max_abs_diff_vs_fp32"]) < 1e-5
    if importlib.util.find_spec("tensorrt") is None:  # no TensorRT here: the device builds the engine
        assert art.meta["engine"] == "built on device" and not (art.path / "model.plan").exists()
        assert res.record["engine"] == {"status": "built on device", "reason": "the tensorrt package is not installed on the build host"}


def test_profile_keeps_dynamic_axis_and_dla(tmp_path):
    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    profile = {"input": {"min": [1, 1, 8, 8], "opt": [4, 1, 8, 8], "max": [8, 1, 8, 8]}}
    res = _stage(tmp_path, "fp16", profile=profile, dla_core=0, workspace_mb=256).run({"model": src, "fp32": src}, work)
    art = res.outputs["artifact"]
    assert _input_dims(art.path / "model.onnx")[0] == "batch"
    spec = json.loads((art.path / "build_spec.json").read_text())
    assert spec["profile"] == profile and spec["dla_core"] == 0
    assert "--minShapes=input:1x1x8x8" in spec["trtexec"] and "--maxShapes=input:8x1x8x8" in spec["trtexec"]
    assert "--useDLACore=0" in spec["trtexec"] and "--allowGPUFallback" in spec["trtexec"] and "--memPoolSize=workspace:256M" in spec["trtexec"]


def test_int8_places_symmetric_qdq(tmp_path):
    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    stage = _stage(tmp_path, "int8")
    inputs = {"model": src, "fp32": src, "calibration": _calibration(tmp_path)}
    stage.check_inputs(inputs)
    res = stage.run(inputs, work)
    m = onnx.load(str(res.outputs["artifact"].path / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) >= 4
    for n in qdq:
        if len(n.input) > 2 and inits[n.input[2]].dtype == np.int8:
            assert not inits[n.input[2]].any()  # zero point 0: TensorRT's explicit quantization
    assert "--int8" in json.loads((res.outputs["artifact"].path / "build_spec.json").read_text())["trtexec"]
    with pytest.raises(BadInputError, match=r"targets\[0\]\.precision: int8 needs calibration"):
        stage.check_inputs({"model": src, "fp32": src})


def test_asymmetric_qdq_input_is_rejected_naming_the_node(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_static

    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    calib = _calibration(tmp_path)
    q = tmp_path / "q.onnx"

    class Reader:
        def __init__(self):
            self.it = iter([{"input": np.load(calib.path)["input"][i : i + 1]} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src.path), str(q), Reader(), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadInputError, match=r"targets\[0\]: node '.+' has .*TensorRT takes int8 Q/DQ with zero point 0") as e:
        _stage(tmp_path, "int8").run({"model": _art(q), "fp32": src, "calibration": calib}, work)
    assert "input: fp32" in e.value.hint


def test_unknown_profile_input(tmp_path):
    # bad precisions and options are refused when the recipe loads: tests/test_recipe_targets.py
    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    stage = _stage(tmp_path, shapes={"image": [1, 1, 8, 8]})
    with pytest.raises(BadInputError, match=r"options\.shapes\.image: the model has no input 'image'"):
        stage.run({"model": src, "fp32": src}, work)


def test_engine_cache_key_and_jetpack_release(tmp_path):
    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    spec = {"precision": "fp16", "workspace_mb": 1024}
    a = trt_cache_key(spec, onnx_path, "10.3.0", "8.7", "R36 (release), REVISION: 4.3")
    assert a == trt_cache_key({**spec, "built": {"x": 1}}, onnx_path, "10.3.0", "8.7", "R36 (release), REVISION: 4.3")
    assert a.startswith("trt10.3.0-sm8.7-jpR36_release_REVISION_4.3-")
    assert a != trt_cache_key(spec, onnx_path, "10.3.0", "8.6", "R36 (release), REVISION: 4.3")  # another GPU
    assert a != trt_cache_key({**spec, "precision": "int8"}, onnx_path, "10.3.0", "8.7", "R36 (release), REVISION: 4.3")
    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    assert jetpack_release(text) == "R36 (release), REVISION: 4.3"


def _unique_model(path: Path) -> Path:
    """x -> Relu -> y, and x -> Unique -> u (an op TensorRT's parser does not take)."""
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])
    u = helper.make_tensor_value_info("u", onnx.TensorProto.FLOAT, [None])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu0"),
                           helper.make_node("Unique", ["x"], ["u"], name="dedupe", sorted=1)], "g", [x], [y, u])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_preflight_fails_only_the_target_that_cannot_take_an_op(tmp_path, cli):
    from edgepack.targets.coverage import check_graph, table_for

    model = _unique_model(tmp_path / "uniq.onnx")
    cov = check_graph(model, table_for("tensorrt"))
    assert cov["unsupported"] == [{"node": "dedupe", "op": "Unique", "reason": "listed as unsupported"}]
    assert check_graph(model, table_for("onnxruntime"))["unsupported"] == []
    recipe = write_recipe(tmp_path / "recipe.yaml", """
name: uniq
version: "1"
model:
  format: onnx
  path: uniq.onnx
  inputs: [{name: x, shape: [batch, 4]}]
targets:
  - type: onnxruntime
  - type: tensorrt
""")
    r = cli("build", recipe, "--no-publish", "-o", tmp_path / "out", cwd=tmp_path, env={"PYTHONPATH": str(REPO)})  # this tree's edgepack
    assert r.returncode == 5, r.stderr
    assert "compile tensorrt: 1 node(s) the target cannot convert" in r.stderr and "dedupe (Unique)" in r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["targets"]["onnxruntime"]["status"] == "ok"
    trt = report["targets"]["tensorrt"]
    assert trt["status"] == "failed" and trt["coverage"]["unsupported"][0]["node"] == "dedupe"
    assert not any(s["name"] == "compile tensorrt" for s in report["stages"])  # failed before its conversion started
    assert (tmp_path / "out" / "targets" / "onnxruntime" / "model.onnx").is_file()


@pytest.mark.gpu
def test_engine_built_and_validated_on_a_gpu(tmp_path):
    """Where TensorRT and an NVIDIA GPU exist: the engine is built here with a timing cache, and the
    runner's adapter runs it (on this GPU) close to ONNX Runtime's FP32 outputs."""
    import onnxruntime as ort

    from edgepack.devices import runtime_tensorrt as runner

    src = _art(tiny_onnx(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    res = _stage(tmp_path, "fp16").run({"model": src, "fp32": src}, work)
    art = res.outputs["artifact"]
    assert art.meta["engine"] == "built here", res.record["engine"]
    assert (art.path / "model.plan").stat().st_size > 0 and (art.path / "timing.cache").stat().st_size > 0
    assert res.record["engine_check"]["engine"] == "shipped" and res.record["engine_check"]["cosine_vs_fp32"][0] > 0.999
    adapter = runner.TensorRTAdapter()
    info = adapter.load(str(art.path), None, {"engine_cache": str(tmp_path / "engines")})
    assert info["engine"] == "shipped"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    got = adapter.run({"input": x})[0]
    ref = ort.InferenceSession(str(src.path)).run(None, {"input": x})[0]
    assert np.abs(got - ref).max() < 2e-2
    # A device whose key differs (here: the shipped plan removed) builds and caches on first use
    (art.path / "model.plan").unlink()
    info = runner.TensorRTAdapter().load(str(art.path), None, {"engine_cache": str(tmp_path / "engines")})
    assert info["engine"] == "built on device" and info["timing_cache_reused"] is False
    info = runner.TensorRTAdapter().load(str(art.path), None, {"engine_cache": str(tmp_path / "engines")})
    assert info["engine"] == "cached"


def test_jetson_profile_runs_tensorrt_with_room_for_a_first_build():
    from edgepack.devices import load_profile

    p, path = load_profile("jetson-orin-nano")
    assert path.name == "jetson-orin-nano.yaml" and p.arch == "aarch64"
    assert p.runtimes[0] == "tensorrt" and p.transport.type.value == "ssh"
    assert p.transport.step_timeout_s >= 1800  # the first runner job builds the engine on the device


def _seq_model(path: Path) -> Path:
    """ids [batch, seq] (both dynamic in the ONNX model) -> embedding lookup -> mean over seq."""
    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32), "table")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["h"]), helper.make_node("ReduceMean", ["h", "axes"], ["y"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])], initializer=[table, axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def _seq_stage(tmp_path, shape, **options):
    model = ModelSection(format=ModelFormat.ONNX, path="m.onnx", inputs=[{"name": "ids", "shape": shape, "dtype": "int64"}])
    return make_target(Target(type=TargetType.TENSORRT, precision="fp16", options=options), TargetContext(WHERE, tmp_path, model))


def test_dynamic_dims_take_the_sizes_model_inputs_declares(tmp_path):
    src = _art(_seq_model(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    res = _seq_stage(tmp_path, ["batch", 12]).run({"model": src, "fp32": src}, work)
    art = res.outputs["artifact"]
    assert _input_dims(art.path / "model.onnx") == [1, 12]  # seq from model.inputs, not 1
    assert res.record["shapes"]["fixed"]["ids"] == {"from": ["batch", "seq"], "to": [1, 12]}
    assert json.loads((art.path / "build_spec.json").read_text())["profile"] is None


def test_a_dynamic_dim_with_no_declared_size_fails_naming_options_shapes(tmp_path):
    src = _art(_seq_model(tmp_path / "m.onnx"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(BadInputError) as e:
        _seq_stage(tmp_path, ["batch", "seq"]).run({"model": src, "fp32": src}, work)
    assert "targets[0].options.shapes.ids: dimension 1 ('seq') is dynamic in the model" in str(e.value)
    assert "options.shapes.ids: [1, N]" in e.value.hint
    (tmp_path / "w2").mkdir()
    res = _seq_stage(tmp_path, ["batch", "seq"], shapes={"ids": [1, 7]}).run({"model": src, "fp32": src}, tmp_path / "w2")
    assert _input_dims(res.outputs["artifact"].path / "model.onnx") == [1, 7]

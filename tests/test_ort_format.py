"""ONNX Runtime mobile: ``options.ort_format`` ships model.ort (made by onnxruntime's own converter)
beside model.onnx, and devices validate the .ort file."""

from __future__ import annotations

import onnxruntime as ort
import pytest
from conftest import tiny_onnx

from edgepack.artifact import Artifact
from edgepack.devices.runtimes import OnnxRuntimeAdapter
from edgepack.ingest import onnx_specs
from edgepack.recipe import ModelFormat, ModelSection, Target, TargetType
from edgepack.targets import TargetContext, make_target

WHERE = "recipe.yaml:9:5 targets[0]"


def _stage(tmp_path, **options):
    model = ModelSection(format=ModelFormat.ONNX, path="m.onnx", inputs=[{"name": "input", "shape": ["batch", 1, 8, 8]}])
    return make_target(Target(type=TargetType.ONNXRUNTIME, options=options), TargetContext(WHERE, tmp_path, model))


@pytest.mark.parametrize("style", ["fixed", "runtime"])
def test_ort_format_ships_both_files(tmp_path, style):
    import numpy as np

    path = tiny_onnx(tmp_path / "m.onnx")
    ins, outs = onnx_specs(path)
    work = tmp_path / "w"
    work.mkdir()
    res = _stage(tmp_path, ort_format=True, ort_optimization=style).run({"model": Artifact(path, "onnx", inputs=ins, outputs=outs)}, work)
    art = res.outputs["artifact"]
    assert art.path.is_dir() and art.format == "onnx+ort"
    assert sorted(p.name for p in art.path.iterdir()) == ["model.onnx", "model.ort", "model.required_operators.config"]
    assert (art.path / "model.ort").read_bytes()[4:8] == b"ORTM"  # the flatbuffer's file identifier
    config = (art.path / "model.required_operators.config").read_text()
    assert "/" not in config and "ai.onnx;" in config  # no build-host paths in the artifact
    assert res.record["ort_format"]["optimization_style"] == style
    assert art.meta["runner"]["options"] == {"model_file": "model.ort"}
    adapter = OnnxRuntimeAdapter()
    assert adapter.load(str(art.path), 1, art.meta["runner"]["options"])["model_file"] == "model.ort"
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    assert np.abs(adapter.run({"input": x})[0] - ref).max() < 1e-4


def test_plain_onnx_by_default_and_bad_options(tmp_path):
    path = tiny_onnx(tmp_path / "m.onnx")
    work = tmp_path / "w"
    work.mkdir()
    art = _stage(tmp_path).run({"model": Artifact(path, "onnx")}, work).outputs["artifact"]
    assert art.path.name == "model.onnx" and art.path.is_file()
    # bad options are refused when the recipe loads: tests/test_recipe_targets.py

"""A quantize pass never writes into the folder it was started from (the user's recipe folder).

ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx`` (with external data) into
the current directory when it cannot infer every shape, which happens on the real PP-OCRv4 DBNet
detector shipped in rapidocr-onnxruntime 1.4.4. The pass runs its ORT tools in the stage's workdir.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
from realmodels.wheels import wheel_files

from edgepack.artifact import Artifact
from edgepack.cache import StageCache
from edgepack.data import freeze
from edgepack.engine import Engine
from edgepack.optimize import PassContext, make_pass
from edgepack.recipe import Gates, QuantizePass


def test_quantize_leaves_the_working_directory_alone(tmp_path, monkeypatch):
    det = tmp_path / "det.onnx"
    shutil.copyfile(wheel_files("rapidocr-onnxruntime", "1.4.4") / "det.onnx", det)
    user_dir = tmp_path / "recipe-folder"
    user_dir.mkdir()
    monkeypatch.chdir(user_dir)
    images = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    cal = freeze({"x": images}, None, tmp_path / "data", "calibration")
    cfg = QuantizePass.model_validate({"pass": "quantize", "mode": "static"})
    stage = make_pass(cfg, PassContext(0, "r.yaml:9:5 optimize[0]", user_dir, None, Gates()))
    res = Engine(StageCache(tmp_path / "cache")).run("optimize[0] quantize", stage, {"model": Artifact(det, "onnx"), "calibration": cal})
    assert res.outputs["model"].path.is_file()
    assert os.getcwd() == str(user_dir)  # restored
    assert sorted(os.listdir(user_dir)) == [], "the pass wrote into the user's folder"

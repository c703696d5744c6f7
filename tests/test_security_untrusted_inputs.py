"""Untrusted model files that issue 11's review found handled: each is refused with exit 2, nothing runs.

A PyTorch weights file carrying a pickle payload (loaded with torch.load(weights_only=True)), and an ONNX
model whose external data points outside its folder. Kept as tests so the threat table can cite them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # what a malicious pickle does: call a function on load
        return (Path.write_text, (self.marker, "pickle ran"))


def _fails_cleanly(res, *needles):
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]


def test_pickle_payload_in_weights_does_not_run(digits_recipe, tmp_path):
    import torch

    from edgepack.artifact import Artifact
    from edgepack.errors import BadInputError
    from edgepack.ingest import ConvertStage
    from edgepack.recipe import load_recipe

    marker = tmp_path / "pwned"
    weights = digits_recipe.parent / "weights.pt"
    torch.save({"w": _Payload(marker)}, weights)
    model = load_recipe(digits_recipe).recipe.model
    with pytest.raises(BadInputError, match=r"weights.pt \(model.weights\).*weights_only=True"):
        ConvertStage(model, digits_recipe.parent, "recipe.yaml:3:1 model").run(
            {"source": Artifact(weights, "pytorch", meta={"weights": str(weights)})}, tmp_path / "w")
    assert not marker.exists()


@pytest.mark.parametrize("location", ["../outside.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tiny_recipe, location):
    d = tiny_recipe.parent
    (d.parent / "outside.bin").write_bytes(b"\0" * 256)
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 8, 8], vals=[])
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": "256"}.items():
        w.external_data.add(key=k, value=v)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    g = helper.make_graph([helper.make_node("Add", ["input", "w"], ["logits"])], "g", [x], [y], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(d / "model.onnx"))
    res = run_cli("build", tiny_recipe, "--no-publish", "-o", d / "out", cwd=d)
    _fails_cleanly(res, "model.onnx", "external")
    assert not (d / "out").exists()

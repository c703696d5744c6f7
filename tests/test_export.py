"""The PyTorch exporters: named outputs never give invalid ONNX, a failed check falls back to the other
exporter (and the record says why), and a failure of every exporter is a build error naming each one."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import run_cli
from edgepack.errors import BadInputError
from edgepack.ingest.onnx import name_outputs

# A sentence-embedding-like transformer: int64 token ids + attention mask in, a mean-pooled embedding
# out. torch.export names its embedding lookup 'embedding' too, which is what broke named outputs.
TRANSFORMER = """\
import torch


class TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(50, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, ids, mask):
        h = self.enc(self.emb(ids), src_key_padding_mask=mask == 0)
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def build():
    return TinyEncoder().eval()
"""

# torch.export sees is_exporting() == True, TorchScript tracing does not: the dynamo ONNX differs
# from the eager model, so its numeric check fails and the TorchScript exporter must be used.
DIFFERS_UNDER_EXPORT = """\
import torch


class M(torch.nn.Module):
    def forward(self, x):
        if torch.compiler.is_exporting():
            return x * 2.0
        return x + 1.0


def build():
    return M().eval()
"""

# A branch on the data: torch.export cannot trace it, TorchScript tracing bakes in the branch taken by
# the example, so the samples that take the other branch fail the numeric check. No exporter works.
DATA_DEPENDENT = """\
import torch


class M(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2.0
        return x - 1.0


def build():
    return M().eval()
"""

RECIPE = """\
name: export
version: '1'
model:
  format: pytorch
  entrypoint: net:build
  inputs:
{inputs}
  outputs: [{output}]
data:
  validation:
    path: val.npz
targets:
  - type: onnxruntime
benchmark: {{warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0}}
"""


def _recipe(tmp_path, code, inputs, arrays, output):
    (tmp_path / "net.py").write_text(code)
    np.savez(tmp_path / "val.npz", **arrays)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(inputs=inputs, output=output))
    return recipe


def _build(tmp_path, recipe):
    return run_cli("build", recipe, "-o", tmp_path / "out", "--no-publish", cwd=tmp_path, env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])})


def _record(tmp_path):
    return json.loads((tmp_path / "out" / "report.json").read_text())["conversion"]["record"]


def _exported_onnx(tmp_path):
    found = [p for p in (tmp_path / "out").rglob("*.onnx")]
    assert found, "the bundle holds no ONNX model"
    return onnx.load(str(found[0]))


def test_transformer_with_a_named_output_exports_valid_onnx_and_builds(tmp_path):
    rng = np.random.default_rng(0)
    mask = np.ones((8, 6), np.int64)
    mask[:, 4:] = 0
    inputs = "    - {name: ids, shape: [batch, 6], dtype: int64}\n    - {name: mask, shape: [batch, 6], dtype: int64}"
    recipe = _recipe(tmp_path, TRANSFORMER, inputs, {"ids": rng.integers(1, 50, (8, 6)).astype(np.int64), "mask": mask}, "embedding")
    res = _build(tmp_path, recipe)
    assert res.returncode == 0, res.stderr
    record = _record(tmp_path)
    assert record["exporter"] == "torch.export (dynamo)"
    assert record["fallbacks"] == []
    assert record["max_abs_diff"]["embedding"] < 1e-4
    model = _exported_onnx(tmp_path)
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["embedding"]
    produced = [o for n in model.graph.node for o in n.output]
    assert produced.count("embedding") == 1


def test_a_failed_numeric_check_falls_back_to_torchscript_and_says_why(tmp_path):
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    recipe = _recipe(tmp_path, DIFFERS_UNDER_EXPORT, "    - {name: x, shape: [batch, 3]}", {"x": x}, "y")
    res = _build(tmp_path, recipe)
    assert res.returncode == 0, res.stderr
    record = _record(tmp_path)
    assert record["exporter"] == "torchscript"
    [failed] = record["fallbacks"]
    assert failed["exporter"] == "torch.export (dynamo)"
    assert failed["check"] == "numeric check"
    assert "ONNX output 'y' differs from the source" in failed["failed_because"]
    assert record["max_abs_diff"]["y"] < 1e-6


def test_every_exporter_failing_is_a_build_error_naming_each_exporter_and_check(tmp_path):
    x = np.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0]], np.float32)  # one sample per branch
    recipe = _recipe(tmp_path, DATA_DEPENDENT, "    - {name: x, shape: [batch, 3]}", {"x": x}, "y")
    res = _build(tmp_path, recipe)
    assert res.returncode == 1, res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1, res.stderr
    assert "torch.export (dynamo) failed the export" in err[0]
    assert "torchscript failed the numeric check: ONNX output 'y' differs from the source" in err[0]
    assert "corrupted" not in err[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def _graph(nodes, inputs, outputs, inits=()):
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    g = helper.make_graph(nodes, "g", [f(i) for i in inputs], [f(o) for o in outputs], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_name_outputs_keeps_ssa_for_clashes_passthroughs_and_repeated_outputs():
    one = helper.make_tensor("one", TensorProto.FLOAT, [2], [1.0, 1.0])
    nodes = [
        helper.make_node("Relu", ["x"], ["embedding"]),        # an inner tensor already named like a wanted output
        helper.make_node("Add", ["embedding", "one"], ["out0"]),
    ]
    model = _graph(nodes, ["x"], ["out0", "x", "out0", "one"], [one])
    record = name_outputs(model, ["embedding", "copy_of_x", "again", "const"], "model")
    onnx.checker.check_model(model, full_check=True)
    assert [o.name for o in model.graph.output] == ["embedding", "copy_of_x", "again", "const"]
    assert record["renamed_inner_tensors"] == {"embedding": "embedding__1"}
    assert sorted(record["identity_outputs"]) == ["again", "const", "copy_of_x"]
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})
    np.testing.assert_allclose(got[0], [1.0, 3.0])
    np.testing.assert_allclose(got[1], [-1.0, 2.0])
    np.testing.assert_allclose(got[2], [1.0, 3.0])


def test_name_outputs_swaps_names_and_rejects_an_input_name():
    nodes = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Abs", ["x"], ["b"])]
    model = _graph(nodes, ["x"], ["a", "b"])
    name_outputs(model, ["b", "a"], "model")
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node if "b" in n.output] == ["Neg"]
    with pytest.raises(BadInputError, match="also the name of a model input"):
        name_outputs(_graph(nodes, ["x"], ["a", "b"]), ["x", "c"], "model")

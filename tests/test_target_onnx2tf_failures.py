"""An onnx2tf failure names the ONNX node it failed on, and the pre-flight coverage table learns the
op pattern: the next build rejects the target before converting. Real onnx2tf, real builds.

onnx2tf 1.29 has a Col2Im converter (so the static table lets it through) that fails on a 3-D
[N, C*k*k, L] input: it transposes the input channels-last and its reshape no longer fits."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from edgepack.targets.coverage import check_graph, learned_patterns, op_pattern, table_for, tensor_ranks

pytest.importorskip("onnx2tf")

RECIPE = """\
name: fold
version: '1'
model:
  format: onnx
  path: model.onnx
  inputs:
    - {name: x, shape: [batch, 4, 9]}
  outputs: [y]
data:
  validation:
    path: val.npz
targets:
  - type: tflite
benchmark: {warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0}
"""


def _col2im(path):
    sizes = [numpy_helper.from_array(np.array([4, 4], np.int64), "image_shape"), numpy_helper.from_array(np.array([2, 2], np.int64), "block")]
    graph = helper.make_graph([helper.make_node("Col2Im", ["x", "image_shape", "block"], ["y"], name="fold_patches")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, 4, 4])], initializer=sizes)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path))
    return path


def test_onnx2tf_failure_names_the_node_and_the_next_preflight_rejects_it(tmp_path):
    _col2im(tmp_path / "model.onnx")
    np.savez(tmp_path / "val.npz", x=np.random.default_rng(0).random((4, 4, 9), dtype=np.float32))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    assert learned_patterns("onnx2tf") == {}
    assert check_graph(tmp_path / "model.onnx", table_for("tflite"))["unsupported"] == []  # the static table lets it through

    first = run_cli("build", tmp_path / "recipe.yaml", "-o", tmp_path / "out1", "--no-publish", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    line = first.stderr.strip().splitlines()[-1]
    assert "onnx2tf failed on ONNX node 'fold_patches' (Col2Im):" in line
    assert "the next build's pre-flight rejects op pattern Col2Im(r3,r1,r1){}" in line
    learned = learned_patterns("onnx2tf")
    assert list(learned) == ["Col2Im(r3,r1,r1){}"] and learned["Col2Im(r3,r1,r1){}"]["node"] == "fold_patches"

    second = run_cli("build", tmp_path / "recipe.yaml", "-o", tmp_path / "out2", "--no-publish", cwd=tmp_path)
    assert second.returncode == 1, second.stderr
    line = second.stderr.strip().splitlines()[-1]
    assert "fold_patches (Col2Im); rejected before converting: the converter failed on this op pattern in an earlier build" in line
    assert (tmp_path / ".out1.logs" / "compile_tflite.log").exists()
    assert not (tmp_path / ".out2.logs" / "compile_tflite.log").exists()  # no conversion ran: the stage never started


def test_learned_patterns_are_keyed_by_toolchain_and_by_how_the_op_is_used(tmp_path):
    from edgepack.targets.coverage import _learned_file, learn

    path = _col2im(tmp_path / "model.onnx")
    assert learn("onnx2tf", path, "fold_patches", "ValueError: it broke") == "Col2Im(r3,r1,r1){}"
    assert learn("onnx2tf", path, "no_such_node", "x") is None
    cov = check_graph(path, table_for("tflite"))
    assert [(u["node"], u["learned_from"]["error"]) for u in cov["unsupported"]] == [("fold_patches", "ValueError: it broke")]
    # the same op with another input rank is another pattern
    m = onnx.load(str(path))
    assert op_pattern(m.graph.node[0], {**tensor_ranks(m.graph), "x": 4}) != "Col2Im(r3,r1,r1){}"
    # another toolchain version: nothing learned applies
    table = json.loads(_learned_file("onnx2tf").read_text())
    table = {"0" * 16: next(iter(table.values()))}
    _learned_file("onnx2tf").write_text(json.dumps(table))
    assert learned_patterns("onnx2tf") == {}
    assert check_graph(path, table_for("tflite"))["unsupported"] == []

"""PyTorch sources to ONNX: TorchScript, ExportedProgram, the exporter fallback, and the numeric check."""

import json

import numpy as np
import pytest
import torch

from conftest import digits_arrays, run_cli, tiny_cnn

RECIPE = """\
name: {name}
version: '1'
model:
  format: {fmt}
  path: {path}
  inputs:
    - name: input
      shape: [1, 1, 8, 8]
  outputs: [logits]
  tolerance: {tol}
data:
  validation:
    path: val.npz
targets:
  - type: onnxruntime
benchmark: {{warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0}}
"""


def _setup(tmp_path, fmt, tol=1e-4):
    model = tiny_cnn()
    x = torch.randn(1, 1, 8, 8)
    if fmt == "torchscript":
        path = tmp_path / "model.ts"
        torch.jit.trace(model, (x,)).save(str(path))
    else:
        path = tmp_path / "model.pt2"
        torch.export.save(torch.export.export(model, (x,)), str(path))
    np.savez(tmp_path / "val.npz", input=digits_arrays(16)[0])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(name=fmt, fmt=fmt, path=path.name, tol=tol))
    return recipe


@pytest.mark.parametrize("fmt", ["torchscript", "exported-program"])
def test_torch_file_formats_convert_and_match(tmp_path, fmt):
    recipe = _setup(tmp_path, fmt)
    res = run_cli("build", recipe, "-o", tmp_path / "out", "--no-publish", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    record = report["conversion"]["record"]
    assert record["exporter"] in ("torch.export (dynamo)", "torchscript")
    assert 0 <= record["max_abs_diff"]["logits"] < 1e-4
    dev = report["targets"]["onnxruntime"]["devices"]["local"]
    assert dev["accuracy"]["fidelity"]["max_abs_error"] < 1e-4


def test_torchscript_falls_back_to_the_torchscript_exporter_and_says_why(tmp_path):
    # torch.export cannot trace a ScriptModule, so the dynamo exporter fails and the record says why.
    recipe = _setup(tmp_path, "torchscript")
    res = run_cli("build", recipe, "-o", tmp_path / "out", "--no-publish", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "out" / "report.json").read_text())["conversion"]["record"]
    if record["exporter"] == "torchscript":
        assert record["fallbacks"][0]["exporter"] == "torch.export (dynamo)"
        assert record["fallbacks"][0]["failed_because"]
    else:  # the dynamo exporter handled it: then nothing may be listed as a fallback
        assert record["fallbacks"] == []


def test_numeric_check_fails_naming_the_worst_output(tmp_path):
    recipe = _setup(tmp_path, "exported-program", tol=1e-12)
    res = run_cli("build", recipe, "-o", tmp_path / "out", cwd=tmp_path)
    assert res.returncode == 1
    assert "ONNX output 'logits' differs from the source by" in res.stderr
    assert "tolerance 1e-12" in res.stderr
    assert not (tmp_path / "out").exists()

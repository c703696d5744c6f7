"""Mistakes first (issue 13 item 6): each is exit 2 with one line, before any stage ran (no cache entry, no
"convert" line); `edgepack check` makes the same checks without building; a recipe folder means its recipe.yaml."""

from __future__ import annotations

import os

import pytest

from conftest import TINY_RECIPE, run_cli


def _nothing_ran(res, home):
    assert "convert" not in res.stdout
    cache = home / "cache"
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*")), list(cache.rglob("*"))


def _build(recipe, *extra, env=None):
    return run_cli("build", recipe, "--no-publish", "-o", recipe.parent / "out", *extra, cwd=recipe.parent, env=env)


def _without(tmp_path, *modules) -> dict:
    """An environment where ``modules`` cannot be imported (sys.modules[name] = None, Python's own way)."""
    d = tmp_path / "hide"
    d.mkdir(exist_ok=True)
    (d / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {"PYTHONPATH": os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]),
            "EDGEPACK_TOOLCHAINS_DIR": str(tmp_path / "no-toolchains")}  # nor a managed toolchain environment


def test_missing_extra_for_a_target(tiny_recipe, edgepack_home, tmp_path):
    tiny_recipe.write_text(TINY_RECIPE.replace("gates:\n", "  - type: openvino\n    name: ov\ngates:\n"))
    res = _build(tiny_recipe, env=_without(tmp_path, "openvino"))
    assert res.returncode == 2, res.stderr
    assert "targets[1]" in res.stderr and "'openvino' package" in res.stderr and "pip install 'edgepack[openvino]'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    _nothing_ran(res, edgepack_home)
    ok = run_cli("check", tiny_recipe, "--target", "ort", env=_without(tmp_path, "openvino"))  # only what is built
    assert ok.returncode == 0, ok.stderr


def test_missing_extra_for_the_source_format_and_a_pass(digits_recipe, tiny_recipe, edgepack_home, tmp_path):
    res = _build(digits_recipe, env=_without(tmp_path, "torch"))  # its conversion runs in the torch toolchain
    assert res.returncode == 2, res.stderr
    assert "model.entrypoint: a pytorch source needs the torch toolchain: the 'torch' package is not installed here" in res.stderr
    assert "edgepack toolchains install torch" in res.stderr and "pip install 'edgepack[torch]'" in res.stderr
    _nothing_ran(res, edgepack_home)
    tiny_recipe.write_text(TINY_RECIPE.replace("    mode: static\n", "    mode: static\n  - {pass: distill, student: m:f}\n"))
    res = _build(tiny_recipe, env=_without(tmp_path, "torch"))
    assert res.returncode == 2, res.stderr
    assert "optimize[1]" in res.stderr and "distill pass" in res.stderr and "pip install 'edgepack[torch]'" in res.stderr
    _nothing_ran(res, edgepack_home)


def test_keras_source_without_tensorflow_or_the_tflite_toolchain(tmp_path, edgepack_home):
    """A core install (no TensorFlow) without the tflite toolchain environment cannot convert a Keras model: one line
    naming model.path and the install command, exit 2, before any stage."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: k\nversion: 1.0.0\nmodel:\n  format: keras\n  path: model.keras\n  inputs:\n    - name: x\n"
                      "      shape: [1, 4]\ntargets:\n  - type: onnxruntime\n")
    res = _build(recipe, env=_without(tmp_path, "tensorflow", "tf2onnx", "onnx2tf"))
    assert res.returncode == 2, res.stdout + res.stderr
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1, line
    assert f"{recipe}:5:3 model.path: a keras source needs the tflite toolchain" in line, line
    assert "'tensorflow' package is not installed here" in line and "(edgepack toolchains install tflite" in line, line
    assert not (tmp_path / "out").exists()
    _nothing_ran(res, edgepack_home)


def test_missing_module_in_a_data_loader(tiny_recipe, edgepack_home, tmp_path):
    (tiny_recipe.parent / "myloader.py").write_text("import numpy as np\nimport sklearn.datasets\n\n"
                                                    "def calib():\n    return {'input': np.load('calib.npz')['input']}\n")
    tiny_recipe.write_text(TINY_RECIPE.replace("    path: calib.npz\n", "    loader: myloader:calib\n"))
    res = _build(tiny_recipe, env=_without(tmp_path, "sklearn"))
    assert res.returncode == 2, res.stderr
    assert "data.calibration.loader" in res.stderr and "'sklearn'" in res.stderr and "pip install 'edgepack[examples]'" in res.stderr
    _nothing_ran(res, edgepack_home)


def test_static_quantize_without_calibration(tiny_recipe, edgepack_home):
    tiny_recipe.write_text(TINY_RECIPE.replace("  calibration:\n    path: calib.npz\n", ""))
    res = _build(tiny_recipe)
    assert res.returncode == 2, res.stderr
    assert "optimize[0]" in res.stderr and "no data.calibration" in res.stderr
    _nothing_ran(res, edgepack_home)


@pytest.mark.parametrize("edit,says", [
    (("- name: input\n", "- name: image\n"), "has no input 'image' (its inputs: input (rank 4))"),
    (("shape: [batch, 1, 8, 8]", "shape: [batch, 8, 8]"), "input 'input' has rank 4"),
])
def test_inputs_that_do_not_match_the_onnx_file(tiny_recipe, edgepack_home, edit, says):
    tiny_recipe.write_text(TINY_RECIPE.replace(*edit))
    res = _build(tiny_recipe)
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "model.inputs[0]" in res.stderr
    _nothing_ran(res, edgepack_home)


def test_recipe_folder_and_check(tiny_recipe, edgepack_home):
    res = run_cli("check", tiny_recipe.parent)  # a folder: its recipe.yaml
    assert res.returncode == 0, res.stderr
    assert "OK:" in res.stdout and "ort" in res.stdout
    _nothing_ran(res, edgepack_home)
    assert not (tiny_recipe.parent / "out").exists()
    tiny_recipe.write_text(TINY_RECIPE.replace("  calibration:\n    path: calib.npz\n", ""))
    for res in (run_cli("check", tiny_recipe.parent), _build(tiny_recipe.parent)):
        assert res.returncode == 2 and "recipe.yaml" in res.stderr and "no data.calibration" in res.stderr, res.stderr
        _nothing_ran(res, edgepack_home)


def test_check_reaches_ssh_devices(tiny_recipe, edgepack_home):
    (tiny_recipe.parent / "dev.yaml").write_text(
        "name: nowhere\narch: x86_64\nos: linux\ntransport: {type: ssh, host: 127.0.0.1, port: 1, user: nobody, connect_timeout_s: 3}\n"
        "python: python3\nruntimes: [onnxruntime]\n")
    tiny_recipe.write_text(TINY_RECIPE + "devices: [dev.yaml]\n")
    res = run_cli("check", tiny_recipe)
    assert res.returncode != 0 and "device nowhere" in res.stderr and "unreachable" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    _nothing_ran(res, edgepack_home)

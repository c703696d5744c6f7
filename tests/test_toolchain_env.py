"""Toolchain environments for real (issue 14 items 1-2): a managed venv built from the tflite lock (cached by
tests/testenvs.py, so CI builds it once per lock digest) runs a TFLite compile, and its versions land in
the manifest; the core (no toolchain) passes a subset of the suite under Python 3.12 with numpy 2 and builds a
recipe there end to end."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO, TINY_RECIPE, run_cli
from testenvs import ensure_toolchain, numpy2_env


@pytest.fixture(scope="session")
def tflite_env():
    env = ensure_toolchain("tflite")
    if env is None:
        pytest.skip("no Python the tflite lock allows (3.11) on this machine")
    return env


@pytest.mark.slow
def test_tflite_compile_runs_in_the_managed_environment(tflite_env, tiny_recipe):
    """The tiny CNN on digits data (an ONNX source: no exporter in the build) compiled to TFLite fp32 in the managed
    tflite environment, validated on the local device (whose runner also uses that environment)."""
    tiny_recipe.write_text(TINY_RECIPE.replace("optimize:\n  - pass: quantize\n    mode: static\n", "")
                           .replace("  - type: onnxruntime\n    name: ort\n", "  - type: tflite\n    name: tfl\n    precision: fp32\n"))
    out = tiny_recipe.parent / "out"
    hide = tiny_recipe.parent / "hide"  # the build process cannot import onnx2tf / tensorflow: only the toolchain can
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['onnx2tf'] = None\nsys.modules['tensorflow'] = None\n")
    env = {"EDGEPACK_TOOLCHAINS": "managed",  # never the running environment, even where it satisfies the lock
           "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    res = run_cli("build", tiny_recipe, "--no-publish", "-o", out, cwd=tiny_recipe.parent, env=env)
    assert res.returncode == 0, res.stdout + res.stderr

    record = json.loads((tflite_env / "toolchain.json").read_text())
    versions = {k.lower().replace("_", "-"): v for k, v in record["versions"].items()}
    manifest = json.loads((out / "edgepack.json").read_text())
    target = manifest["targets"]["tfl"]
    assert target["toolchain_env"] == {"toolchain": "tflite", "lock": record["lock"], "environment": "managed",
                                       "python": record["python"]}
    for pkg in ("onnx2tf", "tensorflow", "ai-edge-litert"):
        assert target["toolchain"][pkg] == versions[pkg], pkg
    assert target["toolchain"]["python"] == record["python"]
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["tfl"]["devices"]["local"]["status"] == "ok"
    assert report["targets"]["tfl"]["compile"]["environment"]["environment"] == "managed"
    assert report["targets"]["tfl"]["compile"]["saved_model"]["shared_stage"] is True


KERAS_CNN = """\
import sys, numpy as np, keras
keras.utils.set_random_seed(0)
image = keras.Input((8, 8, 1), name="image")
x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image))
model = keras.Model(image, keras.layers.Dense(10, name="logits")(x))
model.save(sys.argv[1] + "/cnn.keras")
images = np.random.default_rng(0).standard_normal((12, 8, 8, 1)).astype(np.float32)
np.savez(sys.argv[1] + "/images.npz", image=images, labels=np.argmax(model.predict(images, verbose=0), axis=1))
"""


@pytest.mark.slow
def test_keras_source_converts_in_the_tflite_environment_from_a_core_install(tflite_env, tmp_path):
    """A build run from the Python 3.12 + numpy 2 core environment (no TensorFlow, and a Python the tflite lock does
    not allow) on a Keras source: its conversion runs in the managed tflite environment, says so in the manifest with
    that environment's versions, and the ONNX is checked numerically against the Keras model."""
    py = numpy2_env()
    if py is None:
        pytest.skip("no Python 3.12 on this machine (pyenv or python3.12 on PATH)")
    from test_ingest_tensorflow import CNN_INPUTS, _recipe

    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(tflite_env / "bin" / "python"), "-c", KERAS_CNN, str(tmp_path)], check=True, timeout=300,
                   env={**clean, "TF_CPP_MIN_LOG_LEVEL": "2"})  # the model is made with the toolchain's own Keras
    recipe = _recipe(tmp_path, "keras", tmp_path / "cnn.keras", CNN_INPUTS, tmp_path / "images.npz", ["logits"])
    env = {**clean, "PYTHONPATH": str(REPO)}
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('tensorflow'), u.find_spec('tf2onnx'))"],
                           capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.split() == ["None", "None"], probe.stdout  # only the toolchain can convert it
    out = tmp_path / "out"
    res = subprocess.run([str(py), "-m", "edgepack", "build", str(recipe), "--no-publish", "-o", str(out)],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr

    record = json.loads((tflite_env / "toolchain.json").read_text())
    versions = {k.lower().replace("_", "-"): v for k, v in record["versions"].items()}
    manifest = json.loads((out / "edgepack.json").read_text())
    conv = manifest["conversion"]
    assert conv["toolchain_env"] == {"toolchain": "tflite", "lock": record["lock"], "environment": "managed", "python": record["python"]}
    assert conv["exporter"] == "tf2onnx.from_keras"
    for pkg in ("tensorflow", "tf2onnx", "numpy", "onnx"):
        assert conv["toolchain"][pkg] == versions[pkg], pkg
    assert conv["toolchain"]["python"] == record["python"] and conv["toolchain"]["numpy"].startswith("1.")
    assert manifest["toolchain"]["numpy"].startswith("2.") and manifest["toolchain"]["python"].startswith("3.12.")  # the build's
    report = json.loads((out / "report.json").read_text())
    checked = report["conversion"]["record"]
    assert checked["environment"]["environment"] == "managed" and list(checked["max_abs_diff"]) == ["logits"]
    assert 0 <= checked["max_abs_diff"]["logits"] < 1e-4, checked  # the ONNX against the Keras model, in that environment
    assert report["targets"]["onnxruntime"]["devices"]["local"]["status"] == "ok"


NUMPY2_TESTS = ["tests/test_recipe.py", "tests/test_metrics.py", "tests/test_security_recipe.py",
                "tests/test_bundle.py"]


@pytest.mark.slow
def test_core_suite_under_numpy2_and_python312(tiny_recipe, tmp_path):
    py = numpy2_env()
    if py is None:
        pytest.skip("no Python 3.12 on this machine (pyenv or python3.12 on PATH)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "EDGEPACK_HOME": str(tmp_path / "home")}
    probe = subprocess.run([str(py), "-c", "import numpy, sys; print(numpy.__version__, sys.version_info[:2])"],
                           capture_output=True, text=True, env=env, check=True)
    assert probe.stdout.startswith("2.") and "(3, 12)" in probe.stdout, probe.stdout
    res = subprocess.run([str(py), "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *NUMPY2_TESTS],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # and a build end to end (ONNX source, static INT8 for ONNX Runtime, validated, signed) through the CLI
    out = tiny_recipe.parent / "out"
    res = subprocess.run([str(py), "-m", "edgepack", "build", str(tiny_recipe), "--no-publish", "-o", str(out)],
                         cwd=tiny_recipe.parent, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    manifest = json.loads((out / "edgepack.json").read_text())
    assert manifest["toolchain"]["numpy"].startswith("2.") and manifest["toolchain"]["python"].startswith("3.12.")

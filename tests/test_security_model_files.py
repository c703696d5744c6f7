"""Issue 11 finding 1: no code or file I/O from a model file runs unless the recipe says model.trust_code.

The malicious models are built here with real TensorFlow / tf_keras: a Keras Lambda layer (.h5 and
.keras) that writes a marker file when it runs, SavedModels whose graph writes a file, reads one or calls
Python, and a TFLite model with a Flex WriteFile op. Each is refused before it runs (naming the ops) and the
marker never appears; with trust_code: true the same file loads (the opt-in does what it says).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from edgepack.artifact import Artifact
from edgepack.errors import BadInputError
from edgepack.ingest import ConvertStage
from edgepack.recipe import ModelSection

INPUTS = [{"name": "x", "shape": ["batch", 4]}]


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf_keras

    d = tmp_path_factory.mktemp("evil")
    marker = d / "pwned"

    where = str(marker)

    def payload(x):  # runs when the layer is called, i.e. during load / convert if not refused
        with open(where, "a") as f:
            f.write("lambda ran\n")
        return x

    i = tf_keras.Input((4,), name="x")
    lam = tf_keras.Model(i, tf_keras.layers.Dense(2)(tf_keras.layers.Lambda(payload)(i)))
    lam.save(d / "lambda.h5")
    lam.save(d / "lambda_tfk.keras")

    def module(body, name):
        m = tf.Module()
        m.f = tf.function(body, input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        tf.saved_model.save(m, str(d / name), signatures={"serving_default": m.f})

    def writes(x):
        tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x)))
        return {"y": x * 2.0}

    def reads(x):
        n = tf.strings.length(tf.io.read_file("/etc/hostname"))
        return {"y": x * tf.cast(n, tf.float32)}

    module(writes, "writes_saved_model")
    module(reads, "reads_saved_model")
    module(lambda x: {"y": tf.py_function(lambda t: t * 2.0, [x], tf.float32)}, "pyfunc_saved_model")
    module(lambda x: {"y": x * 2.0}, "clean_saved_model")
    marker.unlink(missing_ok=True)  # building the Lambda model called it once
    return {p.name: p for p in d.iterdir()} | {"marker": marker}


def _convert(fmt: str, path: Path, workdir: Path, trust: bool = False):
    model = ModelSection(format=fmt, path=str(path), inputs=INPUTS, trust_code=trust)
    workdir.mkdir(parents=True, exist_ok=True)
    return ConvertStage(model, path.parent, "recipe.yaml:3:1 model").run({"source": Artifact(path, fmt)}, workdir)


@pytest.mark.parametrize("name", ["lambda.h5", "lambda_tfk.keras"])
def test_keras_lambda_is_refused_on_every_loader(evil, tmp_path, name):
    with pytest.raises(BadInputError) as e:
        _convert("keras", evil[name], tmp_path / "w")
    assert "lambda" in str(e.value).lower() and "trust_code" in e.value.one_line()
    assert not evil["marker"].exists(), "the Lambda layer ran during the refused load"


@pytest.mark.parametrize("name, ops", [("writes_saved_model", ["WriteFile"]), ("reads_saved_model", ["ReadFile"]),
                                       ("pyfunc_saved_model", ["EagerPyFunc"])])
def test_saved_model_with_io_or_python_ops_is_refused(evil, tmp_path, name, ops):
    with pytest.raises(BadInputError) as e:
        _convert("saved-model", evil[name], tmp_path / "w")
    for op in ops:
        assert op in str(e.value)
    assert "trust_code" in e.value.one_line()
    assert not evil["marker"].exists()


def test_clean_saved_model_passes_the_check(evil, tmp_path):
    conv = _convert("saved-model", evil["clean_saved_model"], tmp_path / "w")
    assert conv.record.get("exporter") == "tf2onnx saved-model"


def test_trust_code_lets_the_lambda_run(evil, tmp_path):
    _convert("keras", evil["lambda.h5"], tmp_path / "w", trust=True)
    assert evil["marker"].exists()  # opted in: the user said they trust this file
    evil["marker"].unlink()


def test_tflite_flex_write_file_is_refused(evil, tmp_path):
    import tensorflow as tf

    m = tf.Module()
    m.f = tf.function(lambda x: (tf.io.write_file(str(evil["marker"]), "x"), x * 2.0)[1],
                      input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.f.get_concrete_function()], m)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    try:
        flat = conv.convert()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"this TensorFlow cannot put WriteFile in a Flex op: {e.__class__.__name__}")
    path = tmp_path / "flex.tflite"
    path.write_bytes(flat)
    evil["marker"].unlink(missing_ok=True)
    with pytest.raises(BadInputError, match="WriteFile"):
        _convert("tflite", path, tmp_path / "w")
    assert not evil["marker"].exists()


def test_cli_build_of_a_file_writing_saved_model_exits_2(evil, tmp_path):
    np.savez(tmp_path / "x.npz", x=np.ones((4, 4), np.float32))
    recipe = write_recipe(tmp_path / "recipe.yaml", "\n".join([
        "name: evil", "version: 1.0.0", "model:", "  format: saved-model", f"  path: {json.dumps(str(evil['writes_saved_model']))}",
        f"  inputs: {json.dumps(INPUTS)}", "data:", "  validation:", f"    path: {json.dumps(str(tmp_path / 'x.npz'))}",
        "targets: [{type: onnxruntime}]", "devices: [local]"]) + "\n")
    res = run_cli("build", recipe, "--no-publish", "-o", tmp_path / "bundle")
    assert res.returncode == 2, res.stderr[-2000:]
    err = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "WriteFile" in err[0] and "Traceback" not in res.stderr
    assert not evil["marker"].exists() and not (tmp_path / "bundle").exists()

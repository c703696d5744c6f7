"""TensorFlow-family sources (Keras .keras/.h5, SavedModel, TFLite) -> ONNX with tf2onnx, real TF and ORT.

Tiny Keras models are built once per module (TensorFlow's import costs ~12 s). Three formats go
through the real `edgepack build` CLI; the other cases call the convert stage in-process, where
TensorFlow is already loaded.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from edgepack.artifact import Artifact
from edgepack.errors import BadInputError, StageError
from edgepack.ingest import ConvertStage
from edgepack.recipe import ModelSection

CNN_INPUTS = [{"name": "image", "shape": ["batch", 8, 8, 1], "layout": "NHWC"}]
MLP_INPUTS = [{"name": "a", "shape": ["batch", 4]}, {"name": "b", "shape": ["batch", 3]}]


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory) -> dict[str, Path]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    d = tmp_path_factory.mktemp("tf-models")
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(image)
    x = keras.layers.Flatten()(x)
    cnn = keras.Model(image, keras.layers.Dense(10, name="logits")(x))
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Dense(6, activation="relu")(keras.layers.Concatenate()([a, b]))
    mlp = keras.Model([a, b], [keras.layers.Dense(2, name="o1")(h), keras.layers.Dense(3, name="o2")(h)])
    dict_mlp = keras.Model({"a": a, "b": b}, {"q": keras.layers.Dense(3, name="z1")(h), "p": keras.layers.Dense(2, name="z2")(h)})
    cnn.save(d / "cnn.keras")
    cnn.save(d / "cnn.h5")
    mlp.save(d / "mlp.keras")
    dict_mlp.save(d / "dict_mlp.keras")
    mlp.export(str(d / "mlp_saved_model"), verbose=False)
    cnn.export(str(d / "cnn_saved_model"), verbose=False)
    import tf_keras

    legacy_in = tf_keras.Input((8, 8, 1), name="image")
    legacy = tf_keras.Model(legacy_in, tf_keras.layers.Dense(3, name="logits")(tf_keras.layers.Flatten()(legacy_in)))
    legacy.save(d / "tf_keras.keras")  # tf.keras 2.x format: Keras 3 cannot read it
    unsupported = tf.Module()  # Igamma has no ONNX conversion in tf2onnx
    unsupported.f = tf.function(lambda x: {"y": tf.math.igamma(tf.abs(x) + 1.0, tf.abs(x) + 0.5)},
                                input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    tf.saved_model.save(unsupported, str(d / "igamma_saved_model"), signatures={"serving_default": unsupported.f})
    (d / "cnn.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(cnn).convert())
    (d / "mlp.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(mlp).convert())
    rng = np.random.default_rng(0)
    images = rng.standard_normal((12, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(cnn.predict(images, verbose=0), axis=1)
    np.savez(d / "images.npz", image=images, labels=labels)
    np.savez(d / "pairs.npz", a=rng.standard_normal((12, 4)).astype(np.float32), b=rng.standard_normal((12, 3)).astype(np.float32))
    return {p.name: p for p in d.iterdir()}


def _recipe(tmp_path: Path, fmt: str, path: Path, inputs: list[dict], data: Path, outputs: list[str] | None = None) -> Path:
    lines = [f"name: tf-{fmt}", "version: 1.0.0", "model:", f"  format: {fmt}", f"  path: {json.dumps(str(path))}", "  inputs:"]
    for i in inputs:
        lines.append(f"    - {json.dumps(i)}")
    if outputs:
        lines.append(f"  outputs: {json.dumps(outputs)}")
    lines += ["data:", "  validation:", f"    path: {json.dumps(str(data))}", "targets:", "  - type: onnxruntime", "devices: [local]",
              "gates:", "  min_cosine: 0.999", "benchmark: {warmup_runs: 1, warmup_seconds: 0, runs: 3, min_seconds: 0, max_runs: 3}"]
    return write_recipe(tmp_path / "recipe.yaml", "\n".join(lines) + "\n")


def _convert(fmt: str, path: Path, inputs: list[dict], workdir: Path, outputs: list[str] | None = None):
    """The real convert stage, in-process (TensorFlow is already imported by the fixture)."""
    model = ModelSection(format=fmt, path=str(path), inputs=inputs, outputs=outputs)
    workdir.mkdir(parents=True, exist_ok=True)
    return ConvertStage(model, path.parent, "recipe.yaml:3:1 model").run({"source": Artifact(path, fmt)}, workdir)


# ---------------------------------------------------------------- full builds through the CLI


@pytest.mark.parametrize(
    "fmt, model, inputs, data, outputs, exporter",
    [
        ("keras", "cnn.keras", CNN_INPUTS, "images.npz", ["logits"], "tf2onnx.from_keras"),
        ("saved-model", "mlp_saved_model", MLP_INPUTS, "pairs.npz", ["y1", "y2"], "tf2onnx saved-model"),
        ("tflite", "cnn.tflite", CNN_INPUTS, "images.npz", None, "tf2onnx.from_tflite"),
    ],
)
def test_build_tf_source(tf_models, tmp_path, fmt, model, inputs, data, outputs, exporter):
    import onnx

    recipe = _recipe(tmp_path, fmt, tf_models[model], inputs, tf_models[data], outputs)
    res = run_cli("build", recipe, "--json", "--no-publish", "-o", tmp_path / "bundle")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(Path(json.loads(res.stdout)["report"]).read_text())
    conv = report["conversion"]["record"]
    assert conv["exporter"] == exporter and conv["fallbacks"] == []
    assert conv["max_abs_diff"] and max(conv["max_abs_diff"].values()) < 1e-4, conv
    onnx_model = onnx.load(str(tmp_path / "bundle" / "targets" / "onnxruntime" / "model.onnx"))
    ins = [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in onnx_model.graph.input]
    assert ins == [(i["name"], i["shape"]) for i in inputs]  # recipe names, source (NHWC) layout, named batch axis
    assert [o.name for o in onnx_model.graph.output] == (outputs or ["output_0"])
    assert list(conv["max_abs_diff"]) == (outputs or ["output_0"])
    ver = run_cli("verify", tmp_path / "bundle")
    assert ver.returncode == 0, ver.stderr


@pytest.mark.parametrize(
    "fmt, name, content, expect",
    [
        ("keras", "model.keras", b"definitely not a zip archive", "not a .keras archive"),
        ("keras", "model.h5", b"garbage garbage garbage", "neither a .keras zip archive nor an HDF5"),
        ("tflite", "model.tflite", os.urandom(256), "not a TFLite flatbuffer"),
        ("saved-model", "exported", None, "no saved_model.pb"),
    ],
)
def test_garbage_model_file_is_bad_input(tmp_path, fmt, name, content, expect):
    path = tmp_path / name
    if content is None:
        path.mkdir()
        (path / "variables").mkdir()
    else:
        path.write_bytes(content)
    np.savez(tmp_path / "d.npz", image=np.zeros((2, 8, 8, 1), np.float32))
    recipe = _recipe(tmp_path, fmt, path, CNN_INPUTS, tmp_path / "d.npz")
    res = run_cli("build", recipe, "--no-publish", "-o", tmp_path / "bundle")
    assert res.returncode == 2, res.stderr
    err = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(err) == 1 and str(path) in err[0] and expect in err[0], res.stderr
    assert not (tmp_path / "bundle").exists()


# ---------------------------------------------------------------- in-process conversions


def test_tampered_models_name_the_file(tf_models, tmp_path):
    bad = tmp_path / "tampered.keras"
    with zipfile.ZipFile(tf_models["cnn.keras"]) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            dst.writestr(item, b'{"class_name": "NoSuchLayer", "config": {}}' if item == "config.json" else data)
    with pytest.raises(BadInputError, match=r"cannot load as a Keras model \(keras 3: .*NoSuchLayer.*; tf_keras: ") as e:
        _convert("keras", bad, CNN_INPUTS, tmp_path / "w1")
    assert str(bad) in str(e.value) and e.value.__cause__ is not None
    blob = tf_models["cnn.tflite"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(blob[: len(blob) // 3])
    with pytest.raises(BadInputError, match="not a valid TFLite model") as e:
        _convert("tflite", cut, CNN_INPUTS, tmp_path / "w2")
    assert str(cut) in str(e.value)


def test_h5_and_multi_io_keras(tf_models, tmp_path):
    res = _convert("keras", tf_models["cnn.h5"], CNN_INPUTS, tmp_path / "h5")
    assert max(res.record["max_abs_diff"].values()) < 1e-4 and res.record["exporter"] == "tf2onnx.from_keras"
    res = _convert("keras", tf_models["mlp.keras"], list(reversed(MLP_INPUTS)), tmp_path / "mlp", outputs=["y1", "y2"])
    assert [i.name for i in res.outputs["model"].inputs] == ["b", "a"]  # the recipe's order
    assert [(o.name, o.shape[1]) for o in res.outputs["model"].outputs] == [("y1", 2), ("y2", 3)]
    assert res.record["renamed_outputs"] == {"o1": "y1", "o2": "y2"}
    res = _convert("keras", tf_models["dict_mlp.keras"], MLP_INPUTS, tmp_path / "dict")
    assert max(res.record["max_abs_diff"].values()) < 1e-4


def test_tf_keras_file_falls_back_to_tf_keras_and_says_why(tf_models, tmp_path):
    res = _convert("keras", tf_models["tf_keras.keras"], CNN_INPUTS, tmp_path / "w")
    assert res.record["loader"].startswith("tf_keras ")
    assert res.record["fallbacks"][0]["loader"] == "keras 3" and "Functional" in res.record["fallbacks"][0]["failed_because"]
    assert res.record["max_abs_diff"]["logits"] < 1e-4


def test_tflite_multi_io_follows_the_signature(tf_models, tmp_path):
    res = _convert("tflite", tf_models["mlp.tflite"], MLP_INPUTS, tmp_path / "w", outputs=["y1", "y2"])
    art = res.outputs["model"]
    assert [i.name for i in art.inputs] == ["a", "b"]  # the .tflite file lists them as b, a
    assert [(o.name, o.shape[1]) for o in art.outputs] == [("y1", 2), ("y2", 3)]
    assert res.record["tflite_signature"] == "serving_default" and res.record["max_abs_diff"]["y2"] < 1e-5


def test_saved_model_single_input_is_renamed(tf_models, tmp_path):
    res = _convert("saved-model", tf_models["mlp_saved_model"], [{"name": "a", "shape": ["n", 4]}, {"name": "b", "shape": ["n", 3]}],
                   tmp_path / "w")
    assert [i.shape for i in res.outputs["model"].inputs] == [("n", 4), ("n", 3)]
    assert list(res.record["max_abs_diff"]) == ["output_0", "output_1"]


@pytest.mark.parametrize("fmt, model", [("keras", "cnn.keras"), ("saved-model", "cnn_saved_model"), ("tflite", "cnn.tflite")])
def test_nchw_recipe_input_gets_a_transpose(tf_models, tmp_path, fmt, model):
    res = _convert(fmt, tf_models[model], [{"name": "x", "shape": ["batch", 1, 8, 8], "layout": "NCHW"}], tmp_path / "w", outputs=["y"])
    assert [i.shape for i in res.outputs["model"].inputs] == [("batch", 1, 8, 8)]
    assert res.record["layout"] == {"x": "NCHW, transposed to the source's NHWC inside the ONNX model"}
    assert res.record["max_abs_diff"]["y"] < 1e-4  # the source ran on the same samples, transposed to NHWC


def test_unconverted_tf_op_fails_naming_the_node(tf_models, tmp_path):
    with pytest.raises(StageError, match=r"every ONNX exporter failed .*no ONNX conversion for TensorFlow op\(s\) Igamma \(node '.*Igamma'\)"):
        _convert("saved-model", tf_models["igamma_saved_model"], [{"name": "x", "shape": ["batch", 4]}], tmp_path / "w")


def test_keras_saved_model_route(tf_models, tmp_path):
    """The fallback exporter (Keras -> SavedModel -> tf2onnx), run directly, matches the Keras model."""
    import onnxruntime as ort

    from edgepack.ingest._tf_sources import keras_source
    from edgepack.ingest.tensorflow import rename_tensors

    for name in ("mlp.keras", "dict_mlp.keras"):
        src = keras_source(tf_models[name], tmp_path / name, {"fallbacks": []})
        label, export = src.exporters[1]
        assert label == "Keras -> SavedModel -> tf2onnx"
        (tmp_path / name).mkdir()
        proto, ins, outs = export({"a": "a", "b": "b"}, 17, set())
        names = list(outs)
        rename_tensors(proto, {outs[n]: n for n in names}, names, "test")
        feed = {"a": np.ones((2, 4), np.float32), "b": np.full((2, 3), 0.5, np.float32)}
        got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
        want = src.run(feed)
        assert [n for n, _ in want] == names
        for (_, w), g in zip(want, got):
            np.testing.assert_allclose(g, w, atol=1e-5)


@pytest.mark.parametrize(
    "model, inputs, outputs, match",
    [
        ("mlp.keras", [{"name": "a", "shape": ["n", 4]}, {"name": "zzz", "shape": ["n", 3]}], None, r"inputs: \['zzz'\] not among"),
        ("cnn.keras", [{"name": "image", "shape": ["n", 1, 8, 8]}], None, r"inputs\[0\]\.shape: .* has shape \['\?', 8, 8, 1\]"),
        ("cnn.keras", [{"name": "image", "shape": ["n", 8, 1, 8], "layout": "NCHW"}], None, r"inputs\[0\]\.shape"),
        ("cnn.keras", [{"name": "image", "shape": ["n", 8, 8, 1], "dtype": "int32"}], None, r"inputs\[0\]\.dtype: int32 .* is float32"),
        ("cnn.keras", CNN_INPUTS, ["a", "b"], r"outputs: 2 name\(s\) given but .* has 1 output"),
        ("mlp.keras", MLP_INPUTS[:1], None, r"inputs: 1 input\(s\) given but .* has 2"),
        ("mlp.keras", MLP_INPUTS, ["b", "y"], r"name 'b' would be given to two tensors"),
        ("mlp_saved_model", [{"name": "a", "shape": ["n", 4]}, {"name": "c", "shape": ["n", 3]}], None, r"\['c'\] not among"),
    ],
)
def test_inputs_that_do_not_match_are_bad_input(tf_models, tmp_path, model, inputs, outputs, match):
    fmt = "saved-model" if "saved_model" in model else "keras"
    with pytest.raises(BadInputError, match=match) as e:
        _convert(fmt, tf_models[model], inputs, tmp_path / "w", outputs=outputs)
    assert str(e.value).startswith("recipe.yaml:3:1 model") and "\n" not in e.value.one_line()

"""Loading and running TensorFlow-family sources, and their tf2onnx exporters (used by ingest/tensorflow.py).

Each ``*_source`` loads a model and returns a ``Source``: its inputs (key -> shape, dtype, tensor
name), a ``run(feed)`` giving named outputs in the source's order, and exporters in the order to try.
An exporter takes (recipe name -> source input key, opset, source keys to feed NCHW) and returns (ModelProto, recipe name ->
ONNX input name, source output name -> ONNX output name). TensorFlow is imported inside functions.
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInputError, StageError
from ._tf_safety import check_saved_model, check_tflite


@dataclass
class Source:
    label: str
    inputs: dict[str, dict]  # key -> {"shape": list | None, "dtype": str, "tensor": str}
    run: Callable[[dict[str, np.ndarray]], list[tuple[str, np.ndarray]]]
    exporters: list[tuple[str, Callable]] = field(default_factory=list)


def first_line(e: BaseException, n: int = 200) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:n] if text else ''}"


def _dtype(d) -> str:
    return d if isinstance(d, str) else getattr(d, "name", str(d))


def _shape(s) -> list | None:
    try:
        return [None if d is None else int(d) for d in s]
    except TypeError:  # unknown rank
        return None


# ---------------------------------------------------------------- Keras


def _load_keras(path: Path, record: dict, trust_code: bool = False):
    """Keras 3 first; files written by tf.keras 2.x that Keras 3 cannot read are retried with tf_keras.

    Both load in safe mode (no Python lambdas from the file) unless ``model.trust_code``; tf_keras ignores
    ``safe_mode`` for .h5 files, so its loader also runs inside a ``SafeModeScope``."""
    errors = []
    try:
        import keras

        model = keras.saving.load_model(str(path), compile=False, safe_mode=not trust_code)
        record["loader"] = f"keras {keras.__version__}"
        return model
    except Exception as e:  # noqa: BLE001 - reported below, or after the tf_keras attempt
        errors.append(("keras 3", e))
    if importlib.util.find_spec("tf_keras") is not None:
        try:
            import tf_keras
            from tf_keras.src.saving.serialization_lib import SafeModeScope

            with SafeModeScope(not trust_code):
                model = tf_keras.models.load_model(str(path), compile=False, safe_mode=not trust_code)
            record["loader"] = f"tf_keras {tf_keras.__version__}"
            record["fallbacks"].append({"loader": "keras 3", "failed_because": first_line(errors[0][1], 300)})
            return model
        except Exception as e:  # noqa: BLE001
            errors.append(("tf_keras", e))
    raise BadInputError(
        f"{path} (model.path): cannot load as a Keras model (" + "; ".join(f"{w}: {first_line(e, 160)}" for w, e in errors) + ")",
        hint="custom layers must be registered with keras.saving.register_keras_serializable; a Lambda layer runs code from the file: "
             "export a SavedModel, or set model.trust_code: true if you trust it (docs/security.md)",
    ) from errors[0][1]


def _keras_output_names(model) -> list[str]:
    names = getattr(model, "output_names", None)  # same rule as tf2onnx.convert._get_output_names
    if names:
        return list(names)
    return [t.name.split("/")[0].split(":")[0] for t in model.outputs]


def _name_outputs(y, names: list[str]) -> list[tuple[str, np.ndarray]]:
    """Keras outputs, flattened the way Keras and tf2onnx flatten them (dict keys sorted), with output_names."""
    import tensorflow as tf

    flat = tf.nest.flatten(y)
    if len(names) != len(flat):
        names = [f"output_{i}" for i in range(len(flat))]
    return [(n, np.asarray(t)) for n, t in zip(names, flat)]


def _sorted_keys(keys) -> list[str]:
    """SavedModel output keys in flatten order: output_0, output_1, ..., output_10 numerically, others sorted."""
    keys = list(keys)
    if all(k.startswith("output_") and k[7:].isdigit() for k in keys):
        return sorted(keys, key=lambda k: int(k[7:]))
    return sorted(keys)


def _export_keras_saved_model(model, dest: Path) -> None:
    import tensorflow as tf

    try:
        import keras

        is_keras3 = isinstance(model, keras.Model)
    except ImportError:
        is_keras3 = False
    if is_keras3:
        model.export(str(dest), format="tf_saved_model", verbose=False)
    else:
        tf.saved_model.save(model, str(dest))


def keras_source(path: Path, workdir: Path, record: dict, trust_code: bool = False) -> Source:
    import tensorflow as tf

    model = _load_keras(path, record, trust_code)
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError) as e:
        raise BadInputError(f"{path} (model.path): the Keras model has no defined inputs ({first_line(e)})",
                            hint="build the model with keras.Input(...) before saving it") from e
    names = [t.name.split("/")[0].split(":")[0] for t in tensors]
    inputs = {n: {"shape": _shape(t.shape), "dtype": _dtype(t.dtype), "tensor": n} for n, t in zip(names, tensors)}
    out_names = _keras_output_names(model)

    def run(feed):
        args = [tf.constant(feed[n]) for n in names]
        return _name_outputs(model(args if len(args) > 1 else args[0], training=False), out_names)

    def from_keras(mapping, opset, nchw):
        import tf2onnx

        inv = {k: r for r, k in mapping.items()}
        sig = [tf.TensorSpec(inputs[n]["shape"], inputs[n]["dtype"], name=inv[n]) for n in names]
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=sig, opset=opset,
                                              inputs_as_nchw=[inv[k] for k in nchw] or None)
        return proto, {r: r for r in mapping}, {n: n for n in out_names}

    def via_saved_model(mapping, opset, nchw):
        with tempfile.TemporaryDirectory(prefix="keras-saved-model-") as tmp:  # intermediate: not cached
            dest = Path(tmp) / "saved_model"
            _export_keras_saved_model(model, dest)
            sm = saved_model_source(dest, workdir, {}, trust_code)
            keys = list(sm.inputs)
            sm_map = {r: (k if k in sm.inputs else keys[0] if len(keys) == 1 else None) for r, k in mapping.items()}
            if None in sm_map.values():
                raise StageError(f"the exported SavedModel's inputs {keys} do not match the Keras inputs {names}")
            proto, ins, outs = sm.exporters[0][1](sm_map, opset, {sm_map[r] for r, k in mapping.items() if k in nchw})
        keys = _sorted_keys(outs)  # keras export: output_0, ... for lists, the dict keys for dicts
        if len(keys) != len(out_names):
            raise StageError(f"the exported SavedModel's outputs {keys} do not match the Keras outputs {out_names}")
        return proto, ins, {n: outs[k] for n, k in zip(out_names, keys)}

    return Source(f"{path.name} (Keras)", inputs, run,
                  [("tf2onnx.from_keras", from_keras), ("Keras -> SavedModel -> tf2onnx", via_saved_model)])


# ---------------------------------------------------------------- SavedModel


def saved_model_source(path: Path, workdir: Path, record: dict, trust_code: bool = False) -> Source:
    import tensorflow as tf

    check_saved_model(path, trust_code)  # before tf.saved_model.load runs anything of it
    try:
        imported = tf.saved_model.load(str(path))
    except Exception as e:
        raise BadInputError(f"{path} (model.path): cannot load the SavedModel ({first_line(e)})",
                            hint="the directory may be incomplete or corrupted; export it again") from e
    sigs = sorted(s for s in imported.signatures.keys() if not s.startswith("_"))
    if "serving_default" not in imported.signatures:
        raise BadInputError(f"{path} (model.path): the SavedModel has no 'serving_default' signature (it has {sigs})",
                            hint="save it with tf.saved_model.save(obj, dir, signatures={'serving_default': fn})")
    fn = imported.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    inputs = {k: {"shape": _shape(s.shape) if s.shape.rank is not None else None, "dtype": s.dtype.name, "tensor": k}
              for k, s in specs.items()}
    out_keys = sorted(fn.structured_outputs)  # tf2onnx names and orders outputs this way

    def run(feed):  # through `imported`, which keeps the signature's variables alive
        y = imported.signatures["serving_default"](**{k: tf.constant(v) for k, v in feed.items()})
        return [(k, y[k].numpy()) for k in out_keys]

    def from_saved_model(mapping, opset, nchw):
        import tf2onnx
        from tf2onnx import tf_loader

        graph_def, ins, outs, tables, renames = tf_loader.from_saved_model(
            str(path), None, None, tag=["serve"], signatures=["serving_default"],
            return_initialized_tables=True, return_tensors_to_rename=True)
        if tables:
            raise StageError(f"the SavedModel uses {len(tables)} lookup table(s), which this converter does not carry over")
        proto, _ = tf2onnx.convert.from_graph_def(graph_def, name=path.name, input_names=ins, output_names=outs,
                                                  opset=opset, tensors_to_rename=renames, inputs_as_nchw=sorted(nchw) or None)
        return proto, dict(mapping), {k: k for k in out_keys}

    return Source(f"{path.name} (SavedModel serving_default)", inputs, run, [("tf2onnx saved-model", from_saved_model)])


# ---------------------------------------------------------------- TFLite


def _interpreter(record: dict):
    try:
        from ai_edge_litert.interpreter import Interpreter

        record["source_runtime"] = "ai_edge_litert"
        return Interpreter
    except ImportError as e:
        import tensorflow as tf

        record["source_runtime"] = "tf.lite.Interpreter"
        record["fallbacks"].append({"interpreter": "ai_edge_litert", "failed_because": first_line(e)})
        return tf.lite.Interpreter


def tflite_source(path: Path, workdir: Path, record: dict, trust_code: bool = False) -> Source:
    check_tflite(path, trust_code)  # Flex ops run TensorFlow kernels: refuse file / Python ones first
    Interpreter = _interpreter(record)  # the file passed tensorflow.verify_tflite first
    try:
        it = Interpreter(model_path=str(path), num_threads=1)
        it.allocate_tensors()
    except Exception as e:
        raise BadInputError(f"{path} (model.path): the TFLite interpreter cannot load it ({first_line(e)})",
                            hint="the file may be truncated or corrupted; re-export it with tf.lite.TFLiteConverter") from e
    sigs = it.get_signature_list()
    key = "serving_default" if "serving_default" in sigs else (next(iter(sigs)) if len(sigs) == 1 else None)

    def detail(d):
        return {"shape": _shape(d.get("shape_signature", d["shape"])), "dtype": np.dtype(d["dtype"]).name, "tensor": d["name"]}

    if key is not None:
        runner = it.get_signature_runner(key)
        ind, outd = runner.get_input_details(), runner.get_output_details()
        inputs = {k: detail(d) for k, d in ind.items()}
        out_keys = list(sigs[key]["outputs"])
        out_tensors = {k: outd[k]["name"] for k in out_keys}

        def run(feed):
            y = runner(**feed)
            return [(k, np.array(y[k])) for k in out_keys]
    else:
        ind, outd = it.get_input_details(), it.get_output_details()
        inputs = {d["name"]: detail(d) for d in ind}
        out_tensors = {d["name"]: d["name"] for d in outd}

        def run(feed):
            for d in ind:
                it.resize_tensor_input(d["index"], feed[d["name"]].shape)
            it.allocate_tensors()
            for d in ind:
                it.set_tensor(d["index"], feed[d["name"]])
            it.invoke()
            return [(d["name"], np.array(it.get_tensor(d["index"]))) for d in outd]
    record["tflite_signature"] = key

    def from_tflite(mapping, opset, nchw):
        import tf2onnx

        proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset, inputs_as_nchw=[inputs[k]["tensor"] for k in nchw] or None)
        return proto, {r: inputs[k]["tensor"] for r, k in mapping.items()}, out_tensors

    label = f"{path.name} (TFLite{' signature ' + key if key else ''})"
    return Source(label, inputs, run, [("tf2onnx.from_tflite", from_tflite)])

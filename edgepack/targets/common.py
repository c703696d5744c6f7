"""Helpers shared by the targets that convert ONNX themselves (tflite, openvino): recipe checks,
the ONNX model's I/O, calibration samples, and a one-sample comparison with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError

QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                 "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits")


def check_precision(where: str, value: str | None, allowed: tuple[str, ...], default: str,
                    noun: str = "a precision of this target") -> str:
    """The target's precision, or a BadInputError naming targets[i].precision and the allowed values."""
    if value is None:
        return default
    if value not in allowed:
        import difflib

        close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
        hint = f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(allowed)}"
        raise BadInputError(f"{where}.precision: '{value}' is not {noun} (allowed: {', '.join(allowed)})", hint=hint)
    return value


def onnx_io(path: Path) -> tuple[list[dict], list[dict]]:
    """[{name, shape, dtype}] of the graph inputs (initializers excluded) and outputs."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [spec(v) for v in m.graph.input if v.name not in init], [spec(v) for v in m.graph.output]


def quantized_ops(path: Path) -> list[str]:
    from ..optimize import count_ops

    return [op for op in count_ops(path) if op in QUANTIZED_OPS]


def check_self_quantizing(where: str, inputs: dict, method: str, no_data_hint: str = "add data.calibration to the recipe") -> None:
    """A target that quantizes to int8 itself needs calibration data and a float input model."""
    if "calibration" not in inputs:
        raise BadInputError(f"{where}.precision: int8 ({method}) needs calibration data", hint=no_data_hint)
    q = quantized_ops(inputs["model"].path)
    if q:
        raise BadInputError(
            f"{where}.input: precision int8 quantizes the model itself, but its input model is already quantized ({', '.join(q)})",
            hint="set 'input: fp32' on this target",
        )


def model_io_and_calibration(inputs: dict, recipe_inputs) -> tuple:
    """(model artifact, ONNX inputs, ONNX outputs, calibration arrays or None, the recipe input that
    feeds each ONNX input): what every converting target reads first."""
    from ..data import read_npz

    src = inputs["model"]
    ins, outs = onnx_io(src.path)
    arrays = read_npz(inputs["calibration"].path)[0] if "calibration" in inputs else None
    return src, ins, outs, arrays, source_names(ins, arrays, [i.name for i in recipe_inputs])


def source_names(onnx_inputs: list[dict], arrays: dict[str, np.ndarray] | None, recipe_inputs: list[str]) -> list[str]:
    """For each ONNX input, the recipe/data input name that feeds it (same name, else same position)."""
    out = []
    for i, spec in enumerate(onnx_inputs):
        if spec["name"] in recipe_inputs or (arrays and spec["name"] in arrays):
            out.append(spec["name"])
        elif i < len(recipe_inputs):
            out.append(recipe_inputs[i])
        else:
            out.append(spec["name"])
    return out


def first_sample(model, recipe_dir, onnx_inputs: list[dict], sources: list[str], arrays: dict | None) -> list[np.ndarray]:
    """One complete feed per ONNX input, as the device runner feeds it: calibration sample 0, or
    seeded random data when there is none (constants and states as the recipe declares them)."""
    from ..data import model_samples
    from ..ingest import sample_inputs

    feed = model_samples(model, arrays, recipe_dir, limit=1)[0] if arrays else sample_inputs(model, None, 1, recipe_dir)[0]
    rng = np.random.default_rng(0)
    out = []
    for spec, src in zip(onnx_inputs, sources):
        if src in feed:
            out.append(np.require(feed[src].astype(spec["dtype"]), requirements="C"))
        else:  # an ONNX input the recipe does not declare
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
            out.append(rng.random(shape).astype(spec["dtype"]) if spec["dtype"].startswith("float") else np.zeros(shape, spec["dtype"]))
    return out


def onnx_reference(path: Path, names: list[str], feeds: list[np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(zip(names, feeds)))


def compare(reference: list[np.ndarray], outputs: list[np.ndarray]) -> list[dict]:
    """Max abs error and cosine per output (one sample): recorded by the compile stage as a smoke check."""
    from ..validate.fidelity import cosine, max_abs_error

    return [{"max_abs_error": max_abs_error(r, o), "cosine": cosine(r, o)} for r, o in zip(reference, outputs)]

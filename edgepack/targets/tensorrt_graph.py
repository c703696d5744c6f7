"""TensorRT target, graph side: static shapes or an optimization profile, symmetric INT8 Q/DQ that
TensorRT's explicit quantization takes, and a one-sample check of the prepared graph with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError, StageError

QDQ = ("QuantizeLinear", "DequantizeLinear")


def has_qdq(path: Path) -> bool:
    from ..optimize import count_ops

    return any(op in count_ops(path) for op in QDQ)


def check_trt_qdq(path: Path, where: str) -> None:
    """TensorRT takes int8 Q/DQ with zero points of 0 only (symmetric)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type in QDQ and len(node.input) > 2 and node.input[2] in init:
            zp = numpy_helper.to_array(init[node.input[2]])
            if zp.dtype != np.int8 or np.any(zp != 0):
                what = f"{zp.dtype} Q/DQ" if zp.dtype != np.int8 else f"zero point {zp.ravel()[:4].tolist()}"
                raise BadInputError(
                    f"node '{node.name}' has {what}: TensorRT takes int8 Q/DQ with zero point 0 only",
                    hint="quantize with symmetric_activations: true, or use input: fp32 and let the TensorRT target place Q/DQ", where=where
                )


def quantize_qdq(fp32: Path, calibration: Path, out: Path, model=None, recipe_dir: Path | None = None) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ..data import read_npz
    from ..feeding import onnx_feeds

    feeds = onnx_feeds(fp32, read_npz(calibration)[0], model, recipe_dir)  # as the runner feeds it (stream: state carried)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    tmp.replace(out)


def set_shapes(path: Path, opts: dict, where: str, declared: dict | None = None) -> dict:
    """Fix dynamic input dims unless options.profile covers the input: to options.shapes, else to the
    size model.inputs declares (``declared``: name -> (shape, batch axis)), else 1 on the batch axis;
    a dynamic dim with none of these is an error naming options.shapes (never silently 1)."""
    import onnx

    m = onnx.load(str(path))
    init = {i.name for i in m.graph.initializer}
    inputs = [v for v in m.graph.input if v.name not in init]
    names = [v.name for v in inputs]
    for key in ("profile", "shapes"):
        for name in opts[key] or {}:
            if name not in names:
                raise BadInputError(f"{where}.options.{key}.{name}: the model has no input '{name}'", hint=f"inputs: {', '.join(names)}")
    fixed, profile = {}, {}
    for v in inputs:
        dims = v.type.tensor_type.shape.dim
        cur = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if v.name in (opts["profile"] or {}):
            p = opts["profile"][v.name]
            _check_rank(where, f"profile.{v.name}", cur, p["min"])
            for k in ("min", "opt", "max"):
                for i, (c, x) in enumerate(zip(cur, p[k])):
                    if isinstance(c, int) and c != x:
                        raise BadInputError(f"{where}.options.profile.{v.name}.{k}: dimension {i} is fixed to {c} in the model, got {x}")
            profile[v.name] = p
            continue
        want = (opts["shapes"] or {}).get(v.name)
        if want is not None:
            _check_rank(where, f"shapes.{v.name}", cur, want)
            new = list(want)
        else:
            new = _declared_sizes(where, v.name, cur, (declared or {}).get(v.name))
        for i, (c, x) in enumerate(zip(cur, new)):
            if isinstance(c, int) and c != x:
                raise BadInputError(f"{where}.options.shapes.{v.name}: dimension {i} is fixed to {c} in the model, got {x}")
            dims[i].ClearField("dim_param")
            dims[i].dim_value = x
        if new != cur:
            fixed[v.name] = {"from": cur, "to": new}
    if fixed:
        del m.graph.value_info[:]
        for o in m.graph.output:
            o.type.tensor_type.ClearField("shape")
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(m, str(tmp))
    tmp.replace(path)
    return {"fixed": fixed, "profile": profile, "static": not profile}


def _declared_sizes(where: str, name: str, cur: list, declared: tuple | None) -> list[int]:
    """Static sizes for an input: the model's own, else model.inputs' declared ints, else 1 on the batch axis."""
    shape, batch_axis = declared if declared is not None and len(declared[0]) == len(cur) else ([None] * len(cur), 0)
    new = []
    for i, (c, d) in enumerate(zip(cur, shape)):
        if isinstance(c, int):
            new.append(c)
        elif isinstance(d, int):
            new.append(d)
        elif i == batch_axis:
            new.append(1)
        else:
            example = "[" + ", ".join(str(x) if isinstance(x, int) else ("1" if j == batch_axis else "N") for j, x in enumerate(cur)) + "]"
            raise BadInputError(
                f"{where}.options.shapes.{name}: dimension {i} ('{c}') is dynamic in the model and model.inputs gives no size for it;"
                " a TensorRT engine needs one",
                hint=f"set options.shapes.{name}: {example} with N the size to build for, or options.profile.{name} (min/opt/max)",
            )
    return new


def _check_rank(where, key, cur, want):
    if len(want) != len(cur):
        raise BadInputError(f"{where}.options.{key}: rank {len(want)} but the model input has rank {len(cur)} ({cur})")


def check_with_ort(fp32: Path, prepared: Path, profile: dict | None, calibration: Path | None, model=None, recipe_dir: Path | None = None):
    """One sample (the runner's first calibration feed, else seeded random) through the FP32 and the prepared model
    (smoke check, recorded). Returns (record, feeds, FP32 outputs) so an engine built here is checked on the same sample."""
    import onnxruntime as ort

    from ..data import read_npz
    from ..feeding import onnx_feeds

    first = onnx_feeds(prepared, read_npz(calibration)[0], model, recipe_dir, limit=1)[0] if calibration is not None else {}
    sess = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = profile[i.name]["opt"] if profile and i.name in profile else [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int64
        if i.name in first and list(first[i.name].shape) == list(shape):
            feeds[i.name] = first[i.name]
        else:
            feeds[i.name] = rng.random(shape).astype(dtype) if dtype is np.float32 else np.zeros(shape, dtype)
    try:
        got = sess.run(None, feeds)
        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as e:
        raise StageError(f"the TensorRT-ready ONNX model does not run in ONNX Runtime: {str(e).splitlines()[0][:240]}") from e
    return {"max_abs_diff_vs_fp32": max_abs_diffs(got, ref)}, feeds, ref


def max_abs_diffs(got, ref) -> list[float]:
    from ..validate.fidelity import max_abs_error

    return [max_abs_error(b, a) for a, b in zip(got, ref)]

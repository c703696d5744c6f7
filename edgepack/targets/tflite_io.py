"""What onnx2tf made: the .tflite's inputs and outputs matched to the ONNX model's, by name and shape,
and checked on one sample against ONNX Runtime.

The result tells every runner how to feed the artifact (the RunnerContract's inputs: source name,
tflite name, dtype, transpose, quantization) and how to put the outputs back into the ONNX model's order and layout
(the contract's outputs: ``index``, ``perm``). Output matching is numeric: onnx2tf reorders and renames
outputs, and channels-last outputs are indistinguishable by shape when dimensions are equal.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..artifact import TensorSpec
from ..errors import StageError
from ..validate.fidelity import max_abs_error
from .common import compare, onnx_reference


def load_interpreter(path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    return it


def _norm(name: str) -> str:
    name = re.sub(r"^serving_default_", "", name)
    name = re.sub(r":\d+$", "", name)
    return re.sub(r"[^0-9a-zA-Z]", "", name).lower()


def _quantize(a: np.ndarray, d: dict) -> np.ndarray:
    scale, zero = d["quantization"]
    if scale and np.dtype(d["dtype"]).kind in "iu":
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(a / scale + zero), info.min, info.max).astype(d["dtype"])
    return a.astype(d["dtype"])


def _dequantize(o: np.ndarray, d: dict) -> np.ndarray:
    scale, zero = d["quantization"]
    return (o.astype(np.float32) - zero) * scale if scale and o.dtype.kind in "iu" else o


def match_inputs(details: list[dict], ins: list[dict], shapes, perms) -> list[dict]:
    """The tflite input detail for each ONNX input: same (normalized) name, else the same position."""
    by_name = {_norm(d["name"]): d for d in details}
    chosen = []
    for k, spec in enumerate(ins):
        d = by_name.get(_norm(spec["name"]))
        if d is None and len(details) == len(ins):
            d = details[k]
        if d is None:
            raise StageError(f"the .tflite has no input matching ONNX input '{spec['name']}' (inputs: {[x['name'] for x in details]})")
        want = list(np.transpose(np.empty(shapes[k]), perms[k]).shape) if perms[k] else shapes[k]
        if list(d["shape"]) != want and _squeezed(d["shape"]) != _squeezed(want):
            raise StageError(f"ONNX input '{spec['name']}' {shapes[k]} became tflite input '{d['name']}' {list(d['shape'])}, expected {want}",
                             hint="onnx2tf changed the input layout unexpectedly; try options.keep_nchw: true")
        chosen.append(d)
    return chosen


def _squeezed(shape) -> list[int]:
    return [int(x) for x in shape if int(x) != 1]


def match_outputs(reference: list[np.ndarray], got: list[np.ndarray]) -> tuple[list[int], list[list[int] | None]]:
    """For each ONNX output: the tflite output index and transpose that reproduce it best (same shape, least error)."""
    order, perms, used = [], [], set()
    for k, ref in enumerate(reference):
        best = None
        for j, o in enumerate(got):
            if j in used:
                continue
            r = o.ndim
            for perm in ([None, [0, r - 1, *range(1, r - 1)]] if 3 <= r <= 5 else [None]):
                cand = np.transpose(o, perm) if perm else o
                if cand.shape != ref.shape:
                    continue
                err = max_abs_error(ref, cand)
                if best is None or err < best[0]:
                    best = (err, j, perm)
        if best is None:
            raise StageError(f"no .tflite output has the shape of ONNX output {k} {list(ref.shape)} (tflite: {[list(o.shape) for o in got]})")
        used.add(best[1])
        order.append(best[1])
        perms.append(best[2])
    return order, perms


def describe(path: Path, onnx_path: Path, ins, outs, sources, shapes, perms, feeds):
    """(input specs, output specs, contract mapping, meta, record) for the .tflite at ``path``."""
    it = load_interpreter(path)
    in_details = match_inputs(it.get_input_details(), ins, shapes, perms)
    out_details = it.get_output_details()
    reference = onnx_reference(onnx_path, [s["name"] for s in ins], feeds)
    reshapes = []  # onnx2tf makes a 0-d input [1]: the runner reshapes (sizes are equal)
    for d, a, perm in zip(in_details, feeds, perms):
        a = np.transpose(a, perm) if perm else a
        reshapes.append([int(x) for x in d["shape"]] if list(a.shape) != list(d["shape"]) else None)
        it.set_tensor(d["index"], _quantize(a.reshape(d["shape"]), d))
    it.invoke()
    got = [_dequantize(it.get_tensor(d["index"]), d) for d in out_details]
    order, out_perms = match_outputs(reference, got)

    def layout(shape, perm):
        return ("NHWC" if perm else "NCHW") if len(shape) == 4 else None

    specs_in = [TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name, layout(shp, p))
                for d, shp, p in zip(in_details, shapes, perms)]
    specs_out = []
    for j, d in enumerate(out_details):
        perm = out_perms[order.index(j)] if j in order else None
        specs_out.append(TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name, layout(d["shape"], perm)))
    quant = []
    for d in in_details:
        q = d["quantization"]
        quant.append({"scale": float(q[0]), "zero_point": int(q[1]), "dtype": np.dtype(d["dtype"]).name} if q[0] else None)
    mapping = {  # the runner contract's I/O part (edgepack/contract.py make_contract): names, dtypes, transposes
        "names": [d["name"] for d in in_details],
        "dtypes": [np.dtype(d["dtype"]).name for d in in_details],  # int64 ids stay int64; int32 where onnx2tf made int32
        "perms": perms,
        "quantization": quant,
        "reshapes": reshapes,
        "order": order,
        "out_perms": out_perms,
    }
    meta = {
        "layout": sorted({s.layout for s in specs_in if s.layout}) or None,
        "quantized_io": any(np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] for d in in_details + out_details),
    }
    dtypes: dict[str, int] = {}
    for t in it.get_tensor_details():
        dt = np.dtype(t["dtype"]).name
        dtypes[dt] = dtypes.get(dt, 0) + 1
    flex = sorted({o["op_name"] for o in it._get_ops_details() if str(o.get("op_name", "")).startswith("Flex")})
    record = {
        **({"select_tf_ops": flex} if flex else {}),  # TF ops kept as Flex: a LiteRT runtime without the Flex delegate cannot run them
        "tensor_dtypes": dict(sorted(dtypes.items())),
        "io": {"inputs": [s.to_json() for s in specs_in], "outputs": [s.to_json() for s in specs_out]},
        "sample_check": {"vs": "ONNX Runtime, 1 sample", "outputs": compare([reference[k] for k in range(len(order))],
                                                                         [np.transpose(got[j], p) if p else got[j] for j, p in zip(order, out_perms)])},
    }
    return specs_in, specs_out, mapping, meta, record

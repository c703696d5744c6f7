"""TensorRT target (Jetson and other NVIDIA GPUs): a TensorRT-ready ONNX model plus a build spec.

The artifact is a folder ``tensorrt/`` with

    model.onnx        static shapes, or the dynamic axes an optimization profile covers; explicit
                      symmetric INT8 Q/DQ for precision int8 (TensorRT builds it without a calibrator)
    build_spec.json   precision, workspace, DLA core, optimization profile, timing cache name, and
                      the equivalent ``trtexec`` command line
    model.plan        only where the ``tensorrt`` package and an NVIDIA GPU are present here: the
    timing.cache      engine and its timing cache, built and checked in the worker

Elsewhere the engine is marked "built on device": the device runner (devices/runner.py,
TensorRTAdapter) builds it from the same ONNX + spec on first use and caches it keyed by TensorRT
version, GPU compute capability and JetPack release. Engines are never portable across those.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import BadInputError, StageError
from . import TargetStage

PRECISIONS = ("fp32", "fp16", "int8")
QDQ = ("QuantizeLinear", "DequantizeLinear")


class TensorRTTarget(TargetStage):
    kind = "compile.tensorrt"
    version = "1"
    runtime = "tensorrt"
    extra = "tensorrt"
    isolated = True
    timeout = 1800.0
    uses = ("model", "fp32", "calibration")

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.opts = _check_options(ctx.where, dict(target.options))
        if target.precision is not None and target.precision not in PRECISIONS:
            raise BadInputError(f"{ctx.where}.precision: '{target.precision}' is not a TensorRT precision",
                                hint=f"use one of: {', '.join(PRECISIONS)}")

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx", "onnxruntime", "tensorrt")

    def check_inputs(self, inputs):
        if self._precision(inputs["model"]) == "int8" and not _has_qdq(inputs["model"].path) and "calibration" not in inputs:
            raise BadInputError(f"{self.ctx.where}.precision: int8 needs calibration data to place Q/DQ nodes",
                                hint="add data.calibration to the recipe, or quantize in the optimize chain")

    def _precision(self, model: Artifact) -> str:
        return self.target.precision or "fp16"

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        model, fp32 = inputs["model"], inputs.get("fp32", inputs["model"])
        precision = self._precision(model)
        record: dict = {"precision": precision, "notes": []}
        out = workdir / "tensorrt"
        out.mkdir()
        onnx_out = out / "model.onnx"
        if precision == "int8":
            if _has_qdq(model.path):
                _check_trt_qdq(model.path, self.ctx.where)
                shutil.copyfile(model.path, onnx_out)
                record["qdq"] = "from the optimize chain (symmetric int8, checked)"
            else:
                _quantize_qdq(fp32.path, inputs["calibration"].path, onnx_out)
                record["qdq"] = "placed here: ONNX Runtime static QDQ, int8 symmetric weights and activations, per-channel"
        else:
            if _has_qdq(model.path):
                record["notes"].append(f"the optimize chain's Q/DQ model is not used for {precision}: built from the FP32 model")
            shutil.copyfile(fp32.path, onnx_out)
        record["shapes"] = _set_shapes(onnx_out, self.opts, self.ctx.where)
        calib = inputs["calibration"].path if "calibration" in inputs else None
        record["check"] = _check_with_ort(fp32.path, onnx_out, record["shapes"]["profile"] or None, calib)
        spec = _build_spec(self.opts, precision, record["shapes"]["profile"])
        built = _try_build(out, spec, record)
        if built:
            spec["built"] = built
        (out / "build_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        meta = {"runtime": self.runtime, "precision": precision, "engine": "built here" if built else "built on device"}
        if self.opts["engine_cache"]:
            meta["runner_options"] = {"engine_cache": self.opts["engine_cache"]}
        from ..ingest import onnx_specs

        ins, outs = onnx_specs(onnx_out, {t.name: t.layout for t in model.inputs})
        return StageResult({"artifact": Artifact(out, "tensorrt-onnx", inputs=ins, outputs=outs, meta=meta)}, record)


# ------------------------------------------------------------------ options

OPTIONS = {
    "workspace_mb": 1024, "dla_core": None, "allow_gpu_fallback": True, "profile": None, "shapes": None,
    "builder_optimization_level": None, "engine_cache": None,
}


def _check_options(where: str, options: dict) -> dict:
    for key in options:
        if key not in OPTIONS:
            raise BadInputError(f"{where}.options.{key}: unknown TensorRT option", hint=f"valid options: {', '.join(OPTIONS)}")
    opts = {**OPTIONS, **options}
    if not isinstance(opts["workspace_mb"], int) or isinstance(opts["workspace_mb"], bool) or opts["workspace_mb"] <= 0:
        raise BadInputError(f"{where}.options.workspace_mb: must be a positive integer (MiB), got {opts['workspace_mb']!r}")
    if opts["dla_core"] is not None and (not isinstance(opts["dla_core"], int) or isinstance(opts["dla_core"], bool) or opts["dla_core"] < 0):
        raise BadInputError(f"{where}.options.dla_core: must be a DLA core index (0, 1) or null, got {opts['dla_core']!r}",
                            hint="Jetson Orin Nano has no DLA: leave dla_core out")
    level = opts["builder_optimization_level"]
    if level is not None and (not isinstance(level, int) or not 0 <= level <= 5):
        raise BadInputError(f"{where}.options.builder_optimization_level: must be 0..5, got {level!r}")
    for name in ("profile", "shapes"):
        if opts[name] is not None and not isinstance(opts[name], dict):
            raise BadInputError(f"{where}.options.{name}: must map input names to shapes")
    for name, p in (opts["profile"] or {}).items():
        if not isinstance(p, dict) or set(p) != {"min", "opt", "max"}:
            raise BadInputError(f"{where}.options.profile.{name}: needs exactly min, opt and max shapes")
        dims = [p[k] for k in ("min", "opt", "max")]
        if not all(isinstance(d, list) and all(isinstance(x, int) and x > 0 for x in d) for d in dims) or len({len(d) for d in dims}) != 1:
            raise BadInputError(f"{where}.options.profile.{name}: min, opt and max must be lists of positive ints of the same rank")
        if not all(a <= b <= c for a, b, c in zip(*dims)):
            raise BadInputError(f"{where}.options.profile.{name}: needs min <= opt <= max in every dimension, got {dims}")
    for name, s in (opts["shapes"] or {}).items():
        if not isinstance(s, list) or not all(isinstance(x, int) and x > 0 for x in s):
            raise BadInputError(f"{where}.options.shapes.{name}: must be a list of positive ints")
    return opts


# ------------------------------------------------------------------ graph preparation


def _has_qdq(path: Path) -> bool:
    from ..optimize import count_ops

    return any(op in count_ops(path) for op in QDQ)


def _check_trt_qdq(path: Path, where: str) -> None:
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
                    f"{where}: node '{node.name}' has {what}: TensorRT takes int8 Q/DQ with zero point 0 only",
                    hint="quantize with symmetric_activations: true, or use input: fp32 and let the TensorRT target place Q/DQ",
                )


def _quantize_qdq(fp32: Path, calibration: Path, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from ..data import read_npz

    arrays, _ = read_npz(calibration)
    n = len(next(iter(arrays.values())))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{k: v[i : i + 1] for k, v in arrays.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    tmp = out.with_suffix(".tmp.onnx")
    quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    tmp.replace(out)


def _set_shapes(path: Path, opts: dict, where: str) -> dict:
    """Fix dynamic input dims (options.shapes, else 1) unless options.profile covers the input."""
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
        new = [want[i] if want is not None else (c if isinstance(c, int) else 1) for i, c in enumerate(cur)]
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


def _check_rank(where, key, cur, want):
    if len(want) != len(cur):
        raise BadInputError(f"{where}.options.{key}: rank {len(want)} but the model input has rank {len(cur)} ({cur})")


def _check_with_ort(fp32: Path, prepared: Path, profile: dict | None, calibration: Path | None) -> dict:
    """One sample (calibration sample 0, else seeded random) through the FP32 and the prepared model (smoke check, recorded)."""
    import onnxruntime as ort

    from ..data import read_npz

    arrays = read_npz(calibration)[0] if calibration is not None else {}
    sess = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        shape = profile[i.name]["opt"] if profile and i.name in profile else [d if isinstance(d, int) else 1 for d in i.shape]
        dtype = np.float32 if "float" in i.type else np.int64
        if i.name in arrays and list(arrays[i.name].shape[1:]) == list(shape[1:]):
            feeds[i.name] = np.ascontiguousarray(arrays[i.name][: shape[0]]).astype(dtype)
        else:
            feeds[i.name] = rng.random(shape).astype(dtype) if dtype is np.float32 else np.zeros(shape, dtype)
    try:
        got = sess.run(None, feeds)
        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)
    except Exception as e:
        raise StageError(f"the TensorRT-ready ONNX model does not run in ONNX Runtime: {str(e).splitlines()[0][:240]}") from e
    return {"max_abs_diff_vs_fp32": [float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if a.size else 0.0
                                     for a, b in zip(got, ref)]}


# ------------------------------------------------------------------ build spec and engine


def _build_spec(opts: dict, precision: str, profile: dict) -> dict:
    spec = {
        "format": 1, "onnx": "model.onnx", "plan": "model.plan", "timing_cache": "timing.cache", "precision": precision,
        "workspace_mb": opts["workspace_mb"], "dla_core": opts["dla_core"], "allow_gpu_fallback": opts["allow_gpu_fallback"],
        "builder_optimization_level": opts["builder_optimization_level"], "profile": profile or None,
    }
    cmd = ["trtexec", "--onnx=model.onnx", "--saveEngine=model.plan", "--timingCacheFile=timing.cache",
           f"--memPoolSize=workspace:{opts['workspace_mb']}M"]
    cmd += {"fp32": [], "fp16": ["--fp16"], "int8": ["--fp16", "--int8"]}[precision]
    if opts["dla_core"] is not None:
        cmd.append(f"--useDLACore={opts['dla_core']}")
        if opts["allow_gpu_fallback"]:
            cmd.append("--allowGPUFallback")
    if opts["builder_optimization_level"] is not None:
        cmd.append(f"--builderOptimizationLevel={opts['builder_optimization_level']}")
    for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
        if profile:
            cmd.append(flag + "=" + ",".join(f"{n}:{'x'.join(map(str, p[key]))}" for n, p in profile.items()))
    spec["trtexec"] = " ".join(cmd)
    return spec


def _gpu_here() -> str | None:
    """Why the engine cannot be built on this host, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed on the build host"
    try:
        from ..devices.runner import _Cuda

        _Cuda().compute_capability()
    except Exception as e:
        return f"no usable NVIDIA GPU on the build host ({e.__class__.__name__}: {str(e)[:120]})"
    return None


def _try_build(out: Path, spec: dict, record: dict) -> dict | None:
    why = _gpu_here()
    if why is not None:
        record["engine"] = {"status": "built on device", "reason": why}
        return None
    from ..devices.runner import _Cuda, jetpack_release, trt_build, trt_cache_key

    import tensorrt as trt

    (out / "build_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    try:
        facts = trt_build(str(out / "model.onnx"), spec, str(out / "model.plan"), str(out / "timing.cache"))
    except RuntimeError as e:
        raise StageError(f"TensorRT engine build failed: {e}", hint="see the stage log for TensorRT's messages") from e
    cc = _Cuda().compute_capability()
    key = trt_cache_key(spec, str(out / "model.onnx"), trt.__version__, cc, jetpack_release())
    record["engine"] = {"status": "built here", **facts, "compute_capability": cc}
    return {"cache_key": key, "tensorrt": trt.__version__, "compute_capability": cc}

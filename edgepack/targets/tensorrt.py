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

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import BadInputError, StageError
from . import TargetStage
from .common import check_precision
from .tensorrt_graph import check_trt_qdq, check_with_ort, has_qdq, quantize_qdq, set_shapes

PRECISIONS = ("fp32", "fp16", "int8")


class TensorRTTarget(TargetStage):
    kind = "compile.tensorrt"
    version = "2"
    runtime = "tensorrt"
    extra = "tensorrt"
    isolated = True
    timeout = 1800.0
    uses = ("model", "fp32", "calibration")

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.opts = target.options.model_dump()  # recipe_targets.TensorRTOptions, validated at load (dla_core: fp16/int8)
        check_precision(ctx.where, target.precision, PRECISIONS, None, noun="a TensorRT precision")  # None: from the model
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def config(self) -> dict:
        return {**super().config(), "declared_shapes": {n: list(s) for n, (s, _) in self._declared().items()}}

    def _declared(self) -> dict:
        """model.inputs' shapes and batch axes: the sizes a dynamic model dim gets when options.shapes does not say."""
        return {i.name: (list(i.shape), getattr(i, "batch_axis", 0)) for i in self.ctx.model.inputs}

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx", "onnxruntime", "tensorrt")

    def check_inputs(self, inputs):
        if self._precision(inputs["model"]) == "int8" and not has_qdq(inputs["model"].path) and "calibration" not in inputs:
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
            if has_qdq(model.path):
                check_trt_qdq(model.path, self.ctx.where)
                shutil.copyfile(model.path, onnx_out)
                record["qdq"] = "from the optimize chain (symmetric int8, checked)"
            else:
                quantize_qdq(fp32.path, inputs["calibration"].path, onnx_out, self.ctx.model, self.ctx.recipe_dir)
                record["qdq"] = "placed here: ONNX Runtime static QDQ, int8 symmetric weights and activations, per-channel"
        else:
            if has_qdq(model.path):
                record["notes"].append(f"the optimize chain's Q/DQ model is not used for {precision}: built from the FP32 model")
            shutil.copyfile(fp32.path, onnx_out)
        record["shapes"] = set_shapes(onnx_out, self.opts, self.ctx.where, self._declared())
        calib = inputs["calibration"].path if "calibration" in inputs else None
        record["check"], feeds, reference = check_with_ort(fp32.path, onnx_out, record["shapes"]["profile"] or None, calib, self.ctx.model, self.ctx.recipe_dir)
        spec = _build_spec(self.opts, precision, record["shapes"]["profile"])
        built = _try_build(out, spec, record)
        if built:
            spec["built"] = built  # the device runner uses model.plan only where its own key matches this one
        (out / "build_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
        if built:
            record["engine_check"] = _engine_check(out, feeds, reference)
        meta = {"runtime": self.runtime, "precision": precision, "engine": "built here" if built else "built on device"}
        meta["runner"] = self.contract(onnx_out, options={"engine_cache": self.opts["engine_cache"]} if self.opts["engine_cache"] else None)
        from ..ingest import onnx_specs

        ins, outs = onnx_specs(onnx_out, {t.name: t.layout for t in model.inputs})
        return StageResult({"artifact": Artifact(out, "tensorrt-onnx", inputs=ins, outputs=outs, meta=meta)}, record)


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
        from ..devices.runtime_tensorrt import _Cuda

        _Cuda().compute_capability()
    except Exception as e:
        return f"no usable NVIDIA GPU on the build host ({e.__class__.__name__}: {str(e)[:120]})"
    return None


def _try_build(out: Path, spec: dict, record: dict) -> dict | None:
    why = _gpu_here()
    if why is not None:
        record["engine"] = {"status": "built on device", "reason": why}
        return None
    import tensorrt as trt

    from ..devices.runtime_tensorrt import _Cuda, jetpack_release, trt_build, trt_cache_key

    (out / "build_spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    try:
        facts = trt_build(str(out / "model.onnx"), spec, str(out / "model.plan"), str(out / "timing.cache"))
    except RuntimeError as e:
        raise StageError(f"TensorRT engine build failed: {e}", hint="see the stage log for TensorRT's messages") from e
    cc = _Cuda().compute_capability()
    key = trt_cache_key(spec, str(out / "model.onnx"), trt.__version__, cc, jetpack_release())
    record["engine"] = {"status": "built here", **facts, "compute_capability": cc}
    return {"cache_key": key, "tensorrt": trt.__version__, "compute_capability": cc}


def _engine_check(folder: Path, feeds: dict, reference: list) -> dict:
    """Run the engine just built (the device runner's own adapter, on this GPU) on the check sample."""
    from ..devices.runtime_tensorrt import TensorRTAdapter
    from .tensorrt_graph import max_abs_diffs

    adapter = TensorRTAdapter()
    info = adapter.load(str(folder), None, {"engine_cache": str(folder / "_engines")})
    got = adapter.run(feeds)
    shutil.rmtree(folder / "_engines", ignore_errors=True)
    from ..validate.fidelity import cosine

    cos = [cosine(r, g) for g, r in zip(got, reference)]
    if min(cos, default=1.0) < 0.9:
        raise StageError(f"the TensorRT engine built here disagrees with the FP32 model (cosine {min(cos):.3f} on one sample)",
                         hint="see the stage log; try precision fp32 to tell a precision problem from a parser one")
    return {"engine": info.get("engine"), "max_abs_diff_vs_fp32": max_abs_diffs(got, reference), "cosine_vs_fp32": cos}

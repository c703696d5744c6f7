"""Core ML target: an ``.mlpackage`` (ML Program) made with coremltools, in an isolated worker of the coreml
toolchain (edgepack/toolchains: the running interpreter when it satisfies the lock, else its managed environment).

Frontends: a PyTorch source (nn.Module entrypoint + weights, or TorchScript) is traced and converted
directly; any other source goes FP32 ONNX -> onnx2tf (a TensorFlow graph, inputs kept NCHW) ->
coremltools' TensorFlow frontend (onnx2torch needs torchvision, which has no CPU build here).
Precision: fp16 (default), fp32, int8 (weights, ``coremltools.optimize`` linear symmetric) or
palettized (weights, k-means LUT of ``options.palette_bits``). Core ML cannot predict on Linux, so the
stage checks the package structurally (I/O names, shapes, dtypes vs the recipe; op histogram; size)
and numeric validation runs on a macOS device profile (devices/mac.yaml).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from ..artifact import Artifact, TensorSpec
from ..engine import StageResult
from ..errors import BadInputError, StageError, require_backend
from ..recipe import ModelFormat
from ..worker import tee_stdout
from . import TargetStage
from .common import check_precision
from .coreml_inspect import check_io, inspect_mlpackage

PRECISIONS = ("fp16", "fp32", "int8", "palettized")
TORCH_FORMATS = (ModelFormat.PYTORCH, ModelFormat.TORCHSCRIPT)


class CoreMLTarget(TargetStage):
    kind = "compile.coreml"
    version = "1"
    runtime = "coreml"
    extra = "coreml"
    isolated = True
    timeout = 900.0
    uses = ("source", "fp32", "model")
    toolchain_env = "coreml"  # both frontends (its lock has torch for the PyTorch one): here, or its managed environment

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.opts = target.options.model_dump()  # recipe_targets.CoreMLOptions, validated at load (with the deployment target)
        self.precision = check_precision(ctx.where, target.precision, PRECISIONS, "fp16", noun="a Core ML precision")
        self.frontend = self.opts["frontend"]
        if self.frontend == "auto":
            self.frontend = "pytorch" if ctx.model.format in TORCH_FORMATS else "onnx"
        if self.frontend == "pytorch" and ctx.model.format not in TORCH_FORMATS:
            raise BadInputError(f"{ctx.where}.options.frontend: 'pytorch' needs a PyTorch source (model.format pytorch or torchscript), "
                                f"this recipe's is {ctx.model.format.value}", hint="use frontend: onnx (the default for non-PyTorch sources)")
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def config(self) -> dict:
        return {**super().config(), "frontend": self.frontend}

    def toolchain(self) -> dict[str, str]:
        from .. import toolchains

        names = ("coremltools", "torch") if self.frontend == "pytorch" else ("coremltools", "onnx2tf", "tensorflow", "tf_keras")
        return toolchains.versions("coreml", *names)

    def coverage_input(self, model, fp32):
        """Pre-flight op coverage (targets/coverage.py): the ONNX graph only matters on the onnx2tf path."""
        if self.frontend == "pytorch":
            return None, None, "Core ML converts the PyTorch source directly: ONNX op coverage does not apply"
        return "onnx2tf", fp32, "first leg (ONNX -> TensorFlow) checked; coremltools' TensorFlow frontend is checked by the conversion"

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        require_backend("coremltools", "coreml")
        import coremltools as ct

        fp32 = inputs["fp32"]
        in_specs = [TensorSpec(t.name, tuple(_static(t.shape)), t.dtype, t.layout) for t in fp32.inputs]
        out_names = [t.name for t in fp32.outputs]
        record: dict = {"frontend": self.frontend, "precision": self.precision, "notes": [],
                        "minimum_deployment_target": self.opts["minimum_deployment_target"]}
        if "model" in inputs and inputs["model"].digest != fp32.digest:
            record["notes"].append(f"the optimize chain's model is not used: Core ML converts the {'PyTorch source' if self.frontend == 'pytorch' else 'FP32 ONNX model'}"
                                   f" and compresses with coremltools.optimize (precision {self.precision})")
        fixed = {t.name: list(t.shape) for t in fp32.inputs if any(not isinstance(d, int) for d in t.shape)}
        if fixed:
            record["notes"].append(f"dynamic dims fixed to 1 for Core ML: {fixed}")
        ct_inputs = [ct.TensorType(name=s.name, shape=s.shape, dtype=np.dtype(s.dtype).type) for s in in_specs]
        kwargs = dict(
            convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if self.precision != "fp32" else ct.precision.FLOAT32,
            minimum_deployment_target=getattr(ct.target, self.opts["minimum_deployment_target"]),
        )
        try:
            with tee_stdout():  # into the stage log as it comes
                if self.frontend == "pytorch":
                    ml = self._from_torch(ct, inputs["source"], in_specs, ct_inputs, out_names, kwargs, workdir)
                else:
                    ml = _from_onnx(ct, fp32.path, in_specs, ct_inputs, out_names, kwargs, workdir, record)
                ml = self._compress(ml, record)
        except (BadInputError, StageError):
            raise
        except SystemExit as e:  # onnx2tf reports some failures with sys.exit(1)
            raise StageError(f"onnx2tf stopped (exit {e.code}) while preparing the Core ML conversion", hint="see the stage log") from e
        except Exception as e:
            raise StageError(f"coremltools conversion failed ({self.frontend} frontend): {e.__class__.__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                             hint="see the stage log; try options.frontend: onnx or pytorch") from e
        out = workdir / "model.mlpackage"
        ml.save(str(out))
        info = inspect_mlpackage(out)
        check_io(info, in_specs, out_names, self.ctx.where)
        record["structure"] = info
        record["numeric_validation"] = "Core ML prediction needs macOS: runs on a device profile with the coreml runtime (devices/mac.yaml)"
        outs = [TensorSpec(o["name"], tuple(o["shape"]), o["dtype"]) for o in info["outputs"]]
        meta = {"runtime": self.runtime, "precision": self.precision, "runner": self.contract(fp32.path, options={"compute_units": self.opts["compute_units"]}),
                "minimum_deployment_target": self.opts["minimum_deployment_target"]}
        return StageResult({"artifact": Artifact(out, "mlpackage", inputs=in_specs, outputs=outs, meta=meta)}, record)

    def _from_torch(self, ct, source: Artifact, in_specs, ct_inputs, out_names, kwargs, workdir):
        import torch

        from ..ingest import ConvertContext
        from ..ingest.torch import _load_module

        cctx = ConvertContext(self.ctx.model, Path(self.ctx.recipe_dir).resolve(), f"{self.ctx.where} (model)", [], workdir, out_names, source)
        module = _load_module(cctx)
        example = tuple(torch.zeros(s.shape, dtype=getattr(torch, np.dtype(s.dtype).name)) for s in in_specs)
        with torch.no_grad():
            traced = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.trace(module, example)
        outputs = [ct.TensorType(name=n, dtype=np.float32) for n in out_names]
        return ct.convert(traced, inputs=ct_inputs, outputs=outputs, **kwargs)

    def _compress(self, ml, record):
        if self.precision not in ("int8", "palettized"):
            return ml
        from coremltools.optimize.coreml import OpLinearQuantizerConfig, OpPalettizerConfig, OptimizationConfig, linear_quantize_weights, palettize_weights

        threshold = self.opts["weight_threshold"]
        if self.precision == "int8":
            cfg = OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=threshold)
            ml = linear_quantize_weights(ml, OptimizationConfig(global_config=cfg))
            record["compression"] = {"api": "coremltools.optimize.coreml.linear_quantize_weights", "mode": "linear_symmetric", "dtype": "int8"}
        else:
            cfg = OpPalettizerConfig(mode="kmeans", nbits=self.opts["palette_bits"], weight_threshold=threshold)
            ml = palettize_weights(ml, OptimizationConfig(global_config=cfg))
            record["compression"] = {"api": "coremltools.optimize.coreml.palettize_weights", "mode": "kmeans", "nbits": self.opts["palette_bits"]}
        record["compression"]["weight_threshold"] = threshold
        return ml


def _static(shape) -> list[int]:
    return [d if isinstance(d, int) else 1 for d in shape]


def _from_onnx(ct, onnx_path: Path, in_specs, ct_inputs, out_names, kwargs, workdir: Path, record: dict):
    """FP32 ONNX -> onnx2tf Keras model (NCHW inputs kept) -> concrete function -> coremltools."""
    require_backend("onnx2tf", "coreml")
    import onnx2tf
    import tensorflow as tf

    scratch = workdir / "_onnx2tf"
    scratch.mkdir(exist_ok=True)
    # onnx2tf downloads 20 sample images (GitHub) for any [N,H,W,3] input unless ./SAMPLE exists in the
    # working directory: a seeded stand-in keeps the build offline (only its internal check reads it).
    np.save(scratch / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    # onnx2tf rewrites the ONNX file it is given (onnxsim in place): hand it a copy, never the cached input
    private = scratch / "input.onnx"
    shutil.copyfile(onnx_path, private)
    cwd = os.getcwd()
    os.chdir(scratch)  # a worker process: changing its cwd touches nothing else
    try:
        model = onnx2tf.convert(
            input_onnx_file_path=str(private), output_folder_path=str(scratch / "out"), non_verbose=True,
            overwrite_input_shape=[f"{s.name}:{','.join(map(str, s.shape))}" for s in in_specs],
            keep_ncw_or_nchw_or_ncdhw_input_names=[s.name for s in in_specs if len(s.shape) in (3, 4, 5)],
            disable_model_save=True,
        )
    finally:
        os.chdir(cwd)
    shutil.rmtree(scratch, ignore_errors=True)
    layouts = getattr(model, "onnx_output_layouts", {}) or {}
    to_nchw = [bool(layouts.get(n)) for n in out_names]
    if any(to_nchw):
        record["notes"].append(f"outputs transposed back to channels-first: {[n for n, t in zip(out_names, to_nchw) if t]}")

    def forward(*args):
        ys = model(list(args) if len(args) > 1 else args[0])
        ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
        return [tf.transpose(y, [0, len(y.shape) - 1, *range(1, len(y.shape) - 1)]) if t else y for y, t in zip(ys, to_nchw)]

    sig = [tf.TensorSpec(s.shape, tf.as_dtype(s.dtype), name=s.name) for s in in_specs]
    fn = tf.function(forward).get_concrete_function(*sig)
    record["tf_vs_onnx_max_abs_diff"] = _check_tf(fn, onnx_path, in_specs)
    outputs = [ct.TensorType(name=t.name.split(":")[0], dtype=np.float32) for t in fn.outputs]
    ml = ct.convert([fn], source="tensorflow", inputs=ct_inputs, outputs=outputs, **kwargs)
    spec = ml.get_spec()
    got = [o.name for o in spec.description.output]
    if len(got) != len(out_names):
        raise StageError(f"the TensorFlow graph has {len(got)} outputs but the ONNX model has {len(out_names)}")
    for old, new in zip(got, out_names):
        if old != new:
            ct.utils.rename_feature(spec, old, new)
    return ct.models.MLModel(spec, weights_dir=ml.weights_dir, skip_model_load=True)


def _check_tf(fn, onnx_path: Path, in_specs) -> list[float]:
    """One seeded sample through the TensorFlow graph and ONNX Runtime: catches a bad first leg on Linux."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    feeds = {s.name: rng.random(s.shape).astype(s.dtype) for s in in_specs}
    ref = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = fn(*[feeds[s.name] for s in in_specs])
    got = got if isinstance(got, (list, tuple)) else [got]
    from ..validate.fidelity import max_abs_error

    diffs = [max_abs_error(r, g) for g, r in zip(got, ref)]
    if any(d > 1e-2 * max(1.0, float(np.max(np.abs(r)))) for d, r in zip(diffs, ref)):
        raise StageError(f"onnx2tf's TensorFlow graph differs from the ONNX model by {max(diffs):.3g} (before Core ML conversion)",
                         hint="use a PyTorch source (frontend: pytorch) or check the stage log for onnx2tf's warnings")
    return diffs


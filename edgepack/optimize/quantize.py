"""ONNX Runtime quantization: dynamic INT8, static INT8 (QDQ or QOperator) and FP16."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifact import Artifact
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError, StageError
from ..recipe import QuantizeMode, QuantizePass
from . import PassContext, count_ops


class _Reader:
    """CalibrationDataReader over the frozen calibration .npz (one sample per call)."""

    def __init__(self, npz: Path, input_names: list[str]):
        from ..data import read_npz, samples

        arrays, _ = read_npz(npz)
        self._it = iter(list(samples({k: arrays[k] for k in input_names})))

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - used by some ORT calibrators
        pass


class QuantizeStage(Stage):
    kind = "optimize.quantize"
    version = "1"
    isolated = False
    uses = ("model", "calibration")

    def __init__(self, cfg: QuantizePass, ctx: PassContext):
        self.cfg = cfg
        self.ctx = ctx

    def config(self) -> dict:
        return self.cfg.model_dump(mode="json", by_alias=True)

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx", "onnxruntime")

    def check_inputs(self, inputs):
        if self.cfg.mode is QuantizeMode.STATIC and "calibration" not in inputs:
            raise BadInputError(f"{self.ctx.where}: static quantization needs calibration data", hint="add data.calibration to the recipe")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        src: Artifact = inputs["model"]
        out = workdir / "model.onnx"
        record: dict = {"mode": self.cfg.mode.value, "preprocess": []}
        if _already_quantized(src.path) and self.cfg.mode is not QuantizeMode.FP16:
            shutil.copyfile(src.path, out)
            record["skipped"] = "the model is already quantized (it has QuantizeLinear/DequantizeLinear or integer ops)"
        elif self.cfg.mode is QuantizeMode.FP16:
            self._fp16(src.path, out, record)
        elif self.cfg.mode is QuantizeMode.DYNAMIC:
            self._dynamic(src.path, out, record)
        else:
            self._static(src.path, out, inputs["calibration"].path, workdir, record)
        record["size_before"] = src.size
        record["size_after"] = out.stat().st_size
        record["ops_after"] = count_ops(out)
        return StageResult({"model": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=dict(src.meta))}, record)

    # -- modes

    def _common(self):
        return dict(
            per_channel=self.cfg.per_channel,
            op_types_to_quantize=self.cfg.op_types,
            nodes_to_exclude=list(self.cfg.exclude_nodes),
        )

    def _dynamic(self, src: Path, out: Path, record: dict) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(out), weight_type=QuantType.QInt8, **self._common())

    def _static(self, src: Path, out: Path, calib: Path, workdir: Path, record: dict) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = workdir / "preprocessed.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            record["preprocess"].append("quant_pre_process: shape inference and graph optimization")
            model_in = pre
        except Exception as e:  # keep going without it, and say so
            record["preprocess"].append(f"quant_pre_process skipped: {e.__class__.__name__}: {str(e)[:200]}")
            model_in = src
        model_in = _ensure_opset(model_in, 13 if self.cfg.per_channel else 11, workdir, record)
        import onnx

        names = [i.name for i in onnx.load(str(model_in), load_external_data=False).graph.input]
        method = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[self.cfg.calibration]
        act = QuantType.QInt8 if self.cfg.symmetric_activations else QuantType.QUInt8
        try:
            quantize_static(
                str(model_in),
                str(out),
                _Reader(calib, names),
                quant_format=QuantFormat.QDQ if self.cfg.format == "qdq" else QuantFormat.QOperator,
                activation_type=act,
                weight_type=QuantType.QInt8,
                calibrate_method=method,
                extra_options={"ActivationSymmetric": self.cfg.symmetric_activations, "WeightSymmetric": True},
                **self._common(),
            )
        except Exception as e:
            raise StageError(f"static quantization failed: {e.__class__.__name__}: {str(e)[:300]}") from e
        pre.unlink(missing_ok=True)

    def _fp16(self, src: Path, out: Path, record: dict) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=self.cfg.keep_io_types)
        onnx.save(model, str(out))
        record["keep_io_types"] = self.cfg.keep_io_types


def _already_quantized(path: Path) -> bool:
    ops = count_ops(path)
    return any(op in ops for op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits"))


def _ensure_opset(path: Path, minimum: int, workdir: Path, record: dict) -> Path:
    import onnx
    from onnx import version_converter

    m = onnx.load(str(path))
    current = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current >= minimum:
        return path
    upgraded = version_converter.convert_version(m, minimum)
    out = workdir / "opset_upgraded.onnx"
    onnx.save(upgraded, str(out))
    record["preprocess"].append(f"opset upgraded {current} -> {minimum} (per-channel quantization needs >= 13)")
    return out

"""ONNX Runtime quantization: static INT8 (QDQ or QOperator), dynamic INT8, FP16, weight-only INT4.

With ``accuracy_aware`` the pass keeps the most sensitive nodes in float until the accuracy budget
is met on the validation set (edgepack/optimize/accuracy_aware.py). Every pass records its effect
(size, parameters, MACs, latency on this host, accuracy) before and after.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from ..artifact import Artifact
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError, EdgepackError, PassFailedError, StageError
from ..recipe import QuantizeMode, QuantizePass
from . import PassContext, count_ops
from .effect import budget_check, measure
from .share import quantized_share

QUANTIZED_OPS = (
    "QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
    "DynamicQuantizeLinear", "MatMulNBits",
)

# Dynamic INT8 default op types: ORT's IntegerOpsRegistry without Conv (no CPU ConvInteger kernel for int8 weights).
DYNAMIC_OPS = ["MatMul", "Attention", "LSTM", "Gather", "Transpose", "EmbedLayerNormalization"]


class QuantizeStage(Stage):
    kind = "optimize.quantize"
    version = "2"
    isolated = False
    process_global = True  # contextlib.chdir below: in a worker when stages run in parallel threads
    uses = ("model", "calibration", "validation", "tokens")  # tokens: a text-generation build's (validate/generation.py)

    def __init__(self, cfg: QuantizePass, ctx: PassContext):
        self.cfg = cfg
        self.ctx = ctx

    def config(self) -> dict:
        return {"pass": self.cfg.model_dump(mode="json", by_alias=True), "gates": _gates(self.ctx)}

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx", "onnxruntime")

    def check_inputs(self, inputs):
        if self.cfg.mode is QuantizeMode.STATIC and "calibration" not in inputs:
            raise BadInputError("static quantization needs calibration data", hint="add data.calibration to the recipe", where=self.ctx.where)
        if self.cfg.accuracy_aware is not None and "validation" not in inputs:
            raise BadInputError(f"{self.ctx.where}.accuracy_aware: needs validation data to measure accuracy", hint="add data.validation to the recipe")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        record: dict = {"mode": self.cfg.mode.value, "preprocess": []}
        try:  # in the stage's workdir: ONNX Runtime's quantization tools write temp files to the cwd
            with contextlib.chdir(workdir):  # (sym_shape_infer_temp.onnx, <uuid>.data), never into the user's folder
                return self._quantize(inputs, workdir, record)
        except BadInputError:
            raise
        except PassFailedError as e:  # e.g. the accuracy-aware search: its record is already in ``record``
            raise e.recast(PassFailedError, record={**record, **e.record}) from e
        except EdgepackError as e:
            raise e.recast(PassFailedError, record=record) from e
        except Exception as e:  # an ONNX Runtime error inside the quantizer or while measuring its output
            raise PassFailedError(f"{e.__class__.__name__}: {' '.join(str(e).split())[:300]}",
                                  hint="rerun with --verbose for the traceback", record=record, where=self.ctx.where) from e

    def _quantize(self, inputs: dict[str, Artifact], workdir: Path, record: dict) -> StageResult:
        src: Artifact = inputs["model"]
        out = workdir / "model.onnx"
        validation = inputs["validation"].path if "validation" in inputs else None
        if "calibration" in inputs and self.cfg.mode is QuantizeMode.STATIC:
            record["calibration_sha256"] = inputs["calibration"].digest
            record["calibration_samples"] = inputs["calibration"].meta.get("samples")
        specs, base = self.ctx.evaluate, self.ctx.recipe_dir
        before, reference = measure(src.path, validation, specs=specs, base_dir=base, model=self.ctx.model)
        if self.cfg.mode is not QuantizeMode.FP16 and any(op in count_ops(src.path) for op in QUANTIZED_OPS):
            shutil.copyfile(src.path, out)
            record["skipped"] = "the model is already quantized (it has QuantizeLinear/DequantizeLinear or integer ops)"
        elif self.cfg.mode is QuantizeMode.FP16:
            self._fp16(src.path, out, record)
        elif self.cfg.mode is QuantizeMode.INT4:
            self._int4(src.path, out, record, inputs)
        elif self.cfg.mode is QuantizeMode.DYNAMIC:
            self._dynamic(src.path, out, workdir, validation, reference, record)
        else:
            self._static(src.path, out, inputs["calibration"].path, workdir, validation, reference, record)
        after, _ = measure(out, validation, reference, specs=specs, base_dir=base, model=self.ctx.model)
        if "tokens" in inputs:  # a KV-cache decoder: the token metrics of this pass's output vs its input
            from .decoder_quant import token_effect

            token_effect(src.path, out, inputs["tokens"].path, specs, before, after)
        record["before"], record["after"] = before, after
        record["size_before"], record["size_after"] = before["size_bytes"], after["size_bytes"]
        record["ops_after"] = count_ops(out)
        record["quantized"] = quantized_share(src.path, out).to_json()  # typed: share.QuantizedShare
        try:
            record["accuracy_budget"] = budget_check(before, after, self.ctx.gates, self.ctx.where)
        except StageError as e:
            if self.cfg.mode is not QuantizeMode.INT4:
                raise
            raise e.recast(StageError, hint="int4 is weight-only and has no accuracy_aware search: try bits: 8, algorithm: gptq, "
                                            "a smaller block_size, or waive the gate") from e
        for p in workdir.glob("*.onnx"):
            if p != out:
                p.unlink()
        meta = {k: v for k, v in src.meta.items() if k != "torch"}
        meta["passes"] = [*src.meta.get("passes", []), f"quantize:{self.cfg.mode.value}"]
        return StageResult({"model": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)

    # -- modes

    def _static(self, src: Path, out: Path, calib: Path, workdir: Path, validation, reference, record: dict) -> None:
        from . import ort_static

        c = self.cfg
        min_opset = 13 if c.per_channel else 11
        pre = ort_static.preprocess(src, workdir, record, min_opset, "per-channel quantization needs opset >= 13" if c.per_channel else "QDQ needs opset >= 11")
        try:
            ranges = ort_static.calibrate(pre, calib, c.calibration, c.op_types, workdir, self.ctx.model, self.ctx.recipe_dir)
        except Exception as e:
            raise StageError(f"calibration failed: {e.__class__.__name__}: {str(e)[:300]}", where=self.ctx.where) from e
        record["calibration_method"] = c.calibration

        opts: dict[str, Any] = dict(qformat=c.format, per_channel=c.per_channel, symmetric_activations=c.symmetric_activations,
                                    symmetric_weights=c.symmetric_weights, op_types=c.op_types, include=c.nodes)
        reused: list = []  # the search's trials: one ReusedQuantizer (quant_reuse.py), made by the first (serial) call

        def quantize(exclude: list[str], dest: Path) -> None:
            try:
                if c.accuracy_aware is not None and _speed().reuse and _reuse_supported():
                    if not reused:
                        from .quant_reuse import ReusedQuantizer

                        reused.append(ReusedQuantizer(pre, ranges, exclude=list(c.exclude_nodes), **opts))
                    reused[0].quantize(exclude, dest)
                else:
                    ort_static.quantize_with_ranges(pre, dest, ranges, exclude=[*c.exclude_nodes, *exclude], **opts)
            except Exception as e:
                hint = None
                if c.format == "qoperator" and c.per_channel:
                    hint = "ONNX Runtime 1.23's QOperator per-channel path fails re-quantizing Gemm weights for the bias scale: use format: qdq, or per_channel: false"
                raise StageError(f"static quantization failed: {e.__class__.__name__}: {str(e)[:300]}", hint=hint, where=self.ctx.where) from e

        self._run(quantize, pre, out, workdir, validation, reference, record)

    def _dynamic(self, src: Path, out: Path, workdir: Path, validation, reference, record: dict) -> None:
        from . import ort_static

        ort_static.without_torch()
        from onnxruntime.quantization import QuantType, quantize_dynamic

        c = self.cfg
        if c.op_types and "Conv" in c.op_types:
            raise BadInputError(
                f"{self.ctx.where}.op_types: dynamic quantization of Conv gives ConvInteger, which ONNX Runtime's CPU provider cannot run with int8 weights",
                hint="drop Conv from op_types, or use mode: static",
            )
        op_types = list(c.op_types) if c.op_types else DYNAMIC_OPS
        if not c.op_types:
            record["op_types"] = DYNAMIC_OPS
            record["kept_float"] = "Conv: ONNX Runtime's CPU provider has no ConvInteger kernel for int8 weights (use mode: static for CNNs)"
        model_in = ort_static.constants_to_initializers(src, workdir / "constants_folded.onnx", record)
        if c.per_channel:
            model_in = ort_static.ensure_opset(model_in, 13, workdir, record, "per-channel quantization needs opset >= 13")

        def quantize(exclude: list[str], dest: Path) -> None:
            try:
                quantize_dynamic(
                    str(model_in), str(dest), weight_type=QuantType.QInt8, per_channel=c.per_channel, op_types_to_quantize=op_types,
                    nodes_to_quantize=c.nodes, nodes_to_exclude=[*c.exclude_nodes, *exclude],
                    extra_options={"WeightSymmetric": c.symmetric_weights},
                )
            except Exception as e:
                raise StageError(f"dynamic quantization failed: {e.__class__.__name__}: {str(e)[:300]}", where=self.ctx.where) from e

        self._run(quantize, model_in, out, workdir, validation, reference, record)

    def _run(self, quantize, model_in: Path, out: Path, workdir: Path, validation, reference, record: dict) -> None:
        c = self.cfg
        if c.accuracy_aware is None:
            quantize([], out)
            return
        from . import ort_static
        from .accuracy_aware import search

        fmt = c.format if c.mode is QuantizeMode.STATIC else "qoperator"
        types = c.op_types or (DYNAMIC_OPS if c.mode is QuantizeMode.DYNAMIC else None)
        candidates = ort_static.candidate_nodes(model_in, types, fmt, c.nodes, c.exclude_nodes)
        try:
            record["accuracy_aware"] = search(quantize, candidates, model_in, validation, reference, c.accuracy_aware, out, workdir, self.ctx.where,
                                              self.ctx.evaluate, self.ctx.recipe_dir, self.ctx.model, _speed())
        except PassFailedError as e:
            record["accuracy_aware"] = e.record  # sensitivities and steps, kept in the report
            raise

    def _int4(self, src: Path, out: Path, record: dict, inputs: dict) -> None:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        from .decoder_quant import algo_config

        c = self.cfg
        m = onnx.load(str(src))
        inits = {i.name for i in m.graph.initializer}
        matmuls = [n.name for n in m.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits]
        record.update(block_size=c.block_size, symmetric=c.symmetric_weights, accuracy_level=c.accuracy_level, algorithm=c.algorithm, bits=c.bits)
        if not matmuls:
            shutil.copyfile(src, out)
            record["skipped"] = "no MatMul with constant weights: weight-only INT4 (MatMulNBits) applies to MatMul only (Gemm/Conv stay float)"
            return
        q = MatMulNBitsQuantizer(
            m, block_size=c.block_size, is_symmetric=c.symmetric_weights, accuracy_level=c.accuracy_level,
            nodes_to_exclude=list(c.exclude_nodes), nodes_to_include=c.nodes, op_types_to_quantize=("MatMul",),
            algo_config=algo_config(c, src, inputs, self.ctx, record),
        )
        try:
            q.process()
        except Exception as e:
            raise StageError(f"INT4 weight-only quantization failed: {e.__class__.__name__}: {str(e)[:300]}", where=self.ctx.where) from e
        q.model.save_model_to_file(str(out), False)
        done = sum(1 for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits")
        record["matmul_nbits"] = done
        if done < len(matmuls):
            record["kept_float"] = f"{len(matmuls) - done} of {len(matmuls)} MatMul(s) left in float (excluded, or K not a multiple the quantizer accepts)"

    def _fp16(self, src: Path, out: Path, record: dict) -> None:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=self.cfg.keep_io_types, node_block_list=list(self.cfg.exclude_nodes) or None)
        onnx.save(model, str(out))
        record["keep_io_types"] = self.cfg.keep_io_types


def _reuse_supported() -> bool:
    from .quant_reuse import supported

    return supported()


def _speed():
    from . import accuracy_aware

    return accuracy_aware.SPEED


def _gates(ctx) -> dict | None:
    """What of the gates and `evaluate:` the pass's result depends on (its cache key)."""
    g = getattr(ctx, "gates", None)
    if g is None:
        return None
    metrics = {k: v.model_dump(mode="json") for k, v in (getattr(g, "metrics", None) or {}).items()}
    return {"max_accuracy_drop": g.max_accuracy_drop, "waived": "max_accuracy_drop" in g.waive, "metrics": metrics,
            "waive": sorted(w for w in g.waive if w.startswith("metrics.")),
            "evaluate": [m.model_dump(mode="json") for m in getattr(ctx, "evaluate", ())]}

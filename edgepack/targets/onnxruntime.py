"""ONNX Runtime target: the optimized ONNX model, checked to load in an InferenceSession."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import StageError
from . import TargetStage


class OnnxRuntimeTarget(TargetStage):
    kind = "compile.onnxruntime"
    version = "1"
    runtime = "onnxruntime"

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnxruntime")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        import onnxruntime as ort

        src = inputs["model"]
        out = workdir / "model.onnx"
        shutil.copyfile(src.path, out)
        try:
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise StageError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from e
        record = {"providers": sess.get_providers()}
        meta = {"runtime": self.runtime, "precision": self.target.precision or _precision(out)}
        return StageResult({"artifact": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)


def _precision(path: Path) -> str:
    from ..optimize import count_ops

    ops = count_ops(path)
    if "QuantizeLinear" in ops or "QLinearConv" in ops or "MatMulNBits" in ops:
        return "int8-static" if "QuantizeLinear" in ops or "QLinearConv" in ops else "int4-weight"
    if "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops:
        return "int8-dynamic"
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer):
        return "fp16"
    return "fp32"

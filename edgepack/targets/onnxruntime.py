"""ONNX Runtime target: the optimized ONNX model, checked to load in an InferenceSession."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import StageError
from ..recipe_targets import OnnxRuntimeOptions
from . import TargetStage


class OnnxRuntimeTarget(TargetStage):
    kind = "compile.onnxruntime"
    version = "1"
    runtime = "onnxruntime"

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        if getattr(getattr(ctx.model, "task", None), "value", None) == "text-generation":
            self.uses = ("model", "source")  # the Hugging Face folder: config.json and tokenizer files of the genai layout

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnxruntime")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        import onnxruntime as ort

        src = inputs["model"]
        if "source" in inputs:
            return self._genai(src, inputs["source"], workdir)
        opts = self.target.options
        assert isinstance(opts, OnnxRuntimeOptions)  # the recipe's OnnxRuntimeSpec
        ort_format = opts.ort_format
        folder = workdir / "onnxruntime" if ort_format else workdir
        folder.mkdir(exist_ok=True)
        out = folder / "model.onnx"
        shutil.copyfile(src.path, out)
        try:
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise StageError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from e
        record = {"providers": sess.get_providers()}
        meta = {"runtime": self.runtime, "precision": self.target.precision or _precision(out), "runner": self.contract(out)}
        if not ort_format:
            return StageResult({"artifact": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)
        record["ort_format"] = _to_ort(out, opts.ort_optimization)
        meta["runner"] = self.contract(out, options={"model_file": "model.ort"})  # devices validate the .ort file that ships to mobile
        return StageResult({"artifact": Artifact(folder, "onnx+ort", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)


    def _genai(self, src: Artifact, source: Artifact, workdir: Path) -> StageResult:
        """A text-generation model: ONNX Runtime GenAI's folder (model.onnx, genai_config.json, tokenizer files)."""
        import json

        import onnxruntime as ort

        from ..ingest.hf import tokenizer_files
        from ..ingest.hf_decoder import dims, genai_config, write_json

        opts = self.target.options
        assert isinstance(opts, OnnxRuntimeOptions)  # the recipe's OnnxRuntimeSpec
        if opts.ort_format:
            raise StageError("ort_format: text-generation models ship as ONNX (ONNX Runtime GenAI loads model.onnx)",
                             hint="remove options.ort_format", where=self.ctx.where)
        folder = workdir / "genai"
        folder.mkdir(exist_ok=True)
        shutil.copyfile(src.path, folder / "model.onnx")
        cfg = json.loads((Path(source.path) / "config.json").read_text())
        from types import SimpleNamespace

        write_json(folder / "genai_config.json", genai_config(dims(SimpleNamespace(**cfg))))
        for f in tokenizer_files(Path(source.path)):
            shutil.copyfile(f, folder / f.name)
        try:
            sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise StageError(f"ONNX Runtime cannot load the model: {str(e).splitlines()[0][:300]}") from e
        meta = {"runtime": self.runtime, "precision": self.target.precision or _precision(folder / "model.onnx"), "layout": "onnxruntime-genai"}
        record = {"providers": sess.get_providers(), "layout": "onnxruntime-genai", "files": sorted(p.name for p in folder.iterdir())}
        return StageResult({"artifact": Artifact(folder, "genai", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)


_STDOUT_LOCK = threading.Lock()


def _to_ort(onnx_path: Path, style: str) -> dict:
    """model.ort (+ model.required_operators.config for minimal builds) beside model.onnx, with
    onnxruntime's own converter (onnxruntime.tools.convert_onnx_models_to_ort)."""
    import contextlib
    import io

    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    folder = onnx_path.parent
    scratch = folder / "_ort"
    log = io.StringIO()
    try:  # redirect_stdout swaps sys.stdout for the whole process: one at a time, or two overlapping
        with _STDOUT_LOCK, contextlib.redirect_stdout(log):  # threads (parallel compiles) leave it swapped
            convert_onnx_models_to_ort(onnx_path, scratch, optimization_styles=[OptimizationStyle[style.capitalize()]])
    except Exception as e:
        raise StageError(f"onnxruntime could not convert the model to the .ort format: {e.__class__.__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}",
                         hint="set ort_format: false, or check the model loads in onnxruntime") from e
    suffix = "" if style == "fixed" else ".with_runtime_opt"
    ort_file = scratch / f"model{suffix}.ort"
    if not ort_file.exists():
        raise StageError(f"onnxruntime's converter wrote no .ort file: {log.getvalue().strip().splitlines()[-1:] or ['no output']}")
    ort_file.replace(folder / "model.ort")
    config = next(iter(sorted(scratch.glob("*.required_operators*.config"))), None)
    ops = []
    if config is not None:  # drop the converter's comment lines: they hold this host's absolute paths
        ops = [ln for ln in config.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        (folder / "model.required_operators.config").write_text("\n".join(ops) + "\n")
    shutil.rmtree(scratch)
    import onnxruntime as ort

    ort.InferenceSession(str(folder / "model.ort"), providers=["CPUExecutionProvider"])  # it loads
    return {"file": "model.ort", "optimization_style": style, "required_operators": ops,
            "size_bytes": (folder / "model.ort").stat().st_size}


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

"""Browser target: the ONNX model (optionally also .ort) for onnxruntime-web, with the runner page.

The target folder holds model.onnx (+ model.ort), index.html + runner.js (edgepack/devices/web/: the page
the chromium device validates, a demo on zeros when opened by hand) and webjob.json (which model file,
backend and input shapes the page uses). onnxruntime-web itself is not shipped: the page loads it from
./ort/ or ``?ort=URL/`` (docs/recipe.md, "web").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import StageError
from ..recipe_targets import WebOptions
from . import TargetStage

PAGE = Path(__file__).resolve().parents[1] / "devices" / "web"


class WebTarget(TargetStage):
    kind = "compile.web"
    version = "1"
    runtime = "onnxruntime-web"

    def toolchain(self) -> dict[str, str]:
        from ..devices.browser import ORT_WEB_VERSION

        return {**package_versions("onnxruntime"), "onnxruntime-web": ORT_WEB_VERSION}

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        import onnxruntime as ort

        from .onnxruntime import _precision, _to_ort

        src = inputs["model"]
        opts = self.target.options
        assert isinstance(opts, WebOptions)  # the recipe's WebSpec
        folder = workdir / "web"
        folder.mkdir(exist_ok=True)
        out = folder / "model.onnx"
        shutil.copyfile(src.path, out)
        try:  # the same kernels compiled to WASM: a model onnxruntime cannot load, the page cannot either
            sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise StageError(f"onnxruntime cannot load the model: {str(e).splitlines()[0][:300]}") from e
        record: dict = {"execution_provider": opts.execution_provider}
        model_file = "model.onnx"
        if opts.ort_format:
            record["ort_format"] = _to_ort(out, "fixed")
            model_file = "model.ort"
        for name in ("index.html", "runner.js"):
            shutil.copyfile(PAGE / name, folder / name)
        inputs_desc = [{"name": i.name, "shape": [d if isinstance(d, int) else 1 for d in (i.shape or [])], "dtype": _dtype(i.type)}
                       for i in sess.get_inputs()]
        (folder / "webjob.json").write_text(json.dumps({"model": model_file, "execution_provider": opts.execution_provider,
                                                        "inputs": inputs_desc, "protocol": {"runs": 20}}, indent=1) + "\n")
        options = {"model_file": model_file, "execution_provider": opts.execution_provider}
        meta = {"runtime": self.runtime, "precision": self.target.precision or _precision(out),
                "runner": self.contract(out, options=options)}
        return StageResult({"artifact": Artifact(folder, "web", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)


def _dtype(ort_type: str) -> str:
    """'tensor(float)' -> 'float32' (onnxruntime-web's tensor type names)."""
    t = ort_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(t, t)

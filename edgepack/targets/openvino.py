"""OpenVINO IR target: ``openvino.convert_model`` + ``save_model``, INT8 through NNCF, in an isolated worker.

Precisions: fp32, fp16 (weights compressed to float16 in the .bin; the CPU plugin still computes
at the pinned inference precision), int8 (NNCF post-training quantization on the recipe's
calibration data). The artifact is a folder holding model.xml + model.bin. Validation pins the CPU
plugin's INFERENCE_PRECISION_HINT (``options.inference_precision``, default f32: the plugin's own
default is bf16 on CPUs with bf16/AMX) and records the value the plugin reports.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import numpy as np

from ..artifact import Artifact, TensorSpec
from ..engine import StageResult
from ..errors import StageError, require_backend
from . import TargetStage
from .common import (
    check_precision,
    check_self_quantizing,
    compare,
    first_sample,
    model_io_and_calibration,
    onnx_reference,
    quantized_ops,
)

PRECISIONS = ("fp32", "fp16", "int8")


# Lines of OpenVINO's conversion report that say where, not what ("Check 'false' failed at
# src/frontends/.../unconverted_ops_report.cpp:151:"); the cause is on the lines after them.
_NOISE = re.compile(r"^(Check '.*' failed at |Exception from src/|FrontEnd API failed with|Model wasn't fully converted|Summary:?$)")


@contextlib.contextmanager
def nncf_on_openvino():
    """``with nncf_on_openvino() as nncf:`` NNCF for an OpenVINO model, with torch hidden (when it is not loaded yet).

    NNCF imports torch whenever it is installed (its torch tensor backend at import, and ``get_backend``'s
    torch check on every call), although an OpenVINO model needs none of it: that was ~5 s of CPU of the
    worker's ~7 s on a tiny decoder. The openvino toolchain environment has no torch, so NNCF without it is
    the managed configuration. ``sys.modules["torch"] = None`` makes ``import torch`` raise ImportError
    (Python's documented way); the entry is removed afterwards. The compile stage runs in its own worker."""
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None
    try:
        import nncf

        yield nncf
    finally:
        if hide and "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def conversion_error(e: Exception, onnx_path: Path) -> StageError:
    """One line from an ``openvino.convert_model`` failure: the report's cause lines, and the ONNX nodes
    (name and op type) of the ops it names."""
    lines = [ln.strip(" -") for ln in str(e).splitlines() if ln.strip()]
    cause = [ln for ln in lines if not _NOISE.match(ln)] or lines[:1]
    text = "; ".join(cause)[:400]
    nodes = _nodes_named_in(text, onnx_path)
    where = f" at {', '.join(nodes[:5])}{' ...' if len(nodes) > 5 else ''}" if nodes else ""
    hint = "replace these ops in the model, or leave this target out for it" if nodes else "--verbose shows OpenVINO's whole message"
    return StageError(f"openvino.convert_model cannot convert the model{where}: {text or e.__class__.__name__}", hint=hint)


def _nodes_named_in(text: str, onnx_path: Path) -> list[str]:
    """ONNX nodes whose op type (``domain.Op`` or ``Op``) appears as a word in ``text``: "node 'n' (Op)"."""
    import onnx

    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception:
        return []
    words = set(re.findall(r"[\w.]+", text))
    found = []
    for i, n in enumerate(graph.node):
        qualified = f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        if qualified in words or (n.domain in ("", "ai.onnx") and f"ai.onnx.{n.op_type}" in words):
            found.append(f"node '{n.name or f'#{i}'}' ({qualified})")
    return found


class OpenVINOTarget(TargetStage):
    kind = "compile.openvino"
    version = "1"
    runtime = "openvino"
    extra = "openvino"
    isolated = True
    toolchain_env = "openvino"
    timeout = 900.0

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.decoder = getattr(getattr(ctx.model, "task", None), "value", None) == "text-generation"
        if self.decoder:  # weight compression of the KV-cache decoder (targets/openvino_decoder.py)
            from .openvino_decoder import DECODER_PRECISIONS

            method = self.weight_compression = target.options.weight_compression
            # awq calibrates on the build's tokens (generation.calibration); rtn's key stays without them
            self.uses = ("model", "source", "tokens") if method is not None and method.algorithm == "awq" else ("model", "source")
        self.precision = check_precision(ctx.where, target.precision, DECODER_PRECISIONS if self.decoder else PRECISIONS, "fp32",
                                         "a precision of this target" if self.decoder else "a precision of this target (int4: text-generation models only)")
        self.opts = target.options.model_dump()  # recipe_targets.OpenVINOOptions, validated at load
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def toolchain(self) -> dict[str, str]:
        from .. import toolchains

        if self.decoder:  # openvino-genai's folder: the tokenizer IR, NNCF weight compression
            return toolchains.versions("openvino", "openvino", "onnx", "nncf", "openvino-tokenizers", "transformers", "tokenizers")
        return toolchains.versions("openvino", "openvino", "onnx", *(("nncf",) if self.precision == "int8" else ()))

    def check_inputs(self, inputs):
        if self.precision == "int8" and not self.decoder:
            check_self_quantizing(self.ctx.where, inputs, "NNCF post-training quantization")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        require_backend("openvino", "openvino")
        import openvino as ov

        if self.decoder:
            from .openvino_decoder import compile_decoder

            return compile_decoder(self, inputs["model"], inputs["source"], workdir, inputs.get("tokens"))
        src, ins, outs, arrays, sources = model_io_and_calibration(inputs, self.ctx.model.inputs)
        record: dict = {"precision": self.precision, "converter": "openvino.convert_model", "notes": []}
        if quantized_ops(src.path):
            record["notes"].append(f"input model has quantized ops {quantized_ops(src.path)}: OpenVINO keeps them as FakeQuantize (int8 compute)")
        try:
            model = ov.convert_model(str(src.path))
        except Exception as e:
            raise conversion_error(e, src.path) from e
        if self.precision == "int8":
            model = self._quantize(model, ins, sources, arrays, record)
        out = workdir / "openvino"
        tmp = workdir / "openvino.tmp"
        tmp.mkdir()
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=self.precision == "fp16")
        tmp.rename(out)
        record["compress_to_fp16"] = self.precision == "fp16"
        record["ops"] = _op_histogram(ov.Core().read_model(str(out / "model.xml")))
        if self.precision == "int8" and not record["ops"].get("FakeQuantize"):
            record["notes"].append("NNCF inserted no FakeQuantize: the model stays float")

        check = self._sample_check(out / "model.xml", src.path, ins, sources, arrays)
        record["sample_check"] = check
        specs_in = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"], _layout(self.ctx.model, src_name)) for s, src_name in zip(ins, sources)]
        specs_out = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in outs]
        meta = {
            "runtime": self.runtime,
            "precision": self.precision,
            "runner": self.contract(src.path, options={"inference_precision": self.opts["inference_precision"], "device": self.opts["device"]}),
            "files": sorted(p.name for p in out.iterdir()),
        }
        if not record["notes"]:
            del record["notes"]
        return StageResult({"artifact": Artifact(out, "openvino-ir", inputs=specs_in, outputs=specs_out, meta=meta)}, record)

    def _quantize(self, model, ins, sources, arrays, record):
        require_backend("nncf", "openvino")
        from ..data import model_samples

        samples = model_samples(self.ctx.model, arrays, self.ctx.recipe_dir)  # fed as the runner feeds them
        n = len(samples)
        items = [{s["name"]: np.require(f[src].astype(s["dtype"]), requirements="C") for s, src in zip(ins, sources)} for f in samples]
        subset = min(self.opts["subset_size"], n)
        with nncf_on_openvino() as nncf:
            try:
                q = nncf.quantize(
                    model,
                    nncf.Dataset(items),
                    preset=nncf.QuantizationPreset.PERFORMANCE if self.opts["preset"] == "performance" else nncf.QuantizationPreset.MIXED,
                    subset_size=subset,
                    fast_bias_correction=self.opts["fast_bias_correction"],
                )
            except Exception as e:
                raise StageError(f"NNCF quantization failed: {e.__class__.__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                                 hint="see the stage log") from e
        record["nncf"] = {"samples": subset, "calibration_samples": n, "preset": self.opts["preset"],
                          "fast_bias_correction": self.opts["fast_bias_correction"]}
        if subset < n:
            record["notes"].append(f"NNCF used {subset} of {n} calibration samples (options.subset_size)")
        return q

    def _sample_check(self, xml: Path, onnx_path: Path, ins, sources, arrays) -> dict:
        import openvino as ov

        feeds = first_sample(self.ctx.model, self.ctx.recipe_dir, ins, sources, arrays)
        reference = onnx_reference(onnx_path, [s["name"] for s in ins], feeds)
        cm = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": self.opts["inference_precision"]})
        req = cm.create_infer_request()
        req.infer({s["name"]: a for s, a in zip(ins, feeds)})
        got = [req.get_output_tensor(k).data.copy() for k in range(len(cm.outputs))]
        return {"vs": "ONNX Runtime, 1 sample", "inference_precision": _type_name(cm.get_property("INFERENCE_PRECISION_HINT")),
                "outputs": compare(reference, got)}


def _type_name(value) -> str:
    """'f32' for an openvino Type (its str() is "<Type: 'float32'>")."""
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _op_histogram(model) -> dict[str, int]:
    hist: dict[str, int] = {}
    for op in model.get_ordered_ops():
        t = op.get_type_name()
        hist[t] = hist.get(t, 0) + 1
    return dict(sorted(hist.items()))


def _layout(model_section, name: str) -> str | None:
    for i in getattr(model_section, "inputs", []):
        if i.name == name:
            return i.layout
    return None

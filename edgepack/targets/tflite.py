"""TFLite / LiteRT target: ONNX -> TensorFlow SavedModel (onnx2tf) -> .tflite (TFLite converter), in isolated workers.

Precisions: fp32, fp16 (float16 weights, float I/O), int8-dynamic (dynamic-range: int8 weights,
float activations), int8 (full-integer, calibrated on the recipe's calibration data; I/O int8 by
default, ``options.io_dtype`` uint8 or float32).

The onnx2tf conversion is its own cached stage (edgepack/targets/tf_convert.py, ``prerequisites``):
one SavedModel per (model, calibration data, keep_nchw, input specs, toolchain) serves every TFLite
precision of a build, and each compile stage converts only its own variant from it. onnx2tf makes
3-D/4-D/5-D inputs channels-last (NCHW -> NHWC) unless ``options.keep_nchw``, or the input is a
model.state input or is batched on an axis other than 0 (those keep their layout); the artifact's
runner contract (``meta.runner``, edgepack/contract.py) carries the transpose for every runner and
the manifest records it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..artifact import Artifact
from ..engine import Stage, StageResult
from ..errors import BadInputError, StageError, require_backend
from ..progress_hooks import report
from . import TargetStage
from .common import check_precision, check_self_quantizing, model_io_and_calibration
from .tf_convert import SIGNATURE, SavedModelStage, _cause, convert, odd_inputs, prepare, tf_layout, toolchain

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")


class TFLiteTarget(TargetStage):
    kind = "compile.tflite"
    version = "4"  # 3: meta.runner is the RunnerContract; 4: converts its variant from the shared SavedModel
    runtime = "tflite"
    extra = "tflite"
    isolated = True
    toolchain_env = "tflite"
    timeout = 900.0
    uses = ("model", "calibration", "saved_model")

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.precision = check_precision(ctx.where, target.precision, PRECISIONS, "fp32")
        self.opts = target.options.model_dump()  # recipe_targets.TFLiteOptions, validated at load (io_dtype: int8 only)
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def toolchain(self) -> dict[str, str]:
        return toolchain()

    def check_inputs(self, inputs):
        if self.precision == "int8":
            check_self_quantizing(self.ctx.where, inputs, "full-integer",
                                  no_data_hint="add data.calibration to the recipe, or use precision int8-dynamic")
            odd = odd_inputs(self.ctx.model, [i.name for i in self.ctx.model.inputs])
            if odd:
                raise BadInputError(f"{self.ctx.where}.precision: int8 (full-integer) TFLite needs calibration data for every input, "
                                    f"and inputs {odd} are constants, states or have their batch on another axis",
                                    hint="use precision int8-dynamic or fp16 for this model")

    def prerequisites(self) -> dict[str, Stage]:
        """The ONNX -> SavedModel conversion, shared by every TFLite precision of the model (same cache key)."""
        return {"saved_model": SavedModelStage(self.ctx.where, self.ctx.model, self.ctx.recipe_dir, self.opts["keep_nchw"], self.opts["timeout_s"])}

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        require_backend("tensorflow", "tflite")
        src, ins, outs, arrays, sources = model_io_and_calibration(inputs, self.ctx.model.inputs)
        saved = inputs.get("saved_model")
        if saved is None:  # called alone (no build plan ran the shared stage): convert here, in this worker
            saved, _ = convert(inputs, self.ctx.model, self.ctx.recipe_dir, self.opts["keep_nchw"], self.ctx.where, workdir / "_tf")
            shared = False
        else:
            shared = True
        m = saved.meta
        shapes, perms = m["shapes"], m["perms"]
        _, _, first_feeds, arrays = prepare(self.ctx.model, self.ctx.recipe_dir, self.opts["keep_nchw"], self.ctx.where,
                                            ins, sources, arrays, {"notes": []})  # the conversion recorded its notes
        record: dict = {"precision": self.precision, "converter": "onnx2tf", "notes": list(m["notes"]),
                        "calibration": m["calibration"], "onnx2tf_args": m["onnx2tf_args"],
                        "saved_model": {"digest": saved.digest, "shared_stage": shared}}
        wanted = f"{m['onnx_stem']}_{self._variant()}.tflite"  # onnx2tf's own name for this variant
        out = workdir / "model.tflite"
        report("tflite", 0, 1, phase=f"TFLite converter ({self.precision})")
        record["tflite_converter"] = self._convert_variant(saved.path, m["tf_inputs"], ins, sources, arrays, perms, out)
        report("tflite", 1, 1, phase="converted")
        record["onnx2tf_produced"] = [wanted]  # only the requested variant is converted
        record["onnx2tf_file"] = wanted
        if not shared:
            shutil.rmtree(workdir / "_tf")  # the SavedModel: not part of the artifact

        from .tflite_io import describe

        specs_in, specs_out, mapping, meta, check = describe(out, src.path, ins, outs, sources, shapes, perms, first_feeds)
        record.update(check)
        if check.get("select_tf_ops"):
            record["notes"].append(f"the model keeps TensorFlow ops TFLite has no builtin for ({', '.join(check['select_tf_ops'])}): "
                                   "it runs only where the Flex delegate (select TF ops) is linked; LiteRT's Python runtime is not")
        kinds = record["tensor_dtypes"]
        if self.precision == "int8-dynamic" and "int8" not in kinds:
            record["notes"].append("no int8 tensors: TFLite's dynamic-range quantization skips weights below its size threshold (1024 elements); the model stays float")
        if self.precision == "fp16" and "float16" not in kinds:
            record["notes"].append("no float16 tensors in the model: weights stayed float32")
        meta.update(runtime=self.runtime, precision=self.precision, runner=self.contract(src.path, **mapping, options={"xnnpack": self.opts["xnnpack"]}))
        if not record["notes"]:
            del record["notes"]
        return StageResult({"artifact": Artifact(out, "tflite", inputs=specs_in, outputs=specs_out, meta=meta)}, record)

    # -- steps

    def _variant(self) -> str:
        if self.precision == "int8":
            return "integer_quant" if self.opts["io_dtype"] == "float32" else "full_integer_quant"
        return {"fp32": "float32", "fp16": "float16", "int8-dynamic": "dynamic_range_quant"}[self.precision]

    def _convert_variant(self, saved_model: Path, tf_inputs, ins, sources, arrays, perms, out: Path) -> dict:
        """This target's variant only, with the converter settings onnx2tf 1.29 uses for it."""
        import tensorflow as tf

        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
        converter.unfold_batchmatmul = False  # onnx2tf's default (no -ebu)
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        settings: dict = {"from": "saved_model", "variant": self._variant()}
        if self.precision != "fp32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if self.precision in ("int8-dynamic", "int8"):
            converter._experimental_disable_per_channel = self.opts["quant_type"] != "per-channel"
            settings["per_channel"] = self.opts["quant_type"] == "per-channel"
        if self.precision == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if self.precision == "int8":
            ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
            converter.representative_dataset = _representative(tf_inputs, ins, sources, arrays, perms)
            io = {"int8": tf.int8, "uint8": tf.uint8, "float32": tf.float32}[self.opts["io_dtype"] or "int8"]
            if io is not tf.float32:  # onnx2tf's integer_quant (float I/O) leaves the inference types alone
                converter.inference_input_type = converter.inference_output_type = io
            settings["io_dtype"] = self.opts["io_dtype"] or "int8"
            settings["representative_samples"] = len(next(iter(arrays.values())))
        converter.target_spec.supported_ops = ops
        try:
            out.write_bytes(converter.convert())
        except Exception as e:
            raise StageError(f"the TFLite converter failed on the {self._variant()} variant: {_cause(e)}",
                             hint="see the stage log; a variant that fails alone can be left out of the recipe") from e
        return settings


def _representative(tf_inputs: list[str], ins, sources, arrays, perms):
    """The recipe's calibration data, one sample at a time in TF layout, keyed by the SavedModel's input
    names (onnx2tf's -cind data with mean 0, std 1: already normalized)."""
    by_norm = {re.sub(r"[^0-9a-z]", "", n.lower()): n for n in tf_inputs}
    keys = []
    for k, spec in enumerate(ins):
        name = by_norm.get(re.sub(r"[^0-9a-z]", "", spec["name"].lower()))
        keys.append(name if name is not None else tf_inputs[k])
    data = tf_layout(ins, sources, arrays, perms)

    def gen():
        for i in range(len(data[0])):
            yield {key: a[i:i + 1] for key, a in zip(keys, data)}

    return gen


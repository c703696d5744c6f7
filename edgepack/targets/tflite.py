"""TFLite / LiteRT target: ONNX -> TensorFlow -> .tflite with onnx2tf, in an isolated worker.

Precisions: fp32, fp16 (float16 weights, float I/O), int8-dynamic (dynamic-range: int8 weights,
float activations), int8 (full-integer, calibrated on the recipe's calibration data; I/O int8 by
default, ``options.io_dtype`` uint8 or float32). onnx2tf never gets to download its MS-COCO sample
images: calibration data always comes from the recipe (see ``_offline_stand_in``).

onnx2tf makes 3-D/4-D/5-D inputs channels-last (NCHW -> NHWC) unless ``options.keep_nchw``, or the
input is a model.state input or is batched on an axis other than 0 (those keep their layout); the
artifact's runner contract (``meta.runner``, edgepack/contract.py) carries the transpose for every runner and the manifest records it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import StageResult, package_versions
from ..errors import BadInputError, StageError, require_backend
from . import TargetStage
from .common import check_options, check_precision, check_self_quantizing, first_sample, model_io_and_calibration, quantized_ops

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8")
OPTIONS = {
    "io_dtype": (["int8", "uint8", "float32", None], None),  # int8 precision only; default int8
    "quant_type": (["per-channel", "per-tensor"], "per-channel"),
    "keep_nchw": (bool, False),
    "xnnpack": (bool, True),
    "timeout_s": ((int, float), None),
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf's download name


def channels_last(rank: int) -> list[int] | None:
    return [0, *range(2, rank), 1] if 3 <= rank <= 5 else None


class TFLiteTarget(TargetStage):
    kind = "compile.tflite"
    version = "3"  # 3: meta.runner is the RunnerContract (batch axes, constants, state; int inputs keep their dtype)
    runtime = "tflite"
    extra = "tflite"
    isolated = True
    timeout = 900.0

    def __init__(self, target, ctx):
        super().__init__(target, ctx)
        self.precision = check_precision(ctx.where, target.precision, PRECISIONS, "fp32")
        self.opts = check_options(ctx.where, target.options, OPTIONS)
        if self.opts["io_dtype"] is not None and self.precision != "int8":
            raise BadInputError(f"{ctx.where}.options.io_dtype: only applies to precision int8 (this target is {self.precision})",
                                hint="remove io_dtype or set precision: int8")
        if self.opts["timeout_s"]:
            self.timeout = float(self.opts["timeout_s"])

    def toolchain(self) -> dict[str, str]:
        return package_versions("onnx2tf", "tensorflow", "tf_keras", "onnx", "onnxruntime", "onnxsim", "ai-edge-litert")

    def check_inputs(self, inputs):
        if self.precision == "int8":
            check_self_quantizing(self.ctx.where, inputs, "full-integer",
                                  no_data_hint="add data.calibration to the recipe, or use precision int8-dynamic")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        require_backend("onnx2tf", "tflite")
        require_backend("tensorflow", "tflite")
        src, ins, outs, arrays, sources = model_io_and_calibration(inputs, self.ctx.model.inputs)
        record: dict = {"precision": self.precision, "converter": "onnx2tf", "notes": []}
        if quantized_ops(src.path):
            record["notes"].append(f"input model already has quantized ops {quantized_ops(src.path)}; onnx2tf converts them as they are")
        feeds = self._feeds(arrays)
        shapes = self._fixed_shapes(ins, sources, feeds, record)
        keep = [s["name"] for s, shp, src in zip(ins, shapes, sources)
                if channels_last(len(shp)) and (self.opts["keep_nchw"] or not self._image_like(src))]
        perms = [None if s["name"] in keep else channels_last(len(shp)) for s, shp in zip(ins, shapes)]
        first_feeds = first_sample(self.ctx.model, self.ctx.recipe_dir, ins, sources, arrays)
        arrays = self._batched(ins, sources, feeds, record)

        scratch = (workdir / "_onnx2tf").resolve()  # absolute: onnx2tf runs with it as the working directory
        scratch.mkdir()
        calib_args = self._calibration_files(ins, sources, arrays, perms, scratch, record)
        for src_name, shape, perm in zip(sources, shapes, perms):
            tf_shape = [shape[i] for i in perm] if perm else shape
            if len(tf_shape) == 4 and tf_shape[-1] == 3:  # what makes onnx2tf fetch its sample images
                data = None if arrays is None or src_name not in arrays else arrays[src_name]
                self._offline_stand_in(None if data is None else (np.transpose(data, perm) if perm else data), scratch, record)
        out_dir = scratch / "out"
        # onnx2tf rewrites its input file in place (simplified, shapes overwritten): give it a copy,
        # never the cached artifact
        onnx_copy = scratch / Path(src.path).name
        shutil.copyfile(src.path, onnx_copy)
        kwargs = dict(  # noqa: C408 - onnx2tf.convert's keyword arguments, recorded below
            input_onnx_file_path=str(onnx_copy),
            output_folder_path=str(out_dir),
            overwrite_input_shape=[f"{s['name']}:{','.join(map(str, shp))}" for s, shp in zip(ins, shapes) if shp],  # 0-d: onnxsim rejects 'k:' 
            copy_onnx_input_output_names_to_tflite=False,  # renaming needs the flatc binary (a download); the runner contract maps names
            output_dynamic_range_quantized_tflite=self.precision == "int8-dynamic",
            output_integer_quantized_tflite=self.precision == "int8",
            quant_type=self.opts["quant_type"],
            input_quant_dtype=self.opts["io_dtype"] or "int8",
            output_quant_dtype=self.opts["io_dtype"] or "int8",
            custom_input_op_name_np_data_path=calib_args,
            keep_ncw_or_nchw_or_ncdhw_input_names=keep or None,
            verbosity="warn",
        )
        record["onnx2tf_args"] = {k: v for k, v in kwargs.items() if k not in ("input_onnx_file_path", "output_folder_path", "custom_input_op_name_np_data_path")}
        log = self._convert(kwargs, scratch, Path(src.path))
        if "shape estimation is skipped" in log:  # onnx2tf's own ONNX-vs-TF check on the -cind data
            record["notes"].append("onnx2tf skipped its ONNX-side shape estimation (its dummy ONNX Runtime inference failed; "
                                   "onnx2tf 1.29 compares -cind data shapes including the batch size); edgepack's own sample_check still ran")
        produced = sorted(p.name for p in out_dir.glob("*.tflite"))
        stem = Path(src.path).stem
        wanted = f"{stem}_{self._variant()}.tflite"
        if wanted not in produced:
            raise StageError(f"onnx2tf did not produce {wanted} (it produced: {', '.join(produced) or 'nothing'})",
                             hint="onnx2tf logs quantization failures as warnings: see the stage log")
        record["onnx2tf_produced"] = produced
        record["onnx2tf_file"] = wanted
        out = workdir / "model.tflite"
        shutil.copyfile(out_dir / wanted, out)
        shutil.rmtree(scratch)  # saved_model and the other variants: not part of the artifact

        from .tflite_io import describe

        specs_in, specs_out, mapping, meta, check = describe(out, src.path, ins, outs, sources, shapes, perms, first_feeds)
        record.update(check)
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

    def _image_like(self, source: str) -> bool:
        """Whether onnx2tf may make this input channels-last: not a state, a constant or an input
        batched on another axis than 0 (a recurrent state [layers, batch, hidden] is no image)."""
        spec = next((i for i in self.ctx.model.inputs if i.name == source), None)
        return spec is None or (spec.feed_batch_axis == 0 and source not in self.ctx.model.state_inputs)

    def _feeds(self, arrays) -> list[dict] | None:
        """The calibration samples as the runner feeds them (batch of 1 at each input's batch axis, constants, states)."""
        from ..data import model_samples

        return model_samples(self.ctx.model, arrays, self.ctx.recipe_dir) if arrays is not None else None

    def _batched(self, ins, sources, feeds, record) -> dict | None:
        """The calibration feeds stacked on the batch axis 0 (onnx2tf's -cind), or None when an input has
        its batch elsewhere (constants, states, batch_axis): onnx2tf then checks shapes with all-ones inputs."""
        if not feeds:
            return None
        axes = {i.name: i.feed_batch_axis for i in self.ctx.model.inputs}
        odd = [src for src in sources if axes.get(src, 0) != 0 or src in self.ctx.model.state_inputs]
        if odd:
            if self.precision == "int8":
                raise BadInputError(f"{self.ctx.where}.precision: int8 (full-integer) TFLite needs calibration data for every input, "
                                    f"and inputs {odd} are constants, states or have their batch on another axis",
                                    hint="use precision int8-dynamic or fp16 for this model")
            record["notes"].append(f"inputs {odd} are constants, states or batched on another axis: no -cind data for onnx2tf")
            return None
        return {src: np.concatenate([f[src] for f in feeds], axis=0) for src in sources}

    def _fixed_shapes(self, ins, sources, feeds, record) -> list[list[int]]:
        """Batch 1 at each input's batch axis (the runners feed one sample at a time); other symbolic
        dims from the calibration data."""
        axes = {i.name: i.feed_batch_axis for i in self.ctx.model.inputs}
        declared = {i.name: i.shape for i in self.ctx.model.inputs}
        shapes = []
        for spec, src in zip(ins, sources):
            shape = []
            ax = axes.get(src, 0)
            decl = declared.get(src) or []
            for d, dim in enumerate(spec["shape"]):
                if d == ax:
                    shape.append(1)
                elif isinstance(dim, int) and dim > 0:
                    shape.append(dim)
                elif len(decl) == len(spec["shape"]) and isinstance(decl[d], int):  # the recipe's declared size
                    shape.append(decl[d])
                elif feeds and src in feeds[0]:
                    shape.append(int(feeds[0][src].shape[d]))
                else:
                    raise BadInputError(
                        f"{self.ctx.where}: ONNX input '{spec['name']}' dimension {d} is dynamic ({dim!r}) and TFLite needs a fixed size",
                        hint="give a fixed size in model.inputs[].shape, or add data.calibration so the size is taken from it",
                    )
            if ax is not None and ax < len(spec["shape"]) and spec["shape"][ax] != 1:
                where = f" (axis {ax})" if ax else ""
                record["notes"].append(f"input '{spec['name']}': batch dimension {spec['shape'][ax]!r}{where} fixed to 1")
            shapes.append(shape)
        return shapes

    def _calibration_files(self, ins, sources, arrays, perms, scratch: Path, record) -> list | None:
        """The recipe's calibration arrays as .npy in TF layout, for onnx2tf's -cind (never its sample images)."""
        if arrays is None:
            record["calibration"] = "none (no data.calibration): onnx2tf checks shapes with all-ones inputs"
            return None
        args = []
        for spec, src, perm in zip(ins, sources, perms):
            a = arrays[src].astype(np.float32) if spec["dtype"].startswith("float") else arrays[src]
            if perm:
                a = np.transpose(a, perm)
            path = scratch / f"calib_{len(args)}.npy"
            np.save(path, np.ascontiguousarray(a))
            args.append([spec["name"], str(path), 0.0, 1.0])  # mean 0, std 1: the data is already normalized
        record["calibration"] = {"samples": len(next(iter(arrays.values()))), "normalization": "none (mean 0, std 1)"}
        return args

    @staticmethod
    def _offline_stand_in(nhwc: np.ndarray | None, scratch: Path, record) -> None:
        """onnx2tf fetches 20 MS-COCO images (GitHub) for any 4-D input whose last TF dimension is 3,
        even with -cind; it reads ./SAMPLE_FILE first. We put the recipe's own calibration images there
        (tiled to 20; seeded noise without calibration data), so nothing is downloaded; onnx2tf uses
        them only for its internal shape check (it resizes them to the input size)."""
        if (scratch / SAMPLE_FILE).exists():
            return
        if nhwc is None:
            data = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
            what = "seeded random images (no calibration data)"
        else:
            reps = int(np.ceil(20 / len(nhwc)))
            data = np.concatenate([nhwc] * reps, axis=0)[:20].astype(np.float32)
            what = "the recipe's calibration images"
        np.save(scratch / SAMPLE_FILE, data)
        record["notes"].append(f"onnx2tf's sample-image download replaced by {what}")

    def _convert(self, kwargs: dict, scratch: Path, source: Path) -> str:
        """Run onnx2tf with its stdout captured (returned, and copied into the stage log). A failure names
        the ONNX node onnx2tf was converting, and its op pattern is learned for the next pre-flight."""
        import onnx2tf

        buf = io.StringIO()
        cwd = os.getcwd()
        os.chdir(scratch)  # onnx2tf looks for SAMPLE_FILE in the working directory (worker process: safe)
        try:
            with contextlib.redirect_stdout(buf):
                onnx2tf.convert(**kwargs)
        except SystemExit as e:  # onnx2tf reports bad input with error(...) then sys.exit(1)
            raise _failure(f"onnx2tf stopped (exit {e.code})", _last_error(buf.getvalue()), buf.getvalue(), source,
                           Path(kwargs["input_onnx_file_path"])) from e
        except Exception as e:
            raise _failure("onnx2tf failed", _cause(e), buf.getvalue(), source, Path(kwargs["input_onnx_file_path"])) from e
        finally:
            os.chdir(cwd)
            print(ANSI.sub("", buf.getvalue()))  # into the stage log
        return ANSI.sub("", buf.getvalue())


def _cause(e: Exception) -> str:
    """The exception's first two non-empty lines (Keras puts the TF layer on the first, the reason on the next)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{e.__class__.__name__}: {' '.join(lines[:2])[:300]}" if lines else e.__class__.__name__


def failed_node(log: str, cause: str, graphs: list[Path]) -> tuple[str, str, Path] | None:
    """(node name, op type, graph holding it) for an onnx2tf failure: the 'onnx_op_name:' line onnx2tf
    logs for the op it was converting, else the longest ONNX node name the error text mentions (onnx2tf
    names its TF layers after ONNX nodes). Looked up in ``graphs`` in order (the source first)."""
    import onnx

    text = ANSI.sub("", log)
    named = [re.sub(r"^wa/", "/", n) for n in re.findall(r"onnx_op_name: (\S+)", text)]
    for path in graphs:
        try:
            nodes = {n.name: n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node if n.name}
        except Exception:
            continue
        for name in reversed(named):
            if name in nodes:
                return name, nodes[name], path
        mentioned = [n for n in nodes if len(n) >= 3 and n in cause]
        if mentioned and not named:
            name = max(mentioned, key=len)
            return name, nodes[name], path
    return None


def _failure(what: str, cause: str, log: str, source: Path, converted_copy: Path) -> StageError:
    from .coverage import learn

    found = failed_node(log, cause, [source, converted_copy])
    if found is None:
        return StageError(f"{what}: {cause}", hint="see the stage log for onnx2tf's output")
    name, op, graph = found
    learned = learn("onnx2tf", graph, name, cause) if graph == source else None
    hint = "replace or rewrite this op in the model, or leave this target out"
    if learned:
        hint += f"; the next build's pre-flight rejects op pattern {learned} without converting"
    return StageError(f"{what} on ONNX node '{name}' ({op}): {cause}", hint=hint)


def _last_error(text: str) -> str:
    lines = [ANSI.sub("", ln).strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln.upper()]
    return (errors or lines or ["no output"])[-1][:300]

"""ONNX -> TensorFlow SavedModel with onnx2tf: one conversion shared by every TFLite precision of a build.

``SavedModelStage`` is content-keyed by the engine on the model, the calibration data (it fixes
dynamic sizes and is onnx2tf's -cind check data), the conversion options (keep_nchw, the recipe's
input specs) and the toolchain, never on the precision: an fp32, an fp16 and an int8 target of one
model hit the same cache entry, and each TFLite compile stage converts only its own variant from it
(edgepack/targets/tflite.py). onnx2tf itself writes no .tflite (``disable_model_save``): the SavedModel
is exported here the way onnx2tf's own ``-osd``/``-oiqt`` path does (a ``serving_default`` signature).

onnx2tf never gets to download its MS-COCO sample images (``_offline_stand_in``), never sees the
cached ONNX file (it rewrites its input in place: it gets a copy), and a failure names the ONNX node
and teaches the pre-flight coverage table its op pattern (``_failure``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import Stage, StageResult
from ..errors import BadInputError, StageError, require_backend
from ..progress_hooks import report
from ..worker import tee_stdout
from .common import first_sample, model_io_and_calibration, quantized_ops

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"  # onnx2tf's download name
SIGNATURE = "serving_default"


def channels_last(rank: int) -> list[int] | None:
    return [0, *range(2, rank), 1] if 3 <= rank <= 5 else None


def toolchain() -> dict[str, str]:
    from .. import toolchains

    return toolchains.versions("tflite", "onnx2tf", "tensorflow", "tf_keras", "onnx", "onnxruntime", "onnxsim", "ai-edge-litert")


class SavedModelStage(Stage):
    """model (+ calibration) -> ``saved_model`` directory artifact, its meta says how it was made."""

    kind = "convert.onnx2tf-savedmodel"
    version = "2"  # 2: Erf through onnx2tf's pseudo-Erf (builtin ops), not a Flex op
    isolated = True
    toolchain_env = "tflite"
    timeout = 900.0
    uses = ("model", "calibration")

    def __init__(self, where: str, model_section, recipe_dir: Path, keep_nchw: bool, timeout: float | None = None):
        self.where = where  # of the first target asking: only in error messages, never in the key
        self.model_section = model_section
        self.recipe_dir = recipe_dir
        self.keep_nchw = keep_nchw
        if timeout:
            self.timeout = float(timeout)

    def config(self) -> dict:
        m = self.model_section
        return {"keep_nchw": self.keep_nchw, **m.model_dump(mode="json", include={"inputs", "state"})}

    def toolchain(self) -> dict[str, str]:
        return toolchain()

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        art, record = convert(inputs, self.model_section, self.recipe_dir, self.keep_nchw, self.where, workdir)
        return StageResult({"saved_model": art}, record)


def convert(inputs: dict[str, Artifact], model_section, recipe_dir: Path, keep_nchw: bool, where: str, workdir: Path) -> tuple[Artifact, dict]:
    """Run onnx2tf once: (SavedModel artifact under ``workdir/saved_model``, record). The artifact's
    meta carries what every variant's compile needs: fixed shapes, transposes, TF input names, notes."""
    require_backend("onnx2tf", "tflite")
    require_backend("tensorflow", "tflite")
    src, ins, outs, arrays, sources = model_io_and_calibration(inputs, model_section.inputs)
    record: dict = {"converter": "onnx2tf", "notes": []}
    if quantized_ops(src.path):
        record["notes"].append(f"input model already has quantized ops {quantized_ops(src.path)}; onnx2tf converts them as they are")
    shapes, perms, _, arrays = prepare(model_section, recipe_dir, keep_nchw, where, ins, sources, arrays, record)
    keep = [s["name"] for s, shp, p in zip(ins, shapes, perms) if channels_last(len(shp)) and p is None]

    scratch = (workdir / "_onnx2tf").resolve()  # absolute: onnx2tf runs with it as the working directory
    scratch.mkdir(parents=True)
    calib_args = _calibration_files(ins, sources, arrays, perms, scratch, record)
    for src_name, shape, perm in zip(sources, shapes, perms):
        tf_shape = [shape[i] for i in perm] if perm else shape
        if len(tf_shape) == 4 and tf_shape[-1] == 3:  # what makes onnx2tf fetch its sample images
            data = None if arrays is None or src_name not in arrays else arrays[src_name]
            _offline_stand_in(None if data is None else (np.transpose(data, perm) if perm else data), scratch, record)
    # onnx2tf rewrites its input file in place (simplified, shapes overwritten): give it a copy, never the cached artifact
    onnx_copy = scratch / Path(src.path).name
    shutil.copyfile(src.path, onnx_copy)
    kwargs = dict(  # noqa: C408 - onnx2tf.convert's keyword arguments, recorded below
        input_onnx_file_path=str(onnx_copy),
        output_folder_path=str(scratch / "out"),
        overwrite_input_shape=[f"{s['name']}:{','.join(map(str, shp))}" for s, shp in zip(ins, shapes) if shp],  # 0-d: onnxsim rejects 'k:'
        copy_onnx_input_output_names_to_tflite=False,  # renaming needs the flatc binary (a download); the runner contract maps names
        output_signaturedefs=True,  # the naming onnx2tf's int8 path uses: one graph serves every variant
        custom_input_op_name_np_data_path=calib_args,
        keep_ncw_or_nchw_or_ncdhw_input_names=keep or None,
        disable_model_save=True,  # onnx2tf returns the Keras model: no .tflite variant is converted here
        verbosity="warn",
    )
    from ..optimize import count_ops

    if "Erf" in count_ops(src.path):  # exact GELU (transformers): TFLite has no builtin Erf, and a Flex op runs nowhere without the Flex delegate
        kwargs["replace_to_pseudo_operators"] = ["erf"]
        record["notes"].append("Erf converted with onnx2tf's pseudo-Erf (builtin Abs/Exp/Mul/Add/Div ops, an approximation of |error| < 1.5e-7): "
                               "TFLite has no builtin Erf")
    record["onnx2tf_args"] = {k: v for k, v in kwargs.items() if k not in ("input_onnx_file_path", "output_folder_path", "custom_input_op_name_np_data_path")}
    report("onnx2tf", 0, 2, phase="ONNX -> Keras")  # the phases (its per-op lines only print at verbosity debug)
    model, log = _run_onnx2tf(kwargs, scratch, Path(src.path))
    report("onnx2tf", 1, 2, phase="export SavedModel")
    if "shape estimation is skipped" in log:  # onnx2tf's own ONNX-vs-TF check on the -cind data
        record["notes"].append("onnx2tf skipped its ONNX-side shape estimation (its dummy ONNX Runtime inference failed; "
                               "onnx2tf 1.29 compares -cind data shapes including the batch size); edgepack's own sample_check still ran")
    out = workdir / "saved_model"
    tf_inputs = _export(model, out)
    report("onnx2tf", 2, 2, phase="done")
    shutil.rmtree(scratch)
    meta = {"shapes": shapes, "perms": perms, "tf_inputs": tf_inputs, "onnx_stem": Path(src.path).stem,
            "notes": record["notes"], "calibration": record["calibration"], "onnx2tf_args": record["onnx2tf_args"]}
    return Artifact(out, "tf-savedmodel", meta=meta), record


def _export(model, out: Path) -> list[str]:
    """The Keras model as a SavedModel with one ``serving_default`` signature (onnx2tf's -osd export);
    returns the signature's input names in the model's input order."""
    import tensorflow as tf
    import tf_keras

    archive = tf_keras.export.ExportArchive()
    specs = [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]
    archive.add_endpoint(name=SIGNATURE, fn=lambda *xs: model(xs), input_signature=specs)
    archive.write_out(str(out))
    return [s.name for s in specs]


def prepare(model_section, recipe_dir: Path, keep_nchw: bool, where: str, ins, sources, arrays, record):
    """(fixed shapes, transposes, the runner's first feed, calibration stacked on axis 0 for onnx2tf's
    -cind or None): the same for the conversion and for each variant's compile."""
    from ..data import model_samples

    feeds = model_samples(model_section, arrays, recipe_dir) if arrays is not None else None
    shapes = _fixed_shapes(model_section, where, ins, sources, feeds, record)
    perms = [channels_last(len(shp)) if not keep_nchw and _image_like(model_section, src) else None for shp, src in zip(shapes, sources)]
    first_feeds = first_sample(model_section, recipe_dir, ins, sources, arrays)
    return shapes, perms, first_feeds, _batched(model_section, sources, feeds, record)


def odd_inputs(model_section, names) -> list[str]:
    """Inputs with no per-sample data on axis 0: constants, states, inputs batched on another axis."""
    axes = {i.name: i.feed_batch_axis for i in model_section.inputs}
    return [n for n in names if axes.get(n, 0) != 0 or n in model_section.state_inputs]


def _image_like(model_section, source: str) -> bool:
    """Whether onnx2tf may make this input channels-last: not a state, a constant or an input
    batched on another axis than 0 (a recurrent state [layers, batch, hidden] is no image)."""
    return not odd_inputs(model_section, [source])


def _batched(model_section, sources, feeds, record) -> dict | None:
    """The calibration feeds stacked on the batch axis 0 (onnx2tf's -cind), or None when an input has
    its batch elsewhere (constants, states, batch_axis): onnx2tf then checks shapes with all-ones inputs."""
    if not feeds:
        return None
    odd = odd_inputs(model_section, sources)
    if odd:
        record["notes"].append(f"inputs {odd} are constants, states or batched on another axis: no -cind data for onnx2tf")
        return None
    return {src: np.concatenate([f[src] for f in feeds], axis=0) for src in sources}


def _fixed_shapes(model_section, where: str, ins, sources, feeds, record) -> list[list[int]]:
    """Batch 1 at each input's batch axis (the runners feed one sample at a time); other symbolic
    dims from the calibration data."""
    axes = {i.name: i.feed_batch_axis for i in model_section.inputs}
    declared = {i.name: i.shape for i in model_section.inputs}
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
                    f"ONNX input '{spec['name']}' dimension {d} is dynamic ({dim!r}) and TFLite needs a fixed size",
                    hint="give a fixed size in model.inputs[].shape, or add data.calibration so the size is taken from it", where=where
                )
        if ax is not None and ax < len(spec["shape"]) and spec["shape"][ax] != 1:
            at = f" (axis {ax})" if ax else ""
            record["notes"].append(f"input '{spec['name']}': batch dimension {spec['shape'][ax]!r}{at} fixed to 1")
        shapes.append(shape)
    return shapes


def tf_layout(ins, sources, arrays, perms) -> list[np.ndarray]:
    """The recipe's calibration arrays in TF layout (channels-last where onnx2tf made it so), float32 for float inputs."""
    out = []
    for spec, src, perm in zip(ins, sources, perms):
        a = arrays[src].astype(np.float32) if spec["dtype"].startswith("float") else arrays[src]
        out.append(np.ascontiguousarray(np.transpose(a, perm) if perm else a))
    return out


def _calibration_files(ins, sources, arrays, perms, scratch: Path, record) -> list | None:
    """The recipe's calibration arrays as .npy in TF layout, for onnx2tf's -cind (never its sample images)."""
    if arrays is None:
        record["calibration"] = "none (no data.calibration): onnx2tf checks shapes with all-ones inputs"
        return None
    args: list[list] = []  # onnx2tf -cind: [input name, .npy path, mean, std]
    for spec, a in zip(ins, tf_layout(ins, sources, arrays, perms)):
        path = scratch / f"calib_{len(args)}.npy"
        np.save(path, a)
        args.append([spec["name"], str(path), 0.0, 1.0])  # mean 0, std 1: the data is already normalized
    record["calibration"] = {"samples": len(next(iter(arrays.values()))), "normalization": "none (mean 0, std 1)"}
    return args


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


def _run_onnx2tf(kwargs: dict, scratch: Path, source: Path):
    """Run onnx2tf with its stdout captured (returned) and written to the stage log as it comes: (Keras model, log).
    Its "INFO: i / n" op lines are reported as progress. A failure names the ONNX node onnx2tf was converting,
    and its op pattern is learned for the next pre-flight."""
    import onnx2tf

    cwd = os.getcwd()
    os.chdir(scratch)  # onnx2tf looks for SAMPLE_FILE in the working directory (worker process: safe)
    try:
        with tee_stdout(_op_progress) as buf:
            try:
                model = onnx2tf.convert(**kwargs)
            except SystemExit as e:  # onnx2tf reports bad input with error(...) then sys.exit(1)
                raise _failure(f"onnx2tf stopped (exit {e.code})", _last_error(buf.getvalue()), buf.getvalue(), source,
                               Path(kwargs["input_onnx_file_path"])) from e
            except Exception as e:
                raise _failure("onnx2tf failed", _cause(e), buf.getvalue(), source, Path(kwargs["input_onnx_file_path"])) from e
    finally:
        os.chdir(cwd)
    if model is None:
        raise StageError("onnx2tf returned no model", hint="see the stage log for onnx2tf's output")
    return model, buf.getvalue()


OP_LINE = re.compile(r"INFO:\s*(\d+)\s*/\s*(\d+)\s*$")


def _op_progress(line: str) -> None:
    m = OP_LINE.search(line.strip())
    if m:
        report("onnx2tf ops", int(m.group(1)), int(m.group(2)))


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
        return StageError(f"{cause}", hint="see the stage log for onnx2tf's output", where=what)
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

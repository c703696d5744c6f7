"""`edgepack init MODEL`: a commented starter recipe from a model file's inputs and outputs.

The inputs are read from the file without running it: ONNX with the onnx package (no onnxruntime),
TFLite from its flatbuffer, Keras ``.keras`` from its config.json, a SavedModel from its serving
signature. PyTorch files carry no input shapes: the recipe then says what to fill in.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")  # recipe.DType


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: list  # ints; a str names a dynamic axis; None: not known
    dtype: str


@dataclass(frozen=True)
class ModelIO:
    format: str  # recipe.ModelFormat value
    inputs: list[Tensor] | None  # None: the file does not say (PyTorch)
    outputs: list[str] | None
    note: str | None = None  # what the user must fill in


def detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "saved-model"
        raise BadInputError("a directory without saved_model.pb is not a model edgepack reads",
                            hint="give a .onnx, .tflite, .keras, .h5, .pt/.pth/.pt2 file or a SavedModel directory", where=path)
    suffix = path.suffix.lower()
    table = {".onnx": "onnx", ".tflite": "tflite", ".keras": "keras", ".h5": "keras", ".pt2": "exported-program"}
    if suffix in table:
        return table[suffix]
    if suffix in (".pt", ".pth", ".ts"):
        try:
            with zipfile.ZipFile(path) as z:  # TorchScript archives hold their code; torch.save state dicts do not
                return "torchscript" if any("/code/" in n for n in z.namelist()) else "pytorch"
        except zipfile.BadZipFile:
            return "pytorch"
    raise BadInputError(f"cannot tell the model format from the suffix '{suffix or '(none)'}'",
                        hint="edgepack reads .onnx, .tflite, .keras, .h5, .pt/.pth (TorchScript or weights), .pt2 and SavedModel directories", where=path)


def read_io(path: Path) -> ModelIO:
    fmt = detect_format(path)
    readers = {"onnx": _onnx, "tflite": _tflite, "keras": _keras, "saved-model": _saved_model}
    if fmt not in readers:
        what = "an nn.Module's weights" if fmt == "pytorch" else "no input shapes"
        return ModelIO(fmt, None, None, f"a {fmt} file holds {what}: fill in model.inputs (name, shape, dtype)"
                       + (" and model.entrypoint (module:function building the nn.Module)" if fmt == "pytorch" else ""))
    try:
        return readers[fmt](path)
    except BadInputError:
        raise
    except ImportError as e:
        return ModelIO(fmt, None, None, f"reading a {fmt} file's inputs needs '{e.name}' (not installed): fill in model.inputs")
    except Exception as e:  # noqa: BLE001 - a damaged or unexpected file: the user fills the inputs in
        return ModelIO(fmt, None, None, f"the inputs could not be read ({e.__class__.__name__}: {str(e)[:120]}): fill in model.inputs")


def _onnx(path: Path) -> ModelIO:
    import onnx

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - not an ONNX protobuf
        raise BadInputError(f"not a readable ONNX model ({e.__class__.__name__})", hint="check the file (is it complete?)", where=path) from e
    init = {i.name for i in m.graph.initializer}

    def tensor(v) -> Tensor:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None) for d in t.shape.dim]
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        except Exception:  # noqa: BLE001 - no dtype (e.g. a sequence): named in the recipe's comment
            dtype = "?"
        return Tensor(v.name, dims, dtype)

    return ModelIO("onnx", [tensor(v) for v in m.graph.input if v.name not in init], [v.name for v in m.graph.output])


def _tflite(path: Path) -> ModelIO:
    from .bareimport import bare_package

    bare_package("tf2onnx")  # its flatbuffer classes, without tf2onnx's __init__ (which imports TensorFlow)
    bare_package("tf2onnx.tflite")
    from tf2onnx.tflite.Model import Model

    types = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 9: "int8"}
    g = Model.GetRootAsModel(path.read_bytes(), 0).Subgraphs(0)

    def tensor(i: int) -> Tensor:
        t = g.Tensors(i)
        sig = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        dims = [int(d) if int(d) > 0 else None for d in (sig if t.ShapeLength() or t.ShapeSignatureLength() else [])]
        return Tensor(t.Name().decode(errors="replace"), dims, types.get(t.Type(), "?"))

    outs = [tensor(g.Outputs(i)).name for i in range(g.OutputsLength())]
    return ModelIO("tflite", [tensor(g.Inputs(i)) for i in range(g.InputsLength())], outs)


def _keras(path: Path) -> ModelIO:
    if path.suffix.lower() != ".keras":
        return ModelIO("keras", None, None, "a .h5 file's inputs are not read without TensorFlow: fill in model.inputs")
    with zipfile.ZipFile(path) as z:
        config = json.loads(z.read("config.json"))
    ins: list[Tensor] = []
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("class_name") == "InputLayer":
            c = layer.get("config", {})
            shape = c.get("batch_shape") or c.get("batch_input_shape") or []
            ins.append(Tensor(c.get("name") or layer.get("name", f"input_{len(ins)}"), [d if d else None for d in shape], c.get("dtype", "float32")))
    return ModelIO("keras", ins or None, None, None if ins else "no InputLayer in config.json: fill in model.inputs")


def _saved_model(path: Path) -> ModelIO:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up logs (as edgepack/ingest/tensorflow.py)
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((path / "saved_model.pb").read_bytes())
    sigs = {k: v for mg in sm.meta_graphs for k, v in mg.signature_def.items()}
    sig = sigs.get("serving_default") or next(iter(sigs.values()), None)
    if sig is None:
        return ModelIO("saved-model", None, None, "the SavedModel has no signature: fill in model.inputs")
    types = {1: "float32", 19: "float16", 3: "int32", 4: "uint8", 9: "int64", 10: "bool", 6: "int8"}

    def tensor(name, info) -> Tensor:
        dims = [] if info.tensor_shape.unknown_rank else [d.size if d.size > 0 else None for d in info.tensor_shape.dim]
        return Tensor(name, dims, types.get(info.dtype, "?"))

    return ModelIO("saved-model", [tensor(k, v) for k, v in sorted(sig.inputs.items())], sorted(sig.outputs))


# ---------------------------------------------------------------- the recipe text


def recipe_shape(t: Tensor, k: int, names: dict[str, str] | None = None) -> list:
    """The recipe shape: fixed sizes kept, a dynamic axis named (its ONNX dim_param when that is a plain
    name, the same name for the same dim_param across inputs; else 'batch' on axis 0, NAME_i elsewhere)."""
    names = {} if names is None else names
    out: list = []
    for i, d in enumerate(t.shape):
        if isinstance(d, int):
            out.append(d)
        elif isinstance(d, str) and re.fullmatch(r"[A-Za-z_]\w*", d):
            out.append(d)
        else:
            new = "batch" if i == 0 else f"{_ident(t.name) or f'in{k}'}_{i}"
            out.append(names.setdefault(d, new) if isinstance(d, str) else new)
    return out


def _ident(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_")


def _c(text: str, comment: str) -> str:
    """A YAML line with its comment in the recipe's comment column."""
    return f"{text:<29} # {comment}"


def _model_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name or "model"


def _flow(items: list) -> str:
    return "[" + ", ".join(json.dumps(x) if isinstance(x, str) else str(x) for x in items) + "]"


def render(model: Path, recipe_path: Path) -> str:
    io = read_io(model)
    rel = os.path.relpath(model.resolve(), recipe_path.resolve().parent)
    if rel.startswith(f"..{os.sep}..{os.sep}"):  # far away: absolute reads better (and survives moving the recipe)
        rel = str(model.resolve())
    lines = [
        f"# Starter recipe written by `edgepack init` from {model.name} ({io.format}).",
        f"# Check it:  edgepack check {recipe_path.name}      Build it:  edgepack build {recipe_path.name} --no-publish",
        "# Every field: docs/recipe.md; the JSON Schema (for editor completion): edgepack schema > recipe.schema.json",
        _c(f"name: {_model_name(model)}", "lowercase letters, digits, '.', '_', '-'"),
        _c("version: 0.1.0", "a published version is immutable: bump it for every release"),
        "",
        "model:",
        f"  format: {io.format}",
    ]
    if io.format == "pytorch":
        lines += ["  entrypoint: TODO_module:build   # TODO: module:function returning the torch.nn.Module (beside this recipe)",
                  f"  weights: {json.dumps(rel)}        # a state dict, loaded with torch.load(weights_only=True)"]
    else:
        lines.append(f"  path: {json.dumps(rel)}")
    lines += _inputs_yaml(io)
    if io.outputs and all(re.fullmatch(r"[A-Za-z_][\w.-]*", o) for o in io.outputs):
        lines.append(f"  outputs: {_flow(io.outputs)}" + ("   # read from the model file" if io.format == "onnx" else ""))
    elif io.outputs:
        lines.append(f"  # outputs: {_flow([f'output_{i}' for i in range(len(io.outputs))])}   # the file's names ({', '.join(io.outputs[:4])}) "
                     "are not plain identifiers: name them here if you like")
    lines += _rest(model)
    return "\n".join(lines) + "\n"


def _inputs_yaml(io: ModelIO) -> list[str]:
    if not io.inputs:
        return [f"  # TODO: {io.note or 'fill in model.inputs'}",
                "  inputs:",
                "    - name: input               # TODO: the model's input name",
                "      shape: [batch, 3, 224, 224]   # TODO: a string names a dynamic axis",
                "      dtype: float32"]
    out = ["  inputs:                    # read from the model file; a string in a shape names a dynamic axis"]
    names: dict[str, str] = {}
    for k, t in enumerate(io.inputs):
        shape = recipe_shape(t, k, names)
        out.append(f"    - name: {json.dumps(t.name)}")
        out.append(f"      shape: {_flow(shape)}")
        if t.dtype in DTYPES:
            out.append(f"      dtype: {t.dtype}")
        else:
            out.append(f"      dtype: float32             # TODO: the model says '{t.dtype}', which edgepack does not feed")
        if len(shape) == 4 and shape[1] in (1, 3) and io.format in ("onnx", "pytorch", "torchscript", "exported-program"):
            out.append("      layout: NCHW")
        elif len(shape) == 4 and shape[-1] in (1, 3):
            out.append("      layout: NHWC")
    return out


def _rest(model: Path) -> list[str]:
    size_mb = _size_mb(model)
    gate_mb = max(1, int(size_mb * 1.5 + 0.999))
    return [
        "",
        "# data:                       # .npy/.npz files or module:function loaders (docs/recipe.md \"data:\");",
        "#                              # without data.validation a build compiles and signs, and skips validation and gates",
        "#   calibration: {path: calibration.npz}                  # static int8 (quantize mode: static, TFLite/OpenVINO int8)",
        "#   validation: {path: validation.npz, labels: labels.npy}  # validation on real inputs, task metrics, accuracy gates",
        "",
        "optimize:                     # the chain that makes the optimized model (the targets' default input)",
        "  - pass: quantize",
        "    mode: dynamic             # int8 weights, no data needed; 'static' (better for CNNs) needs data.calibration",
        "",
        "targets:",
        "  - type: onnxruntime",
        "    name: ort-fp32",
        "    input: fp32               # the converted FP32 model: the reference the others are compared with",
        "  - type: onnxruntime",
        "    name: ort-int8            # the optimize chain's output",
        "  # - {type: tflite, precision: int8-dynamic}     # more targets: tflite, openvino, coreml, tensorrt (docs/recipe.md)",
        "",
        "devices: [local]              # device profiles (devices/NAME.yaml): this host by default",
        "",
        "gates:                        # a failing gate stops signing and publishing (exit 3)",
        "  min_cosine: 0.98            # centred cosine of each target's outputs to FP32's",
        _c(f"  max_size_mb: {gate_mb}", f"the model file is {size_mb:.2f} MB"),
        "  # max_p90_ms: 50            # p90 latency on each device",
        "  # max_accuracy_drop: 0.01   # top-1 drop vs FP32 (needs data.validation with labels)",
        "",
        "publish:",
        "  enabled: false              # true: push the signed bundle to publish.registry (default $EDGEPACK_HOME/registry/NAME)",
    ]


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6


def write_starter(model: Path, output: Path | None = None, force: bool = False) -> tuple[Path, ModelIO]:
    """Write the starter recipe (default: recipe.yaml beside the model) and return its path. Refuses to
    overwrite an existing file unless ``force``; the text is checked to load before it is written."""
    if not model.exists():
        raise BadInputError("model file not found", hint="give the path of a .onnx, .tflite, .keras, .pt file or a SavedModel directory", where=model)
    out = output or ((model if model.is_dir() else model.parent) / "recipe.yaml")
    if out.is_dir():
        out = out / "recipe.yaml"
    if out.exists() and not force:
        raise BadInputError("already exists", hint="give another path with -o, or --force to overwrite it", where=out)
    text = render(model, out)
    from .recipe import parse_recipe

    parse_recipe(text, out)  # what init writes must load (a bug here is not the user's mistake: caught by tests)
    from .bundle.fsutil import atomic_write_bytes
    from .paths import check_writable

    check_writable(out.parent, "-o")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.encode())
    return out, read_io(model)

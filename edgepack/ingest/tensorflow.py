"""TensorFlow-family sources -> ONNX with tf2onnx: Keras (.keras / .h5), SavedModel directory, TFLite file.

The ONNX model keeps the source's input layout (TF models are usually NHWC) and takes the recipe's
input names (``model.inputs[].name``); its outputs are in the source's output order (Keras:
``model.outputs``; SavedModel: signature output keys, sorted as tf2onnx sorts them; TFLite: the
signature's outputs) and take ``model.outputs`` names when given, else the source's names.
Keras models go through ``tf2onnx.convert.from_keras`` first; if that fails the model is exported to
a SavedModel and converted from there, and ``record['fallbacks']`` says why.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import BadInputError, StageError
from ..recipe import ModelFormat
from . import ConvertContext, Converted
from ._tf_sources import Source, first_line, keras_source, saved_model_source, tflite_source

TF2ONNX_MAX_OPSET = 18  # tf2onnx 1.17 constants.OPSET_TO_IR_VERSION


def check_container(path: Path, fmt: ModelFormat) -> None:
    """Cheap structural checks before TensorFlow is imported: wrong kind of file fails in a second."""
    where = f"{path} (model.path)"
    if fmt is ModelFormat.SAVED_MODEL:
        if not path.is_dir():
            raise BadInputError("a SavedModel is a directory, this is a file", hint="point model.path at the directory holding saved_model.pb", where=where)
        if not ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()):
            raise BadInputError("no saved_model.pb in this directory, so it is not a SavedModel",
                                hint="export with tf.saved_model.save(...) or keras model.export(...)", where=where)
        return
    if not path.is_file():
        raise BadInputError(f"expected a {fmt.value} file, found a directory",
                            hint="use format 'saved-model' for a SavedModel directory", where=where)
    head = path.read_bytes()[:8] if path.stat().st_size >= 8 else b""
    if fmt is ModelFormat.TFLITE:
        if head[4:8] != b"TFL3":
            raise BadInputError("not a TFLite flatbuffer (no 'TFL3' identifier at byte 4)",
                                hint="the file may be truncated or corrupted; re-export it with tf.lite.TFLiteConverter", where=where)
        return
    if path.suffix == ".keras" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            raise BadInputError(f"not a .keras archive ({e.__class__.__name__}: {e})",
                                hint="the file may be truncated or corrupted; save it again with model.save('model.keras')", where=where) from e
        if bad is not None or "config.json" not in names:
            why = f"member '{bad}' is corrupted" if bad else "no config.json inside"
            raise BadInputError(f"not a valid .keras archive ({why})", hint="save it again with model.save('model.keras')", where=where)
        return
    if head != b"\x89HDF\r\n\x1a\n":
        raise BadInputError("neither a .keras zip archive nor an HDF5 (.h5) file",
                            hint="save the model with model.save('model.keras')", where=where)


def verify_tflite(path: Path) -> None:
    """Walk the flatbuffer in Python (bounds-checked) before the C++ interpreter reads it: it does not verify
    the file, and a truncated or corrupted one can crash the process instead of raising."""
    import struct

    from tf2onnx.tflite.Model import Model

    buf = path.read_bytes()
    try:
        m = Model.GetRootAsModel(buf, 0)
        n_codes, n_buffers = m.OperatorCodesLength(), m.BuffersLength()
        for i in range(n_codes):
            m.OperatorCodes(i).BuiltinCode()
        for i in range(n_buffers):
            b = m.Buffers(i)
            if b.DataLength():
                b.DataAsNumpy()
            if b.Offset() > 1 and b.Offset() + b.Size() > len(buf):
                raise ValueError(f"buffer {i} lies beyond the end of the file")
        if m.SubgraphsLength() == 0:
            raise ValueError("no subgraphs")
        for k in range(m.SubgraphsLength()):
            g = m.Subgraphs(k)
            n_tensors = g.TensorsLength()
            for i in range(n_tensors):
                t = g.Tensors(i)
                t.ShapeAsNumpy(), t.Name(), t.Type()
                if not 0 <= t.Buffer() < max(n_buffers, 1):
                    raise ValueError(f"tensor {i} refers to buffer {t.Buffer()} of {n_buffers}")
            ios = list(g.InputsAsNumpy()) + list(g.OutputsAsNumpy())
            for i in range(g.OperatorsLength()):
                op = g.Operators(i)
                if not 0 <= op.OpcodeIndex() < n_codes:
                    raise ValueError(f"operator {i} has opcode index {op.OpcodeIndex()} of {n_codes}")
                ios += list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy())
            bad = [int(j) for j in ios if not -1 <= int(j) < n_tensors]
            if bad:
                raise ValueError(f"subgraph {k} refers to tensor(s) {bad[:3]} of {n_tensors}")
    except (struct.error, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path} (model.path): not a valid TFLite model ({first_line(e)})",
                            hint="the file may be truncated or corrupted; re-export it with tf.lite.TFLiteConverter") from e


def _fits(want: list, shape: list | None) -> bool:
    return shape is None or (len(shape) == len(want) and not any(
        isinstance(w, int) and g is not None and g > 0 and w != g for w, g in zip(want, shape)))


def _map_inputs(ctx: ConvertContext, src: Source) -> tuple[dict[str, str], set[str]]:
    """(recipe input name -> source input key, source keys fed NCHW). By name, or by position for one input.

    A recipe input declared ``layout: NCHW`` whose shape is the source's NHWC shape permuted gets a
    transpose inside the ONNX model (tf2onnx ``inputs_as_nchw``)."""
    recipe = [i.name for i in ctx.model.inputs]
    keys = list(src.inputs)
    if len(recipe) != len(keys):
        raise BadInputError(f"{ctx.source_where}.inputs: {len(recipe)} input(s) given but {src.label} has {len(keys)}: {keys}",
                            hint="list one model.inputs entry per model input")
    if set(recipe) <= set(keys):
        mapping = {r: r for r in recipe}
    elif len(keys) == 1:
        mapping = {recipe[0]: keys[0]}
    else:
        aliases = {a: k for k, spec in src.inputs.items() for a in (k, spec.get("tensor", k))}
        unknown = [r for r in recipe if r not in aliases]
        if unknown:
            raise BadInputError(f"{ctx.source_where}.inputs: {unknown} not among the inputs of {src.label}",
                                hint=f"the model's inputs are {keys}")
        mapping = {r: aliases[r] for r in recipe}
    nchw = set()
    for i, spec in enumerate(ctx.model.inputs):
        got = src.inputs[mapping[spec.name]]
        shape = got["shape"]
        want = spec.shape
        # declared NCHW and the source's (NHWC) shape permuted fits: transpose, even if the shape fits as is
        if spec.layout == "NCHW" and shape is not None and len(shape) == 4 and _fits(want, [shape[k] for k in (0, 3, 1, 2)]):
            nchw.add(mapping[spec.name])
        elif not _fits(want, shape):
            shown = ["?" if g is None or g < 0 else g for g in shape]
            raise BadInputError(f"{ctx.source_where}.inputs[{i}].shape: {want} but {src.label} input '{mapping[spec.name]}' has shape {shown}",
                                hint="give the model's own (usually NHWC) shape, or layout: NCHW with the shape as [N, C, H, W]")
        if got["dtype"] != spec.dtype.value:
            raise BadInputError(f"{ctx.source_where}.inputs[{i}].dtype: {spec.dtype.value} but {src.label} input '{mapping[spec.name]}' is {got['dtype']}",
                                hint=f"set dtype: {got['dtype']}")
    return mapping, nchw


def _run_source(ctx: ConvertContext, src: Source, mapping: dict[str, str], nchw: set[str]) -> list[list[tuple[str, np.ndarray]]]:
    outs = []
    for s in ctx.samples:
        feed = {mapping[k]: np.ascontiguousarray(v.transpose(0, 2, 3, 1) if mapping[k] in nchw else v) for k, v in s.items() if k in mapping}
        try:
            outs.append(src.run(feed))
        except Exception as e:
            shapes = {k: list(v.shape) for k, v in s.items()}
            raise BadInputError(
                f"{ctx.source_where}.inputs: {src.label} rejected inputs of shape {shapes}: {e.__class__.__name__}: "
                f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
                hint="fix model.inputs[].shape / dtype to what the model expects",
            ) from e
    return outs


def rename_tensors(proto, mapping: dict[str, str], order: list[str], where: str) -> None:
    """Rename tensors everywhere in ``proto`` (subgraphs too) and order the graph outputs as ``order`` (new names)."""
    g = proto.graph
    used = {n for node in g.node for n in node.output} | {v.name for v in g.input} | {i.name for i in g.initializer}
    final: dict[str, str] = {}
    for name in sorted(used):
        new = mapping.get(name, name)
        if final.setdefault(new, name) != name:
            raise BadInputError(f"name '{new}' would be given to two tensors of the converted graph",
                                hint="use distinct names in model.inputs / model.outputs", where=where)

    def fix(graph):
        for node in graph.node:
            node.input[:] = [mapping.get(x, x) for x in node.input]
            node.output[:] = [mapping.get(x, x) for x in node.output]
            for attr in node.attribute:
                if attr.HasField("g"):
                    fix(attr.g)
                for sub in attr.graphs:
                    fix(sub)
        for v in list(graph.input) + list(graph.output) + list(graph.value_info):
            v.name = mapping.get(v.name, v.name)
        for init in graph.initializer:
            init.name = mapping.get(init.name, init.name)

    fix(g)
    _reorder(g.output, order, where)


def _reorder(values, order: list[str], where: str) -> None:
    """Put the graph inputs/outputs named in ``order`` first, in that order."""
    by_name = {v.name: v for v in values}
    missing = [n for n in order if n not in by_name]
    if missing:
        raise StageError(f"the converted graph lacks {missing}; it has {sorted(by_name)}", where=where)
    rest = [v for v in values if v.name not in order]
    ordered = [type(v)() for v in [by_name[n] for n in order] + rest]
    for dst, src in zip(ordered, [by_name[n] for n in order] + rest):
        dst.CopyFrom(src)
    del values[:]
    values.extend(ordered)


def name_dynamic_dims(proto, inputs) -> None:
    """Give the inputs' dynamic axes the recipe's names (tf2onnx calls them unk__N), everywhere they appear."""
    g = proto.graph
    renames = {}
    by_name = {v.name: v for v in g.input}
    for spec in inputs:
        dims = by_name[spec.name].type.tensor_type.shape.dim
        for d, want in zip(dims, spec.shape):
            if isinstance(want, str) and d.HasField("dim_param") and d.dim_param != want:
                renames[d.dim_param] = want
    if not renames:
        return
    for v in list(g.input) + list(g.output) + list(g.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.HasField("dim_param") and d.dim_param in renames:
                d.dim_param = renames[d.dim_param]


def unconverted_ops(graph, found: dict[str, str] | None = None) -> dict[str, str]:
    """op type -> first node name, for nodes tf2onnx left as TensorFlow ops (it converts with continue_on_error)."""
    import onnx

    found = {} if found is None else found
    for node in graph.node:
        if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
            found.setdefault(node.op_type, node.name)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                unconverted_ops(sub, found)
    return found


def _check_export(proto, ins: list[str], outs: list[str]) -> None:
    left = unconverted_ops(proto.graph)
    if left:
        raise StageError("no ONNX conversion for TensorFlow op(s) " + ", ".join(f"{t} (node '{n}')" for t, n in left.items()))
    graph_ins = {v.name for v in proto.graph.input}
    graph_outs = {v.name for v in proto.graph.output}
    lost = [n for n in ins if n not in graph_ins] + [n for n in outs if n not in graph_outs]
    if lost:
        raise StageError(f"tensors {lost} are not inputs/outputs of the exported graph "
                         f"(inputs {sorted(graph_ins)}, outputs {sorted(graph_outs)})")


def convert(ctx: ConvertContext) -> Converted:
    fmt = ctx.model.format
    path = Path(ctx.source.path)
    check_container(path, fmt)
    if fmt is ModelFormat.TFLITE:
        verify_tflite(path)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    record: dict = {"exporter": None, "fallbacks": [], "layout": "kept from the source (no transpose inserted)"}
    opset = ctx.model.opset
    if opset > TF2ONNX_MAX_OPSET:
        record["opset"] = {"requested": opset, "used": TF2ONNX_MAX_OPSET, "reason": f"tf2onnx supports opset <= {TF2ONNX_MAX_OPSET}"}
        opset = TF2ONNX_MAX_OPSET
    makers = {ModelFormat.KERAS: keras_source, ModelFormat.SAVED_MODEL: saved_model_source, ModelFormat.TFLITE: tflite_source}
    if ctx.model.trust_code:
        record["trust_code"] = "model.trust_code: true (code and file I/O in the model file allowed to run)"
    src: Source = makers[fmt](path, ctx.workdir, record, ctx.model.trust_code)
    mapping, nchw = _map_inputs(ctx, src)
    named = _run_source(ctx, src, mapping, nchw)
    if nchw:
        record["layout"] = {r: "NCHW, transposed to the source's NHWC inside the ONNX model" for r, k in mapping.items() if k in nchw}
    src_names = [n for n, _ in named[0]]
    out_names = list(ctx.output_names) or src_names
    if len(out_names) != len(src_names):
        raise BadInputError(f"{ctx.source_where}.outputs: {len(out_names)} name(s) given but {src.label} has {len(src_names)} output(s): {src_names}",
                            hint="give one name per model output, in the model's output order")
    record["renamed_inputs"] = {k: r for r, k in mapping.items() if r != k}  # source name -> ONNX name
    record["renamed_outputs"] = {n: o for n, o in zip(src_names, out_names) if n != o}
    errors = []
    for label, export in src.exporters:
        try:
            proto, in_tensors, out_tensors = export(mapping, opset, nchw)
            _check_export(proto, [in_tensors[r] for r in mapping], [out_tensors.get(n, f"<{n}>") for n in src_names])
            record["exporter"] = label
            break
        except BadInputError:
            raise
        except Exception as e:  # an exporter failure: try the next one, and say why
            text = str(e).strip()
            reason = f"{e.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}"
            errors.append(f"{label}: {reason}")
            record["fallbacks"].append({"exporter": label, "failed_because": reason})
    if record["exporter"] is None:
        raise StageError(f"every ONNX exporter failed for {path.name}: " + " | ".join(errors),
                         hint="replace unsupported ops in the model, or see the stage log for tf2onnx's messages")
    rename = {in_tensors[r]: r for r in mapping}
    rename.update({out_tensors[n]: o for n, o in zip(src_names, out_names)})
    rename_tensors(proto, rename, out_names, f"{ctx.source_where}")
    _reorder(proto.graph.input, [i.name for i in ctx.model.inputs], ctx.source_where)
    name_dynamic_dims(proto, ctx.model.inputs)
    out = ctx.workdir / "exported.onnx"
    tmp = out.with_suffix(".onnx.tmp")
    tmp.write_bytes(proto.SerializeToString())
    tmp.replace(out)
    source_outputs = [[np.asarray(a) for _, a in sample] for sample in named]
    return Converted(out, source_outputs, record)

"""Refuse TensorFlow graphs that touch the file system or call Python, before TensorFlow runs them.

A SavedModel's functions (and a TFLite file's Flex ops, which run TensorFlow kernels) may hold ops
that read or write files, call back into Python or talk to the network. Loading such a model, or
feeding it the sample inputs, would run them on the build host. ``check_saved_model`` and
``check_tflite`` read the serialized graph (protobuf / flatbuffer only: nothing is executed) and
raise ``BadInputError`` naming every such op, unless the recipe says ``model.trust_code: true``
(docs/security.md). The checkpoint ops TensorFlow itself puts in a SavedModel to restore its
variables are allowed where TensorFlow puts them (the saver's graph and its ``_traced_save`` /
``_traced_restore`` functions), nowhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import BadInputError

_DENIED = {
    "PyFunc", "PyFuncStateless", "EagerPyFunc",  # call Python
    "WriteFile", "ReadFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "Skipgram",
    "GenerateVocabRemapping", "LoadAndRemapMatrix", "DatasetToTFRecord", "ExperimentalDatasetToTFRecord",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2", "Copy", "CopyHost", "ImportEvent",
}
_DENIED_RE = re.compile(
    r"Reader(V2)?$|^Reader|SummaryWriter|^Write\w*Summary$|SummaryFileWriter|SummaryDbWriter|Rpc|"
    r"(TFRecord|TextLine|FixedLengthRecord|CSV|LMDB|Sql|Snapshot|Save|Load|MatchingFiles)Dataset"
)
CHECKPOINT_OPS = {"Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints"}
_SAVER_FN = re.compile(r"^__inference__traced_(save|restore)_\d+$")
_STD_STREAMS = ("", "stderr", "stdout", "log(info)", "log(warning)", "log(error)")


def denied(op: str, attrs=None) -> bool:
    """Whether TensorFlow op type ``op`` does file, Python or network I/O (checkpoint ops: see CHECKPOINT_OPS)."""
    if op in _DENIED or op in CHECKPOINT_OPS or _DENIED_RE.search(op):
        return True
    if op == "PrintV2" and attrs is not None and "output_stream" in attrs:  # tf.print(output_stream="file://...")
        return attrs["output_stream"].s.decode(errors="replace") not in _STD_STREAMS
    return False


def _refuse(path: Path, kind: str, found: dict[str, str]) -> None:
    listed = ", ".join(f"{op} (in {where})" for op, where in sorted(found.items())[:8])
    more = f" and {len(found) - 8} more" if len(found) > 8 else ""
    raise BadInputError(
        f"{path} (model.path): the {kind} holds op(s) that read or write files or run Python: {listed}{more}; refused before running it",
        hint="remove those ops from the model, or set model.trust_code: true if you trust this file (docs/security.md)")


def _saver_nodes(meta) -> set[str]:
    """Top-level nodes the saver_def's save/restore ops depend on (TensorFlow's own checkpoint machinery)."""
    by_name = {n.name: n for n in meta.graph_def.node}
    sd = meta.saver_def
    todo = [t.split(":")[0].lstrip("^") for t in (sd.save_tensor_name, sd.restore_op_name) if t]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen.add(name)
        todo.extend(i.split(":")[0].lstrip("^") for i in by_name[name].input)
    return seen


def saved_model_ops(path: Path) -> dict[str, str]:
    """Denied op type -> where it is (function or node name), over every meta graph of the SavedModel."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    pb = path / "saved_model.pb"
    try:
        if pb.is_file():
            sm.ParseFromString(pb.read_bytes())
        else:
            text_format.Parse((path / "saved_model.pbtxt").read_text(), sm)
    except Exception as e:  # noqa: BLE001 - a damaged protobuf is bad input
        raise BadInputError(f"{path} (model.path): saved_model.pb cannot be parsed ({e.__class__.__name__})",
                            hint="the directory may be incomplete or corrupted; export it again") from e
    found: dict[str, str] = {}
    for meta in sm.meta_graphs:
        saver = _saver_nodes(meta)
        for n in meta.graph_def.node:
            if denied(n.op, n.attr) and not (n.op in CHECKPOINT_OPS and n.name in saver):
                found.setdefault(n.op, f"node '{n.name}'")
        for fn in meta.graph_def.library.function:
            in_saver = bool(_SAVER_FN.match(fn.signature.name))
            for n in fn.node_def:
                if denied(n.op, n.attr) and not (n.op in CHECKPOINT_OPS and in_saver):
                    found.setdefault(n.op, f"function '{fn.signature.name}'")
    return found


def check_saved_model(path: Path, trust_code: bool) -> None:
    if trust_code:
        return
    found = saved_model_ops(path)
    if found:
        _refuse(path, "SavedModel", found)


def _flex_op(custom_options: bytes | None) -> str | None:
    """The TensorFlow op a Flex custom op really runs: the NodeDef inside its flexbuffer options."""
    if not custom_options:
        return None
    try:
        from flatbuffers import flexbuffers
        from tensorflow.core.framework import node_def_pb2

        parts = flexbuffers.Loads(bytes(custom_options))
        nd = node_def_pb2.NodeDef()
        nd.ParseFromString(bytes(parts[1]))
        return nd.op
    except Exception:  # noqa: BLE001 - unreadable options: judged by the custom code alone
        return None


def tflite_ops(path: Path) -> dict[str, str]:
    """Denied TensorFlow op -> where, for the TFLite file's custom (Flex) ops. Builtin ops do no I/O."""
    from tf2onnx.tflite.Model import Model

    m = Model.GetRootAsModel(path.read_bytes(), 0)
    flex: dict[int, str] = {}
    for i in range(m.OperatorCodesLength()):
        code = (m.OperatorCodes(i).CustomCode() or b"").decode(errors="replace")
        if code:
            flex[i] = code
    found: dict[str, str] = {}
    for k in range(m.SubgraphsLength()):
        g = m.Subgraphs(k)
        for j in range(g.OperatorsLength()):
            op = g.Operators(j)
            code = flex.get(op.OpcodeIndex())
            if code is None:
                continue
            opts = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else None
            inner = _flex_op(opts) if code.startswith("Flex") else None
            for name in {code.removeprefix("Flex"), *([inner] if inner else [])}:
                if denied(name) or name == "PrintV2":
                    found.setdefault(name, f"subgraph {k} operator {j} ({code})")
    return found


def check_tflite(path: Path, trust_code: bool) -> None:
    if trust_code:
        return
    found = tflite_ops(path)
    if found:
        _refuse(path, "TFLite model", found)

"""Pre-flight op coverage: which ONNX nodes a target cannot take, found before any conversion starts.

Each target type has one entry in the static ``TABLES``: the op domains it accepts and, per domain,
either the set of op types it supports (read from the installed converter where it can be: ONNX
Runtime's operator schemas, onnx2tf's one-module-per-op folder) or a set it is known NOT to support
(TensorRT's ONNX parser, from onnx-tensorrt docs/operators.md). A graph whose opset is newer than a
table knows is reported as a warning, never as a failure. Nothing here imports a heavy backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

STANDARD = ("", "ai.onnx")


@dataclass(frozen=True)
class OpTable:
    name: str  # what the table is, for the report
    domains: tuple[str, ...]  # op domains the target accepts at all
    supported: frozenset[str] | None = None  # op types known to work (None: every standard op)
    unsupported: frozenset[str] = field(default_factory=frozenset)  # op types known to fail
    max_opset: int | None = None  # newest default-domain opset the table was written for


# TensorRT 10 ONNX parser: ops still marked "N" in onnx-tensorrt's operator matrix (conservative:
# only ops that stayed unsupported across 8.6 .. 10.x are listed, so a listed op really fails).
TENSORRT_UNSUPPORTED = frozenset(
    {
        "Bernoulli", "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear",
        "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
        "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
        "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
        "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
        "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
    }
)


@functools.lru_cache(maxsize=None)
def _ort_ops() -> dict[str, frozenset[str]]:
    """ONNX Runtime's registered operator schemas by domain (its own list, no model needed)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    out: dict[str, set[str]] = {}
    for s in C.get_all_operator_schema():
        out.setdefault(s.domain, set()).add(s.name)
    return {k: frozenset(v) for k, v in out.items()}


@functools.lru_cache(maxsize=None)
def _onnx2tf_ops() -> frozenset[str] | None:
    """onnx2tf converts one ONNX op per module under onnx2tf/ops/ (listed, not imported: no TensorFlow)."""
    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    ops_dir = Path(list(spec.submodule_search_locations)[0]) / "ops"
    if not ops_dir.is_dir():
        return None
    return frozenset(f[:-3] for f in os.listdir(ops_dir) if f.endswith(".py") and f[:1].isupper())


def table_for(name: str) -> OpTable | None:
    """The op table for a target type (or 'onnx2tf' for converters that go through it); None if unknown."""
    if name == "onnxruntime":
        ops = _ort_ops()
        return OpTable(
            "onnxruntime operator schemas", ("", "ai.onnx", "com.microsoft", "ai.onnx.ml"),
            supported=ops.get("", frozenset()) | ops.get("com.microsoft", frozenset()) | ops.get("ai.onnx.ml", frozenset()),
        )
    if name == "tensorrt":
        return OpTable("TensorRT 10 ONNX parser (onnx-tensorrt operator matrix)", ("", "ai.onnx", "trt"),
                       unsupported=TENSORRT_UNSUPPORTED, max_opset=22)
    if name == "openvino":
        return OpTable("OpenVINO ONNX frontend (standard domain)", ("", "ai.onnx", "com.microsoft", "org.openvinotoolkit"))
    if name in ("tflite", "onnx2tf"):
        ops = _onnx2tf_ops()
        if ops is None:
            return None
        return OpTable("onnx2tf op converters (onnx2tf/ops)", ("", "ai.onnx", "com.microsoft"), supported=ops)
    return None


def check_graph(onnx_path: Path, table: OpTable) -> dict:
    """Unsupported nodes of one graph (subgraphs included) against one table."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    opsets = {o.domain: o.version for o in m.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    unsupported: list[dict] = []
    histogram: dict[str, int] = {}
    local_functions = {(f.domain, f.name) for f in m.functions}
    for node in _walk(m.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        op = f"{domain}::{node.op_type}" if domain else node.op_type
        histogram[op] = histogram.get(op, 0) + 1
        if (node.domain, node.op_type) in local_functions:
            continue  # a model-local function: its body's nodes are what the target sees
        reason = _why_unsupported(domain, node.op_type, table)
        if reason:
            unsupported.append({"node": node.name or f"<unnamed {node.op_type}>", "op": op, "reason": reason})
    for f in m.functions:
        for node in _walk(f.node):
            domain = "" if node.domain == "ai.onnx" else node.domain
            reason = _why_unsupported(domain, node.op_type, table)
            if reason and (node.domain, node.op_type) not in local_functions:
                op = f"{domain}::{node.op_type}" if domain else node.op_type
                unsupported.append({"node": f"{f.name}/{node.name or node.op_type}", "op": op, "reason": reason})
    warnings = []
    if table.max_opset is not None and opset > table.max_opset:
        warnings.append(f"model opset {opset} is newer than the {table.max_opset} this table was written for")
    return {"table": table.name, "opset": opset, "ops": dict(sorted(histogram.items())), "unsupported": unsupported, "warnings": warnings}


def _why_unsupported(domain: str, op_type: str, table: OpTable) -> str | None:
    if domain not in table.domains and not (domain == "" and "" in table.domains):
        return f"domain '{domain}' is not supported"
    if op_type in table.unsupported:
        return "listed as unsupported"
    if table.supported is not None and op_type not in table.supported:
        return "no converter/kernel for this op"
    if table.supported is None and domain in STANDARD:
        import onnx

        if not onnx.defs.has(op_type):
            return "not a standard ONNX op"
    return None


def _walk(nodes):
    """Nodes in order, descending into If/Loop/Scan bodies."""
    for node in nodes:
        yield node
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk(attr.g.node)
            for g in attr.graphs:
                yield from _walk(g.node)


def preflight(stage, model, fp32) -> dict:
    """Coverage of the graph a target stage will convert. ``model``/``fp32``: the optimized and FP32
    ONNX artifacts. A stage may define ``coverage_input(model, fp32) -> (table name | None, artifact | None, note)``
    when it reads another graph or converts through another tool (Core ML via onnx2tf, or from PyTorch)."""
    from ..recipe import TargetInput

    hook = getattr(stage, "coverage_input", None)
    if hook is not None:
        name, art, note = hook(model, fp32)
    else:
        name = stage.target.type.value
        art = fp32 if stage.target.input is TargetInput.FP32 else model
        note = None
    if art is None or name is None:
        return {"checked": False, "reason": note or "this target does not convert an ONNX graph", "unsupported": []}
    table = table_for(name)
    if table is None:
        return {"checked": False, "reason": f"no op table for '{name}' on this machine", "unsupported": []}
    try:
        out = {"checked": True, **check_graph(Path(art.path), table)}
    except Exception as e:  # a graph onnx cannot read here: the conversion will say more; never block on it
        return {"checked": False, "reason": f"coverage check failed: {e.__class__.__name__}: {str(e)[:200]}", "unsupported": []}
    if note:
        out["note"] = note
    return out


def summary(target_id: str, cov: dict, limit: int = 8) -> str:
    """One line naming the unsupported nodes (for the target's error)."""
    bad = cov["unsupported"]
    names = ", ".join(f"{u['node']} ({u['op']})" for u in bad[:limit])
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} node(s) the target cannot convert ({cov['table']}): {names}{more}"

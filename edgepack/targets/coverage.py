"""Pre-flight op coverage: which ONNX nodes a target cannot take, found before any conversion starts.

Each target type has one entry in the static ``TABLES``: the op domains it accepts and, per domain,
either the set of op types it supports (read from the installed converter where it can be: ONNX
Runtime's operator schemas, onnx2tf's one-module-per-op folder) or a set it is known NOT to support
(TensorRT's ONNX parser, from onnx-tensorrt docs/operators.md). A graph whose opset is newer than a
table knows is reported as a warning, never as a failure. Nothing here imports a heavy backend.

The onnx2tf table also learns: when onnx2tf fails on a node, the TFLite target records that node's op
pattern (op type, input ranks, scalar attributes) in ``<cache>/coverage-learned/onnx2tf.json`` keyed
by the converter's toolchain versions, and the next build's pre-flight rejects a graph holding that
pattern before converting, saying it was learned. A new onnx2tf/TensorFlow version starts afresh.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
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
    learned: dict = field(default_factory=dict)  # op pattern -> what failed on it before (see learn())


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
        converters = _onnx2tf_ops()
        if converters is None:
            return None
        return OpTable("onnx2tf op converters (onnx2tf/ops)", ("", "ai.onnx", "com.microsoft"), supported=converters,
                       learned=learned_patterns("onnx2tf"))
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
    ranks = tensor_ranks(m.graph) if table.learned else {}
    for node in _walk(m.graph.node):
        domain = "" if node.domain == "ai.onnx" else node.domain
        op = f"{domain}::{node.op_type}" if domain else node.op_type
        histogram[op] = histogram.get(op, 0) + 1
        if (node.domain, node.op_type) in local_functions:
            continue  # a model-local function: its body's nodes are what the target sees
        reason = _why_unsupported(domain, node.op_type, table)
        entry = {"node": node.name or f"<unnamed {node.op_type}>", "op": op, "reason": reason}
        if not reason and table.learned:
            seen = table.learned.get(op_pattern(node, ranks))
            if seen:
                entry.update(reason="learned: the converter failed on this op pattern in an earlier build", learned_from=seen)
        if entry["reason"]:
            unsupported.append(entry)
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


def preflight(stage, model, fp32, inputs: dict | None = None) -> dict:
    """Coverage of the graph a target stage will convert. ``model``/``fp32``: the optimized and FP32
    ONNX artifacts. A stage may define ``coverage_input(model, fp32) -> (table name | None, artifact | None, note)``
    when it reads another graph or converts through another tool (Core ML via onnx2tf, or from PyTorch),
    or ``coverage(inputs) -> dict`` (same keys as ``check_graph``) when it checks a non-ONNX graph itself
    (ExecuTorch: the exported PyTorch graph against the runtime's kernels)."""
    from ..recipe import TargetInput

    own = getattr(stage, "coverage", None)
    if own is not None:
        return own({"model": model, "fp32": fp32, **(inputs or {})})

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
    learned = [u["learned_from"] for u in bad if u.get("learned_from")]
    said = (f"; rejected before converting: the converter failed on this op pattern in an earlier build with the same"
            f" toolchain (node '{learned[0]['node']}': {learned[0]['error'][:200]}); to try again, remove it from"
            f" {_learned_file(learned[0].get('converter', 'onnx2tf'))}") if learned else ""
    return f"{len(bad)} node(s) the target cannot convert ({cov['table']}): {names}{more}{said}"


# ------------------------------------------------------------------ learned failures

LEARNED_TOOLCHAIN = {"onnx2tf": ("onnx2tf", "tensorflow", "tf_keras", "onnxsim")}


def tensor_ranks(graph) -> dict[str, int]:
    """Rank of every tensor whose shape the graph records (inputs, initializers, value_info, outputs)."""
    ranks = {i.name: len(i.dims) for i in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    return ranks


def op_pattern(node, ranks: dict[str, int]) -> str:
    """What a converter failure is remembered by: op type, input ranks and scalar/short attributes
    ('Col2Im(r3,r1,r1){}'), so the same op used differently is not rejected with it."""
    from onnx import helper

    domain = "" if node.domain == "ai.onnx" else node.domain
    attrs = []
    for a in sorted(node.attribute, key=lambda a: a.name):
        v = helper.get_attribute_value(a)
        v = v.decode(errors="replace") if isinstance(v, bytes) else v
        short = isinstance(v, (int, float, str)) or (isinstance(v, list) and len(v) <= 8 and all(isinstance(x, (int, float)) for x in v))
        attrs.append(f"{a.name}={v}" if short else a.name)
    ins = ",".join(f"r{ranks[i]}" if i in ranks else "?" for i in node.input)
    return f"{domain + '::' if domain else ''}{node.op_type}({ins}){{{';'.join(attrs)}}}"


def _learned_file(converter: str) -> Path:
    from ..cache import default_cache_dir

    return default_cache_dir() / "coverage-learned" / f"{converter}.json"


def _toolchain_key(converter: str) -> tuple[str, dict]:
    from .. import toolchains

    # from the environment the converter runs in (the build's or a toolchain's), so the worker that learns a
    # pattern and the pre-flight that reads it agree
    versions = {k: v for k, v in toolchains.versions("tflite", *LEARNED_TOOLCHAIN[converter]).items() if k != "python"}
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:16], versions


def learned_patterns(converter: str) -> dict:
    """Op patterns the converter failed on before, with this toolchain: pattern -> {node, error, ...}."""
    path = _learned_file(converter)
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table.get(_toolchain_key(converter)[0], {}).get("patterns", {})


def learn(converter: str, onnx_path: Path, node_name: str, error: str) -> str | None:
    """Remember that ``converter`` failed on node ``node_name`` of ``onnx_path`` (its op pattern).
    Returns the pattern, or None when the node is not in that graph."""
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    node = next((n for n in _walk(m.graph.node) if n.name == node_name), None)
    if node is None:
        return None
    pattern = op_pattern(node, tensor_ranks(m.graph))
    key, versions = _toolchain_key(converter)
    path = _learned_file(converter)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        entry = table.setdefault(key, {"toolchain": versions, "patterns": {}})
        entry["patterns"][pattern] = {"node": node_name, "op": node.op_type, "error": error[:400], "model": Path(onnx_path).name,
                                      "converter": converter}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    return pattern

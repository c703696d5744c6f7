"""ExecuTorch lowering: torch.export -> (PT2E int8) -> to_edge_transform_and_lower(XNNPACK) -> .pte.

Runs inside the executorch toolchain's interpreter (torch + executorch, numpy 2): the compile stage
(targets/executorch.py) and its op pre-flight call these functions there. Nothing here touches ONNX.
Every heavy import is inside a function.

Fallbacks, each recorded with its reason: a node the XNNPACK partitioner does not take stays in the
program and runs on ExecuTorch's portable kernels (the partitioner decides per node, nothing is
aborted); if lowering with the partitioner fails as a whole, the program is lowered without it
(portable kernels only); an op outside the Core ATen IR set is let through with the IR check off.
What decides whether the ``.pte`` runs is whether every operator left outside the delegates has a
kernel in the runtime: ``missing_kernels`` checks that against the runtime's own operator registry.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

METHOD = "forward"
# Core ATen view ops: ExecuTorch runs them as their *_copy variant (or as a memory-planned no-op)
_VIEW_SUFFIX = "_copy"
_HIGHER_ORDER = {"executorch_call_delegate", "getitem"}
_NOT_KERNELS = ("aten.sym_", "aten._assert", "aten.alias")  # symbolic sizes and export's asserts: no kernel runs them


def op_name(target) -> str:
    """'aten.cumsum.default' for an ATen/Edge op overload, the function name otherwise."""
    name = getattr(target, "_name", None) or getattr(target, "__name__", None) or str(target)
    overload = getattr(target, "_overloadname", None)
    if "::" in name:  # 'aten::cumsum' (+ overload), or already 'aten::div.Tensor'
        ns, _, rest = name.partition("::")
        name = f"{ns}.{rest}" + (f".{overload}" if overload and "." not in rest else "")
    return name


def export(module, example: tuple):
    """An ExportedProgram of the module (an ExportedProgram source is used as is), static shapes."""
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return module
    with torch.no_grad():
        return torch.export.export(module, tensors(example), strict=False)


def tensors(feed) -> tuple:
    """torch tensors of one feed's numpy arrays (the module's positional arguments)."""
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in feed)


def quantize(ep, example: tuple, feeds: list[tuple], per_channel: bool) -> tuple[object, dict]:
    """PT2E static int8 with the XNNPACK quantizer, calibrated on ``feeds``: (exported program, record)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for feed in feeds:
            prepared(*tensors(feed))
        converted = convert_pt2e(prepared)
    qdq = Counter(op_name(n.target).split(".")[1] for n in converted.graph.nodes
                  if n.op == "call_function" and "quantized_decomposed" in op_name(n.target))
    record = {"quantizer": "XNNPACKQuantizer (PT2E, symmetric int8 weights, int8 activations)", "per_channel": per_channel,
              "calibration_samples": len(feeds), "qdq_nodes": dict(sorted(qdq.items()))}
    return export(converted, example), record


def lower(ep, use_xnnpack: bool = True) -> tuple[Any, dict]:  # Any: executorch ships no type stubs
    """(ExecutorchProgramManager, record): lowered with the XNNPACK partitioner, falling back as the
    module docstring says. The record lists each attempt that failed and why."""
    import copy

    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    _quantized_kernels()
    attempts = []
    if use_xnnpack:
        attempts += [("xnnpack", True, True), ("xnnpack, IR check off", True, False), ("xnnpack per op", "per_op", True)]
    attempts += [("portable kernels only", False, True), ("portable kernels only, IR check off", False, False)]
    fallbacks, last = [], None
    for label, xnnpack, ir_check in attempts:
        if not ir_check and last is not None and not _ir_violation(last):
            continue  # the IR check was not what failed: turning it off changes nothing
        try:
            partitioner = _partitioner(per_op=xnnpack == "per_op") if xnnpack else []
            edge = to_edge_transform_and_lower(copy.deepcopy(ep), partitioner=partitioner,
                                               compile_config=EdgeCompileConfig(_check_ir_validity=ir_check))
            delegation = delegation_summary(edge.exported_program())
            program = edge.to_executorch()
        except Exception as e:  # noqa: BLE001 - recorded, the next attempt runs
            last = e
            fallbacks.append({"lowering": label, "failed_because": _line(e)})
            continue
        return program, {"lowering": label, "fallbacks": fallbacks, "delegation": delegation}
    from ..errors import StageError

    raise StageError("ExecuTorch lowering failed: " + " | ".join(f"{f['lowering']}: {f['failed_because']}" for f in fallbacks),
                     hint="see the stage log; a torch.export failure means the model needs changes to export")


def _partitioner(per_op: bool = False):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return [XnnpackPartitioner(per_op_mode=per_op)]  # per op: one delegate per node (a pass failing on a fused subgraph)


def _quantized_kernels() -> None:
    """Register the out variants of quantize/dequantize (an int8 graph's Q/DQ nodes left outside XNNPACK)."""
    try:
        import executorch.kernels.quantized  # noqa: F401
    except ImportError:  # a build without them: a Q/DQ node outside the delegate then fails to lower, and says so
        pass


def _ir_violation(e: Exception) -> bool:
    return "SpecViolation" in type(e).__name__ or "Aten Canonical" in str(e) or "core ATen" in str(e).lower()


def _line(e: Exception, n: int = 300) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:n] if text else ''}"


def delegation_summary(edge_ep) -> dict:
    """How many of the program's operator nodes the delegates took, per op, and which stayed outside."""
    gm = edge_ep.graph_module
    qdq: Counter = Counter()  # quantize/dequantize nodes: counted apart, not as compute
    delegated: Counter = Counter()
    portable: Counter = Counter()
    subgraphs: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name == "executorch_call_delegate":
            lowered = getattr(gm, node.args[0].target)
            subgraphs[lowered.backend_id] += 1
            for inner in lowered.original_module.graph.nodes:
                if inner.op == "call_function" and op_name(inner.target) not in _HIGHER_ORDER:
                    _count(op_name(inner.target), delegated, qdq, "delegated")
        elif name not in _HIGHER_ORDER:
            _count(name, portable, qdq, "not_delegated")
    total = sum(delegated.values()) + sum(portable.values())
    return {"nodes": total, "delegated_nodes": sum(delegated.values()),
            "delegated_fraction": round(sum(delegated.values()) / total, 4) if total else 0.0,
            "delegates": dict(subgraphs), "delegated_ops": dict(sorted(delegated.items())),
            "not_delegated_ops": dict(sorted(portable.items())), **({"qdq_nodes": dict(sorted(qdq.items()))} if qdq else {})}


def _count(name: str, ops: Counter, qdq: Counter, where: str) -> None:
    if name.startswith("quantized_decomposed."):
        qdq[where] += 1
    else:
        ops[_short(name)] += 1


def _short(name: str) -> str:
    """'aten.convolution.default' -> 'aten.convolution' (the overload adds nothing for a reader)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) >= 3 and parts[-1] == "default" else name


def program_operators(program) -> list[str]:
    """The operators the program calls outside its delegates ('aten::cumsum.out')."""
    ops = []
    for plan in program.executorch_program.execution_plan:
        ops += [f"{o.name}.{o.overload}" if o.overload else o.name for o in plan.operators]
    return sorted(set(ops))


def runtime_kernels() -> set[str]:
    """Operator names with a kernel in this ExecuTorch runtime ('aten::cumsum.out')."""
    from executorch.runtime import Runtime

    return set(Runtime.get().operator_registry.operator_names)


def missing_kernels(operators: list[str]) -> list[str]:
    known = runtime_kernels()
    return [op for op in operators if op not in known]


def run_pte(path: Path, feeds: list[tuple]) -> list[list[np.ndarray]]:
    """Per feed, the program's outputs through the ExecuTorch runtime (what the device runner does)."""
    import torch  # noqa: F401 - imported before the runtime, as the device runner does
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method(METHOD)
    outs = []
    for feed in feeds:
        res = method.execute(list(tensors(feed)))
        outs.append([r.detach().numpy().copy() if hasattr(r, "detach") else np.asarray(r) for r in res])
    return outs


def run_module(module, feeds: list[tuple]) -> list[list[np.ndarray]]:
    import torch

    runnable = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    outs = []
    with torch.no_grad():
        for feed in feeds:
            y = runnable(*tensors(feed))
            y = [y] if isinstance(y, torch.Tensor) else list(y.values()) if isinstance(y, dict) else list(y)
            outs.append([t.detach().numpy() for t in y])
    return outs


# ------------------------------------------------------------------ op pre-flight


def coverage(ep) -> dict:
    """Pre-flight: the exported graph in Core ATen form, each node's op checked for a kernel in the
    runtime (views as their *_copy kernel). Ops the XNNPACK delegate takes need no portable kernel, but
    nearly all have one; an op with neither fails the program's load, so it is reported here.
    Same shape as targets/coverage.py check_graph."""
    decomposed = ep.run_decompositions()
    kernels = runtime_kernels()
    bases = {k.split(".")[0] for k in kernels}
    histogram: Counter = Counter()
    unsupported = []
    for node in decomposed.graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = op_name(node.target)
        if name in _HIGHER_ORDER or not name.startswith("aten.") or name.startswith(_NOT_KERNELS):
            continue
        base = "aten::" + name.split(".")[1]
        histogram[_short(name)] += 1
        if base not in bases and base + _VIEW_SUFFIX not in bases and base.rstrip("_") not in bases:
            unsupported.append({"node": node.name, "op": _short(name), "reason": "no ExecuTorch kernel for this op (portable, optimized or quantized)"})
    return {"table": "ExecuTorch runtime operator registry", "ops": dict(sorted(histogram.items())), "unsupported": unsupported,
            "warnings": [], "kernels": len(kernels)}


def write_program(program, path, hint: str) -> list[str]:
    """Write the lowered program to ``path``; its operators, or a StageError naming those the runtime has no kernel for."""
    from ..errors import StageError

    path.write_bytes(program.buffer)
    operators = program_operators(program)
    missing = missing_kernels(operators)
    if missing:
        raise StageError(f"the ExecuTorch program calls {len(missing)} operator(s) with no kernel in the runtime: {', '.join(missing[:8])}",
                         hint=hint)
    return operators

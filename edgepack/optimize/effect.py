"""What a pass did to a model: size, parameters, sparsity, MACs, latency on this host, accuracy.

Every pass measures its input and its output with the same functions, so the report shows the
effect side by side (``before`` / ``after``). Latency is ONNX Runtime on this host, one thread,
batch 1: a quick indication, not the validation stage's benchmark protocol.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..artifact import size_path

WEIGHT_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> index of its weight input


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


_ORT_TYPES = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}


def _cast(sess, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs in the dtype the model declares (an fp16 model without keep_io_types takes float16)."""
    out = {}
    for i in sess.get_inputs():
        a = arrays[i.name]
        want = _ORT_TYPES.get(i.type)
        out[i.name] = a.astype(want) if want is not None and a.dtype != want else a
    return out


def run_model(path: Path, arrays: dict[str, np.ndarray], batch: int = 256, model=None, recipe_dir: Path | None = None) -> list[np.ndarray]:
    """All outputs of the model (ONNX order) on all samples, fed as the device runner feeds them
    (edgepack/feeding.py: batch axes, constants, stream mode with the state carried -> [S, T, ...]);
    plain batch-axis-0 models with a dynamic first axis are fed ``batch`` samples at a time."""
    from ..feeding import batchable, is_stream_data, onnx_contract, run_onnx

    contract = onnx_contract(path, model, recipe_dir)
    if not batchable(contract, is_stream_data(model, arrays)):
        return list(run_onnx(path, arrays, model, recipe_dir).values())
    sess = _session(path, threads=2)
    sources = {b["name"]: b["source"] for b in contract["inputs"]}
    arrays = _cast(sess, {k: arrays[s] for k, s in sources.items()})
    names = [i.name for i in sess.get_inputs()]
    dynamic = all(not isinstance(i.shape[0], int) for i in sess.get_inputs())
    step = batch if dynamic else 1
    n = len(arrays[names[0]])
    chunks: list[list[np.ndarray]] = []
    for i in range(0, n, step):
        chunks.append(sess.run(None, {k: arrays[k][i : i + step] for k in names}))
    outs = []
    for k in range(len(chunks[0])):
        o = np.concatenate([c[k] for c in chunks], axis=0)
        outs.append(o.astype(np.float32) if o.dtype == np.float16 else o)  # compare fp16 outputs in fp32
    return outs


def latency_ms(path: Path, sample: dict[str, np.ndarray], min_seconds: float = 0.3, max_runs: int = 300) -> dict:
    """p50/p90 of one complete feed (``sample``: keyed by the model's input names; see first_feed)."""
    sess = _session(path, threads=1)
    feed = _cast(sess, sample)
    for _ in range(5):
        sess.run(None, feed)
    times: list[float] = []
    t_end = time.perf_counter() + min_seconds
    while len(times) < max_runs and (len(times) < 20 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4), "runs": len(times)}


def first_feed(path: Path, arrays: dict[str, np.ndarray], model=None, recipe_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The runner's first feed (sample 0, or step 0 of sequence 0 with the initial state): what latency is timed on."""
    from ..devices.runner import first_feeds
    from ..feeding import is_stream_data, onnx_contract

    return first_feeds(onnx_contract(path, model, recipe_dir), arrays, is_stream_data(model, arrays))


def _shape_map(model) -> dict[str, list[int]]:
    """Static shapes of every value (symbolic dims read as 1, i.e. batch 1)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def weight_stats(path: Path) -> dict:
    """Parameters (initializer elements), non-zero weights of Conv/Gemm/MatMul, and MACs at batch 1."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    params = sum(int(np.prod(i.dims)) if i.dims else 1 for i in inits.values())
    weights = zeros = 0
    for node in model.graph.node:
        idx = WEIGHT_OPS.get(node.op_type)
        if idx is not None and len(node.input) > idx and node.input[idx] in inits:
            w = numpy_helper.to_array(inits[node.input[idx]])
            weights += w.size
            zeros += int(np.count_nonzero(w == 0))
    macs: int | str
    try:
        macs = count_macs(model)
    except Exception as e:  # shape inference can fail on exotic graphs; say so instead of guessing
        macs = f"unknown ({e.__class__.__name__})"
    return {
        "params": params,
        "weights": weights,
        "weight_sparsity": round(zeros / weights, 4) if weights else 0.0,
        "macs": macs,
    }


def count_macs(model) -> int:
    shapes = _shape_map(model)
    attrs = lambda n: {a.name: a for a in n.attribute}  # noqa: E731
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            w = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
            out = node.output[0]
            if w in shapes and out in shapes:
                ws = shapes[w]
                total += int(np.prod(shapes[out])) * int(np.prod(ws[1:]))
        elif node.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "MatMulNBits"):
            a = node.input[0]
            out = node.output[0]
            if a in shapes and out in shapes and shapes[a]:
                k = shapes[a][-1]
                if node.op_type == "Gemm" and "transA" in attrs(node) and attrs(node)["transA"].i:
                    k = shapes[a][0]
                total += int(np.prod(shapes[out])) * int(k)
    return total


def scores(outputs: list[np.ndarray], labels: np.ndarray | None, reference: list[np.ndarray] | None) -> dict:
    """top-1 (with labels) and fidelity to the reference outputs (cosine, max abs error, top-1 agreement)."""
    from ..validate.accuracy import fidelity, top1

    out: dict = {"top1": top1(outputs, labels)}
    if reference is not None:
        f = fidelity(reference, outputs)
        out.update(cosine=f["cosine"], max_abs_error=f["max_abs_error"], top1_agreement=f["top1_agreement"])
        # mean squared error of the first output: a fine-grained tie-breaker for sensitivity ranking
        r0, o0 = np.asarray(reference[0], dtype=np.float64), np.asarray(outputs[0], dtype=np.float64)
        out["mse"] = float(np.mean((r0 - o0) ** 2)) if r0.shape == o0.shape else None
    return out


def named_metrics(path: Path, specs, outputs: list[np.ndarray], labels, reference: list[np.ndarray] | None, base_dir) -> dict:
    """The recipe's `evaluate:` metrics on these outputs ({name: {value, higher_is_better}}; edgepack/validate/metrics.py)."""
    import onnx

    from ..validate.metrics import compute_metrics

    names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    res = compute_metrics(specs, dict(zip(names, outputs)), labels,
                          reference=dict(zip(names, reference)) if reference is not None else None, base_dir=base_dir)
    return {k: {"value": v.get("value"), "higher_is_better": v.get("higher_is_better")} for k, v in res.items()}


def measure(path: Path, validation: Path | None, reference: list[np.ndarray] | None = None, latency: bool = True,
            specs=(), base_dir: Path | None = None, model=None) -> tuple[dict, list | None]:
    """Effect record of one model, and its outputs on the validation inputs (None without data).
    ``model`` (the recipe's model section; ``base_dir`` its directory) says how inputs are fed."""
    from ..data import read_npz

    rec: dict = {"size_bytes": size_path(path), **weight_stats(path)}
    outputs = None
    if validation is not None:
        arrays, labels = read_npz(validation)
        outputs = run_model(path, arrays, model=model, recipe_dir=base_dir)
        rec["accuracy"] = scores(outputs, labels, reference)
        if specs:
            from ..data import read_data

            rec["metrics"] = named_metrics(path, specs, outputs, read_data(validation)[1], reference, base_dir)
        if latency:
            rec["latency"] = latency_ms(path, first_feed(path, arrays, model, base_dir))
    return rec, outputs


def budget_check(before: dict, after: dict, gates, where: str) -> dict | None:
    """A pass's budget: top-1 vs its input's against gates.max_accuracy_drop, and every named metric with a
    `gates.metrics.NAME.max_drop` (the same numbers the build's gates use); raise unless waived."""
    res = _top1_budget(before, after, gates, where)
    named = _metric_budgets(before, after, gates, where)
    if named:
        res = {**res, "metrics": named}
    return res


def _metric_budgets(before: dict, after: dict, gates, where: str) -> dict:
    from ..errors import StageError

    out = {}
    for name, g in (getattr(gates, "metrics", None) or {}).items():
        b, a = (before.get("metrics") or {}).get(name), (after.get("metrics") or {}).get(name)
        if g.max_drop is None or a is None or b is None or a["value"] is None or b["value"] is None:
            continue
        from ..validate.metrics import drop

        d = drop(a["value"], b["value"], a["higher_is_better"])
        if d is None:  # both values were checked above
            continue
        r = out[name] = {"before": b["value"], "after": a["value"], "drop": round(d, 6), "max_drop": g.max_drop, "met": d <= g.max_drop + 1e-12}
        if not r["met"]:
            if f"metrics.{name}" in getattr(gates, "waive", []):
                r["waived"] = True
                continue
            raise StageError(f"{name} went from {b['value']:.4f} to {a['value']:.4f} (drop {d:.4f} > gates.metrics.{name}.max_drop {g.max_drop:g})",
                             hint=f"lower the pass's strength, use accuracy_aware: {{metric: {name}, max_drop: ...}}, or waive metrics.{name}", where=where)
    return out


def _top1_budget(before: dict, after: dict, gates, where: str) -> dict:
    from ..errors import StageError

    limit = getattr(gates, "max_accuracy_drop", None)
    b = (before.get("accuracy") or {}).get("top1")
    a = (after.get("accuracy") or {}).get("top1")
    if limit is None or a is None or b is None:
        reason = "no gates.max_accuracy_drop" if limit is None else "no labelled data.validation"
        return {"checked": False, "reason": reason}
    drop = b - a
    res = {"checked": True, "top1_before": b, "top1_after": a, "drop": round(drop, 6), "max_accuracy_drop": limit, "met": drop <= limit + 1e-12}
    if not res["met"]:
        if "max_accuracy_drop" in getattr(gates, "waive", []):
            res["waived"] = True
            return res
        raise StageError(
            f"top-1 fell from {b:.4f} to {a:.4f} (drop {drop:.4f} > gates.max_accuracy_drop {limit:g})",
            hint="lower the pass's strength, fine-tune longer, or waive the gate by name in gates.waive", where=where
        )
    return res

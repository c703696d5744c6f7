"""Accuracy-aware quantization: keep the most sensitive nodes in float until the budget is met.

1. Quantize everything; if the metric's drop vs FP32 is within the budget, stop.
2. Sensitivity: for each candidate node, quantize everything except that node and measure the drop
   (ties broken by the mean squared error of the first output against FP32).
3. Search: keep the most sensitive node in float, re-quantize, measure; add the next one; stop as
   soon as the budget is met. If it never is (or ``max_float_nodes`` is reached) the pass fails and
   names the best configuration it found.

The record lists every node kept in float with its measured effect, and every search step.

Cost (issue 12 item 5; :class:`SearchSpeed`): static trials reuse the quantized initializers
(edgepack/optimize/quant_reuse.py: byte-identical to quantizing from scratch); a candidate that cannot
change the quantized model is recorded as ``skipped`` with its reason and the fully quantized result
(a Clip/Relu the quantizer folded into its producer, or a trial whose bytes equal the full model's);
the other candidates are evaluated on ``jobs`` threads (ONNX Runtime releases the GIL), collected in
candidate order. Chosen nodes and model bytes are the serial search's (tests/test_search_reuse.py).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInputError, PassFailedError
from ..progress_hooks import report
from ..recipe import AccuracyAware, AccuracyMetric
from .effect import run_model, scores

BUILTINS = tuple(m.value for m in AccuracyMetric)  # the historical metric values, still accepted by name


class _Evaluator:
    """Scores a model on the validation set with the search's metric: a named `evaluate:` metric
    (edgepack/validate/metrics.py, the same numbers as the build's gates) or a builtin."""

    def __init__(self, validation: Path, reference: list[np.ndarray], cfg: AccuracyAware, where: str,
                 specs=(), output_names: list[str] | None = None, base_dir: Path | None = None, model=None):
        from ..data import read_data, read_npz

        self.arrays, self.labels = read_npz(validation)
        self.label_sets = read_data(validation)[1]  # every named label set, for `evaluate:` metrics
        self.reference = reference
        self.cfg = cfg
        self.specs, self.names, self.base_dir = list(specs), output_names or [f"output_{k}" for k in range(len(reference))], base_dir
        self.model = model  # the recipe's model section: how inputs are fed (edgepack/feeding.py)
        self.named = named_metric(cfg.metric, self.specs)
        self.higher_is_better = True
        if self.named is None and cfg.metric == AccuracyMetric.TOP1.value:
            if self.labels is None:
                raise BadInputError(f"{where}.accuracy_aware.metric: 'top1' needs labels in data.validation",
                                    hint="give labels, or use metric: cosine / top1_agreement / max_abs_error")
            if scores(reference, self.labels, None)["top1"] is None:
                raise BadInputError(f"{where}.accuracy_aware.metric: 'top1' needs a classifier output [N, classes]", hint="use metric: cosine or max_abs_error")
        self.fp32, _ = self.score(reference)
        # scale for relative budgets (max_abs_error is relative to the largest reference magnitude)
        self.scale = float(np.max(np.abs(reference[0]))) if cfg.metric == AccuracyMetric.MAX_ABS_ERROR.value and self.named is None else abs(self.fp32)

    def score(self, outputs: list[np.ndarray]) -> tuple[float, float | None]:
        """(score, mse): the metric with higher = better (lower-is-better metrics are negated)."""
        s = scores(outputs, self.labels, self.reference)
        if self.named is not None:
            from ..validate.metrics import compute_metrics

            named = lambda outs: dict(zip(self.names, outs))  # noqa: E731
            res = compute_metrics(self.named, named(outputs), self.label_sets, reference=named(self.reference), base_dir=self.base_dir)[self.cfg.metric]
            self.higher_is_better = bool(res["higher_is_better"])
            value = float(res["value"])
            return (value if self.higher_is_better else -value), s.get("mse")
        if self.cfg.metric == AccuracyMetric.MAX_ABS_ERROR.value:
            return -float(s["max_abs_error"]), s.get("mse")
        return float(s[self.cfg.metric]), s.get("mse")

    def __call__(self, path: Path) -> dict:
        value, mse = self.score(run_model(path, self.arrays, model=self.model, recipe_dir=self.base_dir))
        drop = self.fp32 - value
        if self.cfg.relative:
            drop = drop / self.scale if self.scale > 0 else float("inf") if drop > 0 else 0.0
        shown = value if self.higher_is_better else -value  # the metric's own value in the record
        return {"score": round(shown, 6), "drop": round(drop, 6), "mse": mse, "met": drop <= self.cfg.max_drop + 1e-12}


def named_metric(name: str, specs) -> list | None:
    """The `evaluate:` spec(s) that produce ``name`` (an id, or any user function, which may return several names)."""
    specs = list(specs or [])
    exact = [m for m in specs if m.id == name]
    if exact:
        return exact
    if name in BUILTINS:
        return None
    fns = [m for m in specs if getattr(m, "fn", None)]
    return fns or None


@dataclass(frozen=True)
class SearchSpeed:
    """How the search spends time; the chosen nodes and the model bytes do not depend on it (tests/test_search_reuse.py)."""

    jobs: int | None = None  # candidates evaluated at once (threads); None: the number of cores
    reuse: bool = True  # static: quantized initializers reused across trials (edgepack/optimize/quant_reuse.py)
    skip: bool = True  # candidates that cannot change the quantized model are recorded as skipped, not evaluated


SPEED = SearchSpeed()
LEGACY = SearchSpeed(jobs=1, reuse=False, skip=False)  # the search before issue 12 item 5: for tests and benchmarks
FOLDABLE = ("Clip", "Relu")  # activations ORT's quantizer folds into their producer's output range


def jobs_for(speed: SearchSpeed) -> int:
    if speed.jobs:
        return max(1, speed.jobs)
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


def search(
    quantize: Callable[[list[str], Path], None],
    candidates: list[str],
    model_in: Path,
    validation: Path,
    reference: list[np.ndarray],
    cfg: AccuracyAware,
    out: Path,
    workdir: Path,
    where: str,
    specs=(),
    base_dir: Path | None = None,
    model=None,
    speed: SearchSpeed | None = None,
) -> dict:
    import onnx

    speed = speed or SPEED
    graph = onnx.load(str(model_in), load_external_data=False)
    ev = _Evaluator(validation, reference, cfg, where, specs, [o.name for o in graph.graph.output], base_dir, model)
    op_of = {n.name: n.op_type for n in graph.graph.node}
    rec: dict = {
        "metric": cfg.metric,
        "metric_source": "evaluate" if ev.named is not None else "builtin",
        "higher_is_better": ev.higher_is_better,
        "relative": cfg.relative,
        "max_drop": cfg.max_drop,
        "fp32_score": round(ev.fp32 if ev.higher_is_better else -ev.fp32, 6),
        "candidates": len(candidates),
    }
    trial = workdir / "trial.onnx"
    quantize([], trial)
    full = ev(trial)
    rec["all_quantized"] = full
    if full["met"]:
        shutil.move(trial, out)
        rec.update(float_nodes=[], steps=[], result=full, note="the fully quantized model meets the budget: no node kept in float")
        return rec

    t0 = time.perf_counter()
    sens = _sensitivity(quantize, candidates, ev, full, trial, op_of, speed, workdir, rec)
    rec["sensitivity"] = sens
    t1 = time.perf_counter()
    best, steps = _steps(quantize, sens, ev, full, cfg, workdir, speed)
    rec["seconds"] = {"sensitivity": round(t1 - t0, 3), "steps": round(time.perf_counter() - t1, 3)}
    trial.unlink(missing_ok=True)
    rec["steps"] = steps
    return _conclude(rec, sens, steps, best, full, cfg, out, where)


def _sensitivity(quantize, candidates, ev, full, trial: Path, op_of: dict, speed: SearchSpeed, workdir: Path, rec: dict) -> list[dict]:
    """Each candidate kept in float alone, everything else quantized: its drop (sorted, most useful first).
    Evaluated ``jobs`` at a time; each result depends only on its candidate, so the order is the serial one."""
    full_bytes = trial.read_bytes() if speed.skip else b""
    folded = _folded(trial, candidates, op_of) if speed.skip else {}

    def one(k: int, name: str) -> dict:
        e = {"node": name, "op_type": op_of.get(name)}
        reason, r = folded.get(name), None
        if reason is None:
            path = workdir / f"candidate_{k}.onnx"
            quantize([name], path)
            if speed.skip and path.read_bytes() == full_bytes:
                reason = "keeping it in float leaves the quantized model byte-identical (the quantizer does not touch it)"
            else:
                r = ev(path)
            path.unlink(missing_ok=True)
        if r is None:  # skipped: the fully quantized model's result, exactly (the same model or the same values)
            return {**e, "drop_when_kept_float": full["drop"], "mse_when_kept_float": full["mse"], "gain": 0.0, "skipped": reason}
        return {**e, "drop_when_kept_float": r["drop"], "mse_when_kept_float": r["mse"], "gain": round(full["drop"] - r["drop"], 6)}

    done, lock = [0], threading.Lock()

    def counted(k: int, name: str) -> dict:  # progress: candidates finished so far (any order)
        e = one(k, name)
        with lock:
            done[0] += 1
            report("candidates", done[0], len(candidates), drop=e["drop_when_kept_float"])
        return e

    jobs = min(jobs_for(speed), max(1, len(candidates)))
    rec["jobs"] = jobs
    if jobs == 1:
        sens = [counted(k, n) for k, n in enumerate(candidates)]
    else:
        with ThreadPoolExecutor(jobs, thread_name_prefix="edgepack-search") as pool:
            sens = list(pool.map(counted, range(len(candidates)), candidates))
    rec["skipped"] = sum(1 for e in sens if "skipped" in e)
    sens.sort(key=lambda e: (e["drop_when_kept_float"], e["mse_when_kept_float"] if e["mse_when_kept_float"] is not None else 0.0))
    return sens


def _folded(full_model: Path, candidates: list[str], op_of: dict) -> dict[str, str]:
    """Clip/Relu candidates the quantizer removed from the fully quantized model: their input is
    quantized with their output's range (ORT folds them into the producer), so keeping one in float
    only adds a float Clip/Relu between a DequantizeLinear and a QuantizeLinear of that same range,
    which changes no value."""
    import onnx

    present = {n.name for n in onnx.load(str(full_model), load_external_data=False).graph.node}
    return {n: f"{op_of[n]} folded into its producer's quantization in the fully quantized model: keeping it in float changes no value"
            for n in candidates if op_of.get(n) in FOLDABLE and n not in present}


def _steps(quantize, sens: list[dict], ev, full: dict, cfg: AccuracyAware, workdir: Path, speed: SearchSpeed):
    """Keep the most sensitive nodes in float one more at a time until the budget is met."""
    limit = min(len(sens), cfg.max_float_nodes or len(sens))
    steps: list[dict] = []
    best: tuple[float, list[str], Path | None] = (full["drop"], [], None)  # (drop, float nodes, path)
    prev_drop = full["drop"]
    prev_bytes: bytes | None = None
    prev: dict | None = None
    for k in range(1, limit + 1):
        kept = [e["node"] for e in sens[:k]]
        step_path = workdir / f"step_{k}.onnx"
        quantize(kept, step_path)
        data = step_path.read_bytes() if speed.skip else None
        r = prev if prev is not None and data is not None and data == prev_bytes else ev(step_path)  # same bytes: same result
        prev_bytes, prev = data, r
        report("float nodes", k, limit, drop=r["drop"])
        steps.append({"step": k, "added": kept[-1], "float_nodes": len(kept), "score": r["score"], "drop": r["drop"], "effect": round(prev_drop - r["drop"], 6), "met": r["met"]})
        prev_drop = r["drop"]
        if r["drop"] < best[0]:
            if best[2] is not None:
                best[2].unlink(missing_ok=True)
            best = (r["drop"], kept, step_path)
        else:
            step_path.unlink(missing_ok=True)
        if r["met"]:
            break
    return best, steps


def _conclude(rec: dict, sens: list[dict], steps: list[dict], best, full: dict, cfg: AccuracyAware, out: Path, where: str) -> dict:
    by_node = {e["node"]: e for e in sens}
    step_of = {s["added"]: s for s in steps}
    rec["float_nodes"] = [
        {
            "node": n,
            "op_type": by_node[n]["op_type"],
            "drop_when_only_this_kept_float": by_node[n]["drop_when_kept_float"],
            "effect_in_search": step_of[n]["effect"] if n in step_of else None,
            "reason": f"kept in float: fully quantized drop {full['drop']:.4g} > budget {cfg.max_drop:g}; this node alone in float gives {by_node[n]['drop_when_kept_float']:.4g}",
        }
        for n in best[1]
    ]
    met = bool(steps) and steps[-1]["met"]
    rec["result"] = {"drop": best[0], "met": met, "float_nodes": len(best[1])}
    if not met:
        names = ", ".join(best[1][:8]) + (" ..." if len(best[1]) > 8 else "")
        raise PassFailedError(
            f"{where}.accuracy_aware: no configuration meets {cfg.metric} drop <= {cfg.max_drop:g}; "
            f"best found: drop {best[0]:.4g} with {len(best[1])} node(s) in float ({names or 'none'}), fully quantized drop {full['drop']:.4g}",
            hint="raise max_drop or max_float_nodes, try per_channel / calibration: entropy / percentile, or use more calibration data",
            record=rec,
        )
    shutil.move(best[2], out)
    return rec

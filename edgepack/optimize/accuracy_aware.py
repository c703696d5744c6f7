"""Accuracy-aware quantization: keep the most sensitive nodes in float until the budget is met.

1. Quantize everything; if the metric's drop vs FP32 is within the budget, stop.
2. Sensitivity: for each candidate node, quantize everything except that node and measure the drop
   (ties broken by the mean squared error of the first output against FP32).
3. Search: keep the most sensitive node in float, re-quantize, measure; add the next one; stop as
   soon as the budget is met. If it never is (or ``max_float_nodes`` is reached) the pass fails and
   names the best configuration it found.

The record lists every node kept in float with its measured effect, and every search step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BadInputError, PassFailedError
from ..recipe import AccuracyAware, AccuracyMetric
from .effect import run_model, scores


class _Evaluator:
    def __init__(self, validation: Path, reference: list[np.ndarray], cfg: AccuracyAware, where: str):
        from ..data import read_npz

        self.arrays, self.labels = read_npz(validation)
        self.reference = reference
        self.cfg = cfg
        if cfg.metric is AccuracyMetric.TOP1:
            if self.labels is None:
                raise BadInputError(f"{where}.accuracy_aware.metric: 'top1' needs labels in data.validation", hint="give labels, or use metric: cosine / top1_agreement / max_abs_error")
            if scores(reference, self.labels, None)["top1"] is None:
                raise BadInputError(f"{where}.accuracy_aware.metric: 'top1' needs a classifier output [N, classes]", hint="use metric: cosine or max_abs_error")
        self.fp32 = self.score(scores(reference, self.labels, reference))
        # scale for relative budgets (max_abs_error is relative to the largest reference magnitude)
        self.scale = float(np.max(np.abs(reference[0]))) if cfg.metric is AccuracyMetric.MAX_ABS_ERROR else abs(self.fp32)

    def score(self, s: dict) -> float:
        m = self.cfg.metric
        if m is AccuracyMetric.MAX_ABS_ERROR:
            return -float(s["max_abs_error"])
        return float(s[m.value])

    def __call__(self, path: Path) -> dict:
        s = scores(run_model(path, self.arrays), self.labels, self.reference)
        value = self.score(s)
        drop = self.fp32 - value
        if self.cfg.relative:
            drop = drop / self.scale if self.scale > 0 else float("inf") if drop > 0 else 0.0
        return {"score": round(value, 6), "drop": round(drop, 6), "mse": s.get("mse"), "met": drop <= self.cfg.max_accuracy_drop + 1e-12}


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
) -> dict:
    import onnx

    ev = _Evaluator(validation, reference, cfg, where)
    op_of = {n.name: n.op_type for n in onnx.load(str(model_in), load_external_data=False).graph.node}
    rec: dict = {
        "metric": cfg.metric.value,
        "relative": cfg.relative,
        "max_accuracy_drop": cfg.max_accuracy_drop,
        "fp32_score": round(ev.fp32, 6),
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

    sens = []
    for name in candidates:
        quantize([name], trial)
        r = ev(trial)
        sens.append({"node": name, "op_type": op_of.get(name), "drop_when_kept_float": r["drop"], "mse_when_kept_float": r["mse"], "gain": round(full["drop"] - r["drop"], 6)})
    sens.sort(key=lambda e: (e["drop_when_kept_float"], e["mse_when_kept_float"] if e["mse_when_kept_float"] is not None else 0.0))
    rec["sensitivity"] = sens

    limit = min(len(sens), cfg.max_float_nodes or len(sens))
    steps: list[dict] = []
    best = (full["drop"], [], None)  # (drop, float nodes, path)
    prev_drop = full["drop"]
    for k in range(1, limit + 1):
        kept = [e["node"] for e in sens[:k]]
        step_path = workdir / f"step_{k}.onnx"
        quantize(kept, step_path)
        r = ev(step_path)
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
    trial.unlink(missing_ok=True)
    rec["steps"] = steps
    by_node = {e["node"]: e for e in sens}
    step_of = {s["added"]: s for s in steps}
    rec["float_nodes"] = [
        {
            "node": n,
            "op_type": by_node[n]["op_type"],
            "drop_when_only_this_kept_float": by_node[n]["drop_when_kept_float"],
            "effect_in_search": step_of[n]["effect"] if n in step_of else None,
            "reason": f"kept in float: fully quantized drop {full['drop']:.4g} > budget {cfg.max_accuracy_drop:g}; this node alone in float gives {by_node[n]['drop_when_kept_float']:.4g}",
        }
        for n in best[1]
    ]
    met = bool(steps) and steps[-1]["met"]
    rec["result"] = {"drop": best[0], "met": met, "float_nodes": len(best[1])}
    if not met:
        names = ", ".join(best[1][:8]) + (" ..." if len(best[1]) > 8 else "")
        raise PassFailedError(
            f"{where}.accuracy_aware: no configuration meets {cfg.metric.value} drop <= {cfg.max_accuracy_drop:g}; "
            f"best found: drop {best[0]:.4g} with {len(best[1])} node(s) in float ({names or 'none'}), fully quantized drop {full['drop']:.4g}",
            hint="raise max_accuracy_drop or max_float_nodes, try per_channel / calibration: entropy / percentile, or use more calibration data",
            record=rec,
        )
    shutil.move(best[2], out)
    return rec

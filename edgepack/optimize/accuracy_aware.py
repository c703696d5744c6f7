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
                raise BadInputError(f"{where}.accuracy_aware.metric: 'top1' needs labels in data.validation", hint="give labels, or use metric: cosine / top1_agreement / max_abs_error")
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
) -> dict:
    import onnx

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

"""The accuracy record of one run (FP32 or a target on a device): every metric, its FP32 value and drop, fidelity."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .fidelity import distribution, fidelity
from .metrics import MetricError, compute_one, drop, primary_name


def metrics_config(specs, base_dir) -> list:
    """What the metrics depend on, for stage cache keys: the specs and the source of user functions."""
    from ..entrypoints import module_file
    from ..recipe_evaluate import FnMetric

    out = []
    for m in specs:
        d = m.model_dump(mode="json")
        fns = [m.fn] if isinstance(m, FnMetric) else []
        if getattr(getattr(m, "decode", None), "fn", None):
            fns.append(m.decode.fn)
        charset = getattr(getattr(m, "decode", None), "charset", None)
        files = [module_file(f, Path(base_dir or ".")) for f in fns]
        if charset and base_dir is not None:
            files.append(base_dir / charset)
        d["_sources"] = [hashlib.sha256(f.read_bytes()).hexdigest() if f is not None and f.is_file() else None for f in files]
        out.append(d)
    return out


def compute_all(specs, outputs: dict, labels, reference: dict | None, base_dir, strict: bool) -> dict:
    """{name: result}; strict=False records a metric that cannot be computed as value None + error."""
    from .metrics import _label_dict

    labels = _label_dict(labels)
    ref = outputs if reference is None else reference
    res: dict = {}
    for spec in specs:
        try:
            res.update(compute_one(spec, outputs, labels, ref, base_dir))
        except MetricError as e:
            if strict:
                raise
            res[spec.id] = {"value": None, "higher_is_better": spec.higher(), "per_sample": None, "error": e.one_line()}
    return res


def report_entry(result: dict, reference_result: dict | None) -> dict:
    """A metric as report.json shows it: value, FP32 value, drop, per-sample summary (raw list when small)."""
    entry = {k: v for k, v in result.items() if k != "per_sample"}
    if reference_result is not None:
        entry["reference"] = reference_result.get("value")
        entry["drop"] = drop(result.get("value"), reference_result.get("value"), result["higher_is_better"])
    if result.get("per_sample") is not None:
        entry["per_sample"] = distribution(result["per_sample"])
    return entry


def reference_metrics(specs, reference: dict, labels, base_dir) -> dict:
    """Every metric on the FP32 outputs (raises MetricError: a metric that fails on FP32 is a recipe/data error)."""
    return compute_all(specs, reference, labels, None, base_dir, strict=True)


def score_outputs(specs, outputs: dict, labels, reference: dict | None, base_dir) -> dict:
    """The 'accuracy' record of a target on a device."""
    specs = list(specs or [])
    acc: dict = {}
    ref_res = compute_all(specs, reference, labels, None, base_dir, strict=False) if reference is not None else {}
    res = compute_all(specs, outputs, labels, reference, base_dir, strict=False)
    acc["metrics"] = {k: report_entry(v, ref_res.get(k)) for k, v in res.items()}
    acc["primary"] = primary_name(specs)
    if reference is not None:
        acc["fidelity"] = fidelity(reference, outputs)
    top1 = next((m.id for m in specs if getattr(m, "type", None) == "top1"), None)
    if top1 is not None:  # the historical keys (summary, registry index)
        acc["top1"] = res[top1]["value"]
        if top1 in ref_res:
            acc["reference_top1"] = ref_res[top1]["value"]
            acc["accuracy_drop"] = acc["metrics"][top1].get("drop")
    return acc


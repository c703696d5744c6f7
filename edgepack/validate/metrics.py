"""Task metrics (`evaluate:` in the recipe): the one module that turns model outputs into numbers.

    results = compute_metrics(specs, outputs, labels, reference=ref_or_None, base_dir=recipe_dir)
    -> {name: {"value": float | None, "higher_is_better": bool, "per_sample": list[float] | None, ...}}

``outputs`` / ``reference``: ``dict[output_name, ndarray]`` (samples on axis 0). ``labels``:
``dict[label_set, ndarray]`` (or one array, taken as the set "labels", or None). Metrics that compare with the
FP32 outputs use ``reference``; when it is None (the FP32 run itself) the outputs are their own reference.
Fidelity helpers (cosine, abs error) live in fidelity.py and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..recipe_evaluate import FnMetric
from . import text
from .fidelity import (  # noqa: F401  (re-exported: one import point for numbers)
    abs_errors,
    aggregate,
    centred_cosine_rows,
    cosine,
    cosine_gate_value,
    cosine_rows,
    distribution,
    fidelity,
    is_classifier,
    max_abs_error,
)
from .tokens import TYPES as TOKEN_TYPES  # computed from generation runs, not from outputs

PSNR_CAP = 200.0  # dB reported for identical arrays (no infinity in report.json)


class MetricError(BadInputError):
    """A metric that cannot be computed from these outputs/labels (a recipe or data problem)."""


def primary_name(specs) -> str | None:
    """The primary metric: the one marked `primary: true`, else the first listed."""
    specs = list(specs or [])
    return next((m.id for m in specs if m.primary), specs[0].id if specs else None)


def drop(value, reference_value, higher_is_better: bool) -> float | None:
    """How much worse than FP32 (positive = worse), in the metric's own units."""
    if value is None or reference_value is None:
        return None
    return float(reference_value - value) if higher_is_better else float(value - reference_value)


def _label_dict(labels) -> dict:
    if labels is None:
        return {}
    if isinstance(labels, dict):
        return labels
    return {"labels": np.asarray(labels)}


def pick_output(spec, outputs: dict) -> str:
    if spec.output:
        if spec.output not in outputs:
            raise MetricError(f"evaluate '{spec.id}': the model has no output '{spec.output}' (outputs: {', '.join(outputs)})")
        return spec.output
    if len(outputs) == 1:
        return next(iter(outputs))
    raise MetricError(f"evaluate '{spec.id}': the model has outputs {', '.join(outputs)}: name one with 'output:'")


def pick_labels(spec, labels: dict) -> np.ndarray:
    if spec.labels:
        if spec.labels not in labels:
            raise MetricError(f"evaluate '{spec.id}': no label set '{spec.labels}' (label sets: {', '.join(labels) or 'none'})")
        return np.asarray(labels[spec.labels])
    if len(labels) == 1:
        return np.asarray(next(iter(labels.values())))
    if not labels:
        raise MetricError(f"evaluate '{spec.id}': needs labels (data.validation.labels)")
    raise MetricError(f"evaluate '{spec.id}': the data has label sets {', '.join(labels)}: name one with 'labels:'")


def _result(spec, value, per_sample=None, **extra) -> dict:
    out = {"value": None if value is None else float(value), "higher_is_better": spec.higher(),
           "per_sample": None if per_sample is None else [float(x) for x in np.asarray(per_sample).reshape(-1)]}
    out.update(extra)
    return out


# ---------------------------------------------------------------- builtins


def _classes(spec, o: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if o.ndim != 2 or o.shape[1] < 2:
        raise MetricError(f"evaluate '{spec.id}': needs a classifier output [N, classes], got shape {list(o.shape)}")
    return o, y.reshape(len(y), -1)[:, 0].astype(np.int64)


def _top1(spec, o, y):
    o, y = _classes(spec, o, y)
    hit = (o.argmax(1) == y).astype(np.float64)
    return _result(spec, hit.mean(), hit)


def _topk(spec, o, y):
    o, y = _classes(spec, o, y)
    k = min(spec.k, o.shape[1])
    top = np.argsort(-o, axis=1, kind="stable")[:, :k]
    hit = np.any(top == y[:, None], axis=1).astype(np.float64)
    return _result(spec, hit.mean(), hit, k=k)


def per_step(o, y):
    """Stream mode with per-step labels ([S, T] labels, [S, T, ...] scores): one row per step ([S*T, ...], [S*T])."""
    o, y = np.asarray(o), np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1 and o.ndim >= 2 and o.shape[:2] == y.shape:
        return o.reshape(-1, *o.shape[2:]), y.reshape(-1)
    return o, y


def positive_scores(spec, o: np.ndarray) -> np.ndarray:
    """The positive-class score per sample from [N], [N,1] or [N,2] outputs (probabilities after `scores: logit`)."""
    o = np.asarray(o, dtype=np.float64)
    if o.ndim == 1 or (o.ndim == 2 and o.shape[1] == 1):
        s = o.reshape(-1)
        return 1.0 / (1.0 + np.exp(-s)) if spec.scores == "logit" else s
    if o.ndim == 2 and o.shape[1] == 2:
        if spec.positive > 1:
            raise MetricError(f"evaluate '{spec.id}': positive {spec.positive} is not a column of a [N, 2] output")
        if spec.scores == "logit":
            e = np.exp(o - o.max(axis=1, keepdims=True))
            o = e / e.sum(axis=1, keepdims=True)
        return o[:, spec.positive]
    raise MetricError(f"evaluate '{spec.id}': needs [N], [N, 1] or [N, 2] scores, got shape {list(o.shape)}")


def _truth(spec, o, y) -> np.ndarray:
    y = np.asarray(y).reshape(len(y), -1)[:, 0]
    two = np.ndim(o) == 2 and np.shape(o)[1] == 2
    return (y.astype(np.int64) == spec.positive) if two else (y.astype(np.float64) > 0.5)


def _binary_accuracy(spec, o, y):
    o, y = per_step(o, y)
    pred = positive_scores(spec, o) >= spec.threshold
    hit = (pred == _truth(spec, o, y)).astype(np.float64)
    return _result(spec, hit.mean(), hit)


def _f1(spec, o, y):
    o, y = per_step(o, y)
    pred, t = positive_scores(spec, o) >= spec.threshold, _truth(spec, o, y)
    tp, fp, fn = int(np.sum(pred & t)), int(np.sum(pred & ~t)), int(np.sum(~pred & t))
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return _result(spec, f1, None, tp=tp, fp=fp, fn=fn)


def _roc_auc(spec, o, y):
    o, y = per_step(o, y)
    s, t = positive_scores(spec, o), _truth(spec, o, y)
    npos, nneg = int(t.sum()), int((~t).sum())
    if not npos or not nneg:
        raise MetricError(f"evaluate '{spec.id}': roc_auc needs both positive and negative labels ({npos} positive, {nneg} negative)")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    auc = (ranks[t].sum() - npos * (npos + 1) / 2) / (npos * nneg)
    return _result(spec, auc, None)


def _target(spec, o, y, reference, out_name):
    """What a regression / embedding metric compares with: the label array or the FP32 output."""
    other = reference[out_name] if spec.against == "reference" else y
    other = np.asarray(other, dtype=np.float64)
    if other.size != np.size(o):
        raise MetricError(f"evaluate '{spec.id}': {spec.against} have shape {list(other.shape)}, output '{out_name}' has {list(np.shape(o))}")
    return np.asarray(o, np.float64).reshape(len(o), -1), other.reshape(len(o), -1)


def _mse(spec, o, y, reference, out_name):
    a, b = _target(spec, o, y, reference, out_name)
    per = np.mean((a - b) ** 2, axis=1)
    return _result(spec, per.mean(), per)


def _psnr_of(mse, peak):
    with np.errstate(divide="ignore"):
        v = 10 * np.log10(peak**2 / np.asarray(mse, dtype=np.float64))
    return np.minimum(v, PSNR_CAP)


def _psnr(spec, o, y, reference, out_name):
    a, b = _target(spec, o, y, reference, out_name)
    per = np.mean((a - b) ** 2, axis=1)
    return _result(spec, _psnr_of(per.mean(), spec.max_value), _psnr_of(per, spec.max_value))


def _embedding_cosine(spec, o, y, reference, out_name):
    a, b = _target(spec, o, y, reference, out_name)
    per = cosine_rows(a, b)
    return _result(spec, per.mean(), per)


def _unit(a):
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def _recall_at_k(spec, o, y, reference, out_name):
    q = _unit(o)
    k = min(spec.k, len(q))
    if spec.against == "labels" and np.asarray(y).ndim == 1:  # class labels: a same-class neighbour in the top k
        sim = q @ q.T
        np.fill_diagonal(sim, -np.inf)
        k = min(spec.k, len(q) - 1)
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        hit = np.any(np.asarray(y)[top] == np.asarray(y)[:, None], axis=1).astype(np.float64)
        return _result(spec, hit.mean(), hit, k=k)
    g = _unit(_target(spec, o, y, reference, out_name)[1])
    top = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]
    hit = np.any(top == np.arange(len(q))[:, None], axis=1).astype(np.float64)
    return _result(spec, hit.mean(), hit, k=k)


def _fidelity_metric(spec, o, reference, out_name):
    r = np.asarray(reference[out_name])
    if r.shape != np.shape(o):
        raise MetricError(f"evaluate '{spec.id}': output '{out_name}' has shape {list(np.shape(o))}, FP32 has {list(r.shape)}")
    if spec.type == "cosine":
        per = centred_cosine_rows(r, o) if spec.centred else cosine_rows(r, o)
        return _result(spec, per.mean(), per, centred=spec.centred)
    if spec.type == "max_abs_error":
        per = abs_errors(r, o)
        return _result(spec, per.max() if per.size else 0.0, per)
    if spec.type == "mean_abs_error":
        per = np.abs(r.astype(np.float64) - np.asarray(o, np.float64)).reshape(len(r), -1).mean(axis=1)
        return _result(spec, per.mean(), per)
    if not is_classifier(r):
        raise MetricError(f"evaluate '{spec.id}': top1_agreement needs a classifier output [N, classes], '{out_name}' is {list(r.shape)}")
    per = (r.argmax(1) == np.asarray(o).argmax(1)).astype(np.float64)
    return _result(spec, per.mean(), per)


LABELLED = {"top1": _top1, "topk": _topk, "binary_accuracy": _binary_accuracy, "f1": _f1, "roc_auc": _roc_auc}
COMPARED = {"mse": _mse, "psnr": _psnr, "embedding_cosine": _embedding_cosine, "recall_at_k": _recall_at_k}


def _fn_metric(spec: FnMetric, outputs, labels, base_dir) -> dict:
    from ..entrypoints import resolve

    fn = resolve(spec.fn, Path(base_dir or "."), f"evaluate '{spec.id}' fn")
    names = spec.outputs or ([spec.output] if spec.output else list(outputs))
    missing = [n for n in names if n not in outputs]
    if missing:
        raise MetricError(f"evaluate '{spec.id}': the model has no output(s) {missing} (outputs: {', '.join(outputs)})")
    lab = pick_labels(spec, labels) if (spec.labels or len(labels) == 1) else (labels or None)
    try:
        value = fn({n: outputs[n] for n in names}, lab)
    except Exception as e:
        raise MetricError(f"evaluate '{spec.id}': {spec.fn} raised {e.__class__.__name__}: {e}") from e
    if isinstance(value, dict):
        per = value.pop("per_sample", None)
        if "value" in value:
            return {spec.id: _result(spec, value.pop("value"), per, **{k: float(v) for k, v in value.items()})}
        return {f"{spec.id}.{k}": _result(spec, v) for k, v in value.items()}
    try:
        return {spec.id: _result(spec, float(value))}
    except (TypeError, ValueError) as e:
        raise MetricError(f"evaluate '{spec.id}': {spec.fn} returned {type(value).__name__}, expected a float or a dict of floats") from e


def compute_one(spec, outputs: dict, labels: dict, reference: dict, base_dir) -> dict:
    """{name: result} for one metric spec (a user function returning a dict may give several names)."""
    if isinstance(spec, FnMetric):
        return _fn_metric(spec, outputs, labels, base_dir)
    if spec.type in TOKEN_TYPES:
        raise MetricError(f"evaluate '{spec.id}': {spec.type} is a text-generation metric (model.task: text-generation, generation.prompts)")
    name = pick_output(spec, outputs)
    o = np.asarray(outputs[name])
    extra = {"output": name, "type": spec.type}
    if spec.type in LABELLED:
        res = LABELLED[spec.type](spec, o, pick_labels(spec, labels))
    elif spec.type in COMPARED:
        y = pick_labels(spec, labels) if spec.against == "labels" else None
        res = COMPARED[spec.type](spec, o, y, reference, name)
    elif spec.type in text.TYPES:
        res = text.text_metric(spec, o, pick_labels(spec, labels), base_dir, _result)
    else:
        res = _fidelity_metric(spec, o, reference, name)
    return {spec.id: {**res, **extra}}


def compute_metrics(metric_specs, outputs: dict, labels=None, reference: dict | None = None, base_dir=None) -> dict:
    """Every metric in ``metric_specs`` (recipe `evaluate:` items) on these outputs; see the module docstring."""
    labels = _label_dict(labels)
    reference = outputs if reference is None else reference
    results: dict = {}
    for spec in metric_specs or []:
        results.update(compute_one(spec, outputs, labels, reference, base_dir))
    return results


def first_output_top1(outputs, labels) -> float | None:
    """Top-1 of the first output against labels (None without labels or when it is not [N, classes]).

    For the optimize passes' effect records, which predate named metrics."""
    outs = list(outputs.values()) if isinstance(outputs, dict) else list(outputs or [])
    if labels is None or not outs or not is_classifier(outs[0]):
        return None
    pred = np.asarray(outs[0]).argmax(1)
    return float(np.mean(pred == np.asarray(labels).reshape(-1)[: len(pred)]))

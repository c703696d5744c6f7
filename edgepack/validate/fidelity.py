"""Fidelity of a model's outputs to the FP32 reference: the one place cosine and abs error are computed.

Outputs are ``dict[name, ndarray]`` with samples on axis 0. The cosine is *centred*: the FP32 reference's
per-output mean over samples is subtracted from both sides before the per-sample cosine, so a constant or
bias-dominated output (e.g. logits = a large class bias + a small input-dependent signal) cannot score
near 1 while the signal is lost. With fewer than two samples there is no mean to remove: the plain cosine is used.
"""

from __future__ import annotations

import numpy as np

SMALL_LIST = 256  # per-sample lists up to this length are kept in report.json (summary stats always)


def _flat(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)


def cosine_rows(a, b) -> np.ndarray:
    """Cosine of each row of a with the same row of b (two zero rows: 1.0, one zero row: 0.0)."""
    a, b = _flat(a), _flat(b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where((na == 0) & (nb == 0), 1.0, dot / np.maximum(na * nb, 1e-300))
    return np.clip(cos, -1.0, 1.0)


def cosine(a, b) -> float:
    """Plain cosine of two arrays taken as one vector each (the compile-time smoke checks)."""
    return float(cosine_rows(np.asarray(a).reshape(1, -1), np.asarray(b).reshape(1, -1))[0])


def centred_cosine_rows(reference, output) -> np.ndarray:
    """Per-sample cosine after subtracting the reference's mean over samples from both."""
    r, o = _flat(reference), _flat(output)
    if len(r) < 2:
        return cosine_rows(r, o)
    mean = r.mean(axis=0, keepdims=True)
    return cosine_rows(r - mean, o - mean)


def abs_errors(reference, output) -> np.ndarray:
    """Per-sample max abs difference."""
    d = np.abs(_flat(reference) - _flat(output))
    return d.max(axis=1) if d.shape[1] else np.zeros(len(d))


def max_abs_error(reference, output) -> float:
    r, o = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    return float(np.max(np.abs(r - o))) if r.size else 0.0


def is_classifier(a) -> bool:
    return np.ndim(a) == 2 and np.shape(a)[1] > 1


def distribution(values) -> dict:
    """Summary of a per-sample list (and the list itself when small)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not v.size:
        return {"n": 0}
    out: dict = {"n": int(v.size), "mean": float(v.mean()), "min": float(v.min()), "p5": float(np.percentile(v, 5)),
           "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}
    if v.size <= SMALL_LIST:
        out["values"] = [float(x) for x in v]
    return out


def aggregate(values, how: str = "mean") -> float:
    """mean | worst (lowest) | pN (N-th percentile) of per-sample values."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if how == "mean":
        return float(v.mean())
    if how == "worst":
        return float(v.min())
    return float(np.percentile(v, float(how[1:])))


def _as_dict(x) -> dict:
    if isinstance(x, dict):
        return x
    return {f"output_{k}": v for k, v in enumerate(x)}


def output_fidelity(reference, output) -> dict:
    r, o = np.asarray(reference), np.asarray(output)
    if r.shape != o.shape:
        return {"error": f"shape {list(o.shape)} differs from the reference {list(r.shape)}"}
    cos = centred_cosine_rows(r, o)
    err = abs_errors(r, o)
    entry = {
        "max_abs_error": float(err.max()) if err.size else 0.0,
        "mean_abs_error": float(np.mean(np.abs(r.astype(np.float64) - o.astype(np.float64)))) if r.size else 0.0,
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "cosine_uncentred": float(cosine_rows(r, o).mean()),
        "cosine_per_sample": distribution(cos),
        "max_abs_error_per_sample": distribution(err),
    }
    if is_classifier(r):
        agree = (r.argmax(1) == o.argmax(1)).astype(np.float64)
        entry["top1_agreement"] = float(agree.mean())
    return entry


def fidelity(reference, outputs) -> dict:
    """Per output (by name): centred cosine (mean, min, distribution), max/mean abs error, top-1 agreement.

    Top level: the worst output's numbers (cosine = lowest mean centred cosine over outputs, top-1 agreement
    = lowest over the [N, C] outputs)."""
    reference, outputs = _as_dict(reference), _as_dict(outputs)
    per = {}
    for name, r in reference.items():
        per[name] = {"error": "output missing"} if name not in outputs else output_fidelity(r, outputs[name])
    ok = {k: e for k, e in per.items() if "error" not in e}
    summary = {
        "outputs": per,
        "centred": True,
        "max_abs_error": max((e["max_abs_error"] for e in ok.values()), default=None),
        "mean_abs_error": max((e["mean_abs_error"] for e in ok.values()), default=None),
        "cosine": min((e["cosine_mean"] for e in ok.values()), default=None),
        "cosine_uncentred": min((e["cosine_uncentred"] for e in ok.values()), default=None),
        "top1_agreement": min((e["top1_agreement"] for e in ok.values() if "top1_agreement" in e), default=None),
        "samples": int(len(next(iter(reference.values())))) if reference else 0,
    }
    if len(ok) != len(per):
        summary["errors"] = [f"{k}: {e['error']}" for k, e in per.items() if "error" in e]
    return summary


def cosine_gate_value(reference, outputs, per_sample: str = "mean", output: str | None = None) -> float | None:
    """The number `gates.min_cosine` checks: centred cosine aggregated over samples, lowest over outputs."""
    reference, outputs = _as_dict(reference), _as_dict(outputs)
    names = [output] if output else list(reference)
    vals = []
    for n in names:
        if n not in outputs or n not in reference or np.shape(reference[n]) != np.shape(outputs[n]):
            return None
        vals.append(aggregate(centred_cosine_rows(reference[n], outputs[n]), per_sample))
    return min(vals) if vals else None

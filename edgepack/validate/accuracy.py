"""Accuracy against labels and fidelity against the FP32 reference outputs."""

from __future__ import annotations

import numpy as np


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    dot = np.sum(a * b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / np.maximum(na * nb, 1e-300))
    return cos


def _is_classifier(o: np.ndarray) -> bool:
    return o.ndim == 2 and o.shape[1] > 1


def fidelity(reference: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    """Per output: max/mean abs error, cosine (mean and min over samples), top-1 agreement."""
    per_output = []
    for k, (r, o) in enumerate(zip(reference, outputs)):
        r = np.asarray(r)
        o = np.asarray(o)
        if r.shape != o.shape:
            per_output.append({"output": k, "error": f"shape {list(o.shape)} differs from the reference {list(r.shape)}"})
            continue
        diff = np.abs(r.astype(np.float64) - o.astype(np.float64))
        cos = _cosines(r, o)
        entry = {
            "output": k,
            "max_abs_error": float(diff.max()) if diff.size else 0.0,
            "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
        }
        if _is_classifier(r):
            entry["top1_agreement"] = float(np.mean(r.argmax(1) == o.argmax(1)))
        per_output.append(entry)
    ok = [e for e in per_output if "error" not in e]
    summary = {
        "outputs": per_output,
        "max_abs_error": max((e["max_abs_error"] for e in ok), default=None),
        "cosine": min((e["cosine_mean"] for e in ok), default=None),
        "top1_agreement": next((e["top1_agreement"] for e in ok if "top1_agreement" in e), None),
        "samples": int(len(reference[0])) if reference else 0,
    }
    if len(ok) != len(per_output):
        summary["errors"] = [e["error"] for e in per_output if "error" in e]
    return summary


def top1(outputs: list[np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None or not outputs or not _is_classifier(np.asarray(outputs[0])):
        return None
    pred = np.asarray(outputs[0]).argmax(1)
    return float(np.mean(pred == np.asarray(labels).reshape(-1)[: len(pred)]))

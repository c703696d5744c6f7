"""Gates: every failure is collected (not just the first), each naming target, device and numbers."""

from __future__ import annotations

from ..recipe import Gates


def evaluate(gates: Gates, target: str, device: str, metrics: dict, size_bytes: int) -> dict:
    """metrics: {'latency': {...}, 'accuracy': {...}} for one target on one device."""
    failures, waived, checked = [], [], []
    lat = metrics.get("latency") or {}
    acc = metrics.get("accuracy") or {}

    def check(name, value, limit, bad, fmt):
        if limit is None:
            return
        if value is None:
            msg = f"{target} on {device}: {name} cannot be checked ({fmt})"
        elif not bad(value, limit):
            checked.append(name)
            return
        else:
            msg = f"{target} on {device}: {fmt.format(v=value, l=limit)}"
        (waived if name in gates.waive else failures).append({"gate": name, "message": msg})

    drop = acc.get("accuracy_drop")
    drop_fmt = "top-1 drop vs FP32 {v:.4f} > max_accuracy_drop {l}"
    if drop is None and acc.get("fidelity", {}).get("top1_agreement") is not None:
        drop = 1.0 - acc["fidelity"]["top1_agreement"]
        drop_fmt = "top-1 disagreement with FP32 {v:.4f} > max_accuracy_drop {l} (no labels given)"
    check("max_accuracy_drop", drop, gates.max_accuracy_drop, lambda v, l: v > l + 1e-12,
          drop_fmt if drop is not None else "no labels and no classifier output")
    cos = (acc.get("fidelity") or {}).get("cosine")
    check("min_cosine", cos, gates.min_cosine, lambda v, l: v < l, "cosine vs FP32 {v:.5f} < min_cosine {l}"
          if cos is not None else "no reference outputs")
    p90 = lat.get("p90_ms")
    check("max_p90_ms", p90, gates.max_p90_ms, lambda v, l: v > l, "p90 latency {v:.3f} ms > max_p90_ms {l}"
          if p90 is not None else "no latency measured")
    size_mb = size_bytes / 1e6
    check("max_size_mb", size_mb, gates.max_size_mb, lambda v, l: v > l, "size {v:.3f} MB > max_size_mb {l}")
    return {"passed": not failures, "failures": failures, "waived": waived, "checked": checked}


# -- gates on what a pass and a target are worth against FP32 (edgepack/validate/vs_fp32.py computes the inputs)

def _verdict(gates: Gates, name: str, message: str | None) -> dict:
    """One gate's outcome: {'checked': [name]} when it passed, else a failure (or a waived one)."""
    if message is None:
        return {"failures": [], "waived": [], "checked": [name]}
    item = {"gate": name, "message": message}
    return {"failures": [] if name in gates.waive else [item], "waived": [item] if name in gates.waive else [], "checked": []}


def check_quantized_fraction(gates: Gates, target: str, device: str, fraction: float | None) -> dict | None:
    """gates.min_quantized_fraction on the share of weights the optimize chain quantized (None: not applicable)."""
    limit = gates.min_quantized_fraction
    if limit is None:
        return None
    bad = fraction is None or fraction < limit
    got = "no float32 weights to quantize" if fraction is None else f"{fraction:.2%} of the weights"
    return _verdict(gates, "min_quantized_fraction",
                    f"{target} on {device}: quantized {got} < min_quantized_fraction {limit:g}" if bad else None)


def check_latency_ratio(gates: Gates, target: str, device: str, ratio: float | None, counterpart: str) -> dict | None:
    """gates.max_latency_ratio_vs_fp32 on p50(target) / p50(FP32 counterpart) on the same device."""
    limit = gates.max_latency_ratio_vs_fp32
    if limit is None:
        return None
    if ratio is None:
        msg = f"{target} on {device}: max_latency_ratio_vs_fp32 cannot be checked (no FP32 latency on this device)"
    else:
        msg = f"{target} on {device}: p50 latency {ratio:.2f}x {counterpart} > max_latency_ratio_vs_fp32 {limit:g}" if ratio > limit + 1e-12 else None
    return _verdict(gates, "max_latency_ratio_vs_fp32", msg)

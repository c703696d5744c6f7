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

"""Gates: every failure is collected (not just the first), each naming target, device and numbers."""

from __future__ import annotations

from ..recipe import Gates


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def evaluate(gates: Gates, target: str, device: str, metrics: dict, size_bytes: int, accuracy_metric: str | None = None) -> dict:
    """metrics: the validate record ({'latency': {...}, 'accuracy': {...}}) of one target on one device.

    accuracy_metric: the metric max_accuracy_drop checks (a top1 metric; it needs labels)."""
    failures: list[dict] = []
    waived: list[dict] = []
    checked: list[str] = []
    lat = metrics.get("latency") or {}
    acc = metrics.get("accuracy") or {}
    named = acc.get("metrics") or {}

    def check(name, value, limit, bad, fmt, why="not computed"):
        if limit is None:
            return
        if value is None:
            msg = f"{target} on {device}: {name} cannot be checked ({why})"
        elif not bad(value, limit):
            checked.append(name)
            return
        else:
            msg = f"{target} on {device}: {fmt.format(v=value, l=limit)}"
        (waived if name in gates.waive else failures).append({"gate": name, "message": msg})

    m = named.get(accuracy_metric) if accuracy_metric else None
    drop = None if m is None else m.get("drop")
    where = f" on '{m.get('output')}'" if m and m.get("output") else ""
    drop_fmt = f"top-1{where} drop vs FP32 {{v:.4f}} > max_accuracy_drop {{l}}"
    check("max_accuracy_drop", drop, gates.max_accuracy_drop, lambda v, lim: v > lim + 1e-12, drop_fmt,
          (m or {}).get("error", "no top-1 metric"))
    cos_cfg = gates.cosine
    if cos_cfg is not None:
        cos = acc.get("cosine_gate", (acc.get("fidelity") or {}).get("cosine"))
        how = "" if cos_cfg.per_sample == "mean" else f" ({cos_cfg.per_sample} sample)"
        check("min_cosine", cos, cos_cfg.min, lambda v, lim: v < lim, f"centred cosine vs FP32{how} {{v:.5f}} < min_cosine {{l}}",
              "no reference outputs" if not acc.get("fidelity") else "output shapes differ from FP32")
    for name, g in gates.metrics.items():
        _metric_gate(name, g, named.get(name), check)
    p90 = lat.get("p90_ms")
    check("max_p90_ms", p90, gates.max_p90_ms, lambda v, lim: v > lim, "p90 latency {v:.3f} ms > max_p90_ms {l}", "no latency measured")
    size_mb = size_bytes / 1e6
    check("max_size_mb", size_mb, gates.max_size_mb, lambda v, lim: v > lim, "size {v:.3f} MB > max_size_mb {l}")
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
    msg: str | None
    if ratio is None:
        msg = f"{target} on {device}: max_latency_ratio_vs_fp32 cannot be checked (no FP32 latency on this device)"
    else:
        msg = f"{target} on {device}: p50 latency {ratio:.2f}x {counterpart} > max_latency_ratio_vs_fp32 {limit:g}" if ratio > limit + 1e-12 else None
    return _verdict(gates, "max_latency_ratio_vs_fp32", msg)


def _metric_gate(name, g, m, check) -> None:
    """gates.metrics.NAME: max_drop (vs FP32, in the metric's worse direction), min, max."""
    m = m or {}
    why = m.get("error", "not computed")
    gate = f"metrics.{name}"
    value, ref = m.get("value"), m.get("reference")
    vs = f" ({_fmt(value)} vs FP32 {_fmt(ref)})"
    if g.max_drop is not None:
        direction = "drop" if m.get("higher_is_better", True) else "rise"
        check(gate, m.get("drop"), g.max_drop, lambda v, lim: v > lim + 1e-12, f"{name} {direction} vs FP32 {{v:.4g}} > max_drop {{l}}{vs}", why)
    if g.min is not None:
        check(gate, value, g.min, lambda v, lim: v < lim, f"{name} {{v:.4g}} < min {{l}}", why)
    if g.max is not None:
        check(gate, value, g.max, lambda v, lim: v > lim, f"{name} {{v:.4g}} > max {{l}}", why)

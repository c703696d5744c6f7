"""Honest labels: what each target's quantization did, and whether it pays against FP32.

- A target built from the optimize chain whose quantize passes changed (almost) nothing
  (``optimize.share.QuantizedShare``) gets ``precision_label: "<precision> (unchanged)"`` and a flag.
- A non-fp32 target is compared with its FP32 counterpart on the same device: the first target of the
  same type with an fp32 precision (e.g. ``ort-fp32`` for ``ort-int8``); without one, the FP32 ONNX
  reference (its size, and its ONNX Runtime p50 on the build host measured by the first optimize pass,
  for devices that are the build host). Slower (p50) or larger is flagged; the ratio can be gated.

Flags go to ``targets.<id>.flags`` (the summary table shows them); ratios to ``devices.<dev>.vs_fp32``.
"""

from __future__ import annotations

from ..optimize.share import QuantizedShare
from ..recipe import Gates, TargetInput
from .gates import check_latency_ratio, check_quantized_fraction


def is_fp32(precision: str | None) -> bool:
    return precision is None or str(precision).startswith("fp32")


def chain_share(records: list[dict]) -> dict | None:
    """The optimize chain's quantized share: the best of its quantize passes (None: no quantize pass ran)."""
    shares = [(r, q) for r in records
              if r.get("pass") == "quantize" and r.get("status", "ok") == "ok" and r.get("quantized")
              for q in [QuantizedShare.from_json(r.get("quantized"))] if q is not None]
    if not shares:
        return None
    rec, best = max(shares, key=lambda s: s[1].weights or 0.0)
    return {"weights_fraction": best.weights, "nodes_fraction": best.nodes, "modified": any(s.modified for _, s in shares),
            "reason": best.reason(), "passes": [r["index"] for r, _ in shares], "intended": INTENDED.get(str(rec.get("mode")), rec.get("mode"))}


INTENDED = {"static": "int8-static", "dynamic": "int8-dynamic", "fp16": "fp16", "int4": "int4-weight"}  # quantize mode -> precision


def _counterpart(tid: str, entry: dict, targets: dict) -> str | None:
    for oid, o in targets.items():
        if oid != tid and o.get("type") == entry.get("type") and o.get("size_bytes") and is_fp32(o.get("precision")) and o.get("precision"):
            return oid
    return None


def _ratio(a, b) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def compare(tid: str, entry: dict, targets: dict, fp32_size: int, host_p50: float | None, host_devices: set[str]) -> list[str]:
    """Fill ``devices.<dev>.vs_fp32`` for one non-fp32 target; return its flags."""
    cp = _counterpart(tid, entry, targets)
    flags = []
    cp_size = targets[cp]["size_bytes"] if cp else fp32_size
    what = cp or "the FP32 ONNX model"
    size_ratio = _ratio(entry.get("size_bytes"), cp_size)
    if size_ratio is not None and size_ratio > 1:
        flags.append(f"larger than FP32: {size_ratio:.2f}x the size of {what}")
    for dev, d in (entry.get("devices") or {}).items():
        p50 = (d.get("latency") or {}).get("p50_ms")
        if p50 is None:
            continue
        if cp:
            base = ((targets[cp].get("devices") or {}).get(dev, {}).get("latency") or {}).get("p50_ms")
            basis = f"{cp} on {dev}"
        else:
            base = host_p50 if dev in host_devices else None
            basis = "the FP32 ONNX model on ONNX Runtime (build host, 1 thread)"
        ratio = _ratio(p50, base)
        d["vs_fp32"] = {"counterpart": cp or "fp32-reference", "basis": basis, "latency_ratio": ratio, "size_ratio": size_ratio}
        if ratio is not None and ratio > 1:
            flags.append(f"slower than FP32 on {dev}: p50 {ratio:.2f}x {basis}")
    return flags


def _gate(entry: dict, d: dict, verdict: dict | None, gate_failures: list) -> None:
    if verdict is None:
        return
    g = d.setdefault("gates", {"passed": True, "failures": [], "waived": [], "checked": []})
    for k in ("failures", "waived", "checked"):
        g.setdefault(k, []).extend(verdict[k])
    if verdict["failures"]:
        g["passed"] = False
        d["status"] = "gates-failed"
        entry["status"] = "gates-failed"
        gate_failures.extend(verdict["failures"])


def label_and_gate(gates: Gates, targets: dict, records: list[dict], fp32_size: int, host_devices: set[str], gate_failures: list) -> None:
    """Labels, flags, ratios and the two gates, for every built target (after all were validated)."""
    share = chain_share(records)
    first = records[0] if records and records[0].get("status", "ok") == "ok" else {}
    host_p50 = ((first.get("before") or {}).get("latency") or {}).get("p50_ms")
    for tid, entry in targets.items():
        if not entry.get("size_bytes"):
            continue  # not built
        flags = []
        tshare = share if entry.get("input") == TargetInput.OPTIMIZED.value else None
        if tshare is not None:
            entry["quantized"] = tshare
            if not tshare["modified"]:  # the precision the pass meant to give (the target may detect fp32)
                label = entry.get("precision") if not is_fp32(entry.get("precision")) else tshare["intended"]
                entry["precision_label"] = f"{label} (unchanged)"
                flags.append(f"unchanged: {tshare['reason']}")
        if not is_fp32(entry.get("precision")):
            flags += compare(tid, entry, targets, fp32_size, host_p50, host_devices)
        if flags:
            entry["flags"] = flags
        for dev, d in (entry.get("devices") or {}).items():
            if d.get("status") not in ("ok", "gates-failed"):
                continue
            if tshare is not None:
                _gate(entry, d, check_quantized_fraction(gates, tid, dev, tshare["weights_fraction"]), gate_failures)
            if not is_fp32(entry.get("precision")):
                vs = d.get("vs_fp32") or {}
                _gate(entry, d, check_latency_ratio(gates, tid, dev, vs.get("latency_ratio"), vs.get("basis", "FP32")), gate_failures)

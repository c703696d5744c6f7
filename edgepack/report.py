"""Human summaries of a build report (the report itself is JSON: report.json)."""

from __future__ import annotations


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def primary_metric(report: dict) -> str | None:
    """The recipe's primary `evaluate:` metric (None: the recipe has no evaluate:, the table shows top-1)."""
    ev = report.get("evaluate") or {}
    return ev.get("primary") if ev.get("declared") else None


def summary_rows(report: dict) -> list[dict]:
    primary = primary_metric(report)
    rows = []
    for tid, t in report.get("targets", {}).items():
        devices = t.get("devices") or {}
        if not devices:
            rows.append({"target": tid, "device": "-", "precision": t.get("precision_label") or t.get("precision"), "flags": t.get("flags"),
                         "size_mb": (t.get("size_bytes") or 0) / 1e6 or None,
                         "status": t["status"] if t["status"] != "ok" else t.get("validation", "ok"), "error": t.get("error")})
            continue
        for dev, d in devices.items():
            lat = d.get("latency") or {}
            acc = d.get("accuracy") or {}
            fid = acc.get("fidelity") or {}
            metric = ((acc.get("metrics") or {}).get(primary) or {}) if primary else {}
            rows.append({
                "target": tid, "device": dev, "precision": t.get("precision_label") or t.get("precision"), "flags": t.get("flags"),
                "size_mb": (t.get("size_bytes") or 0) / 1e6, "p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"),
                "top1": acc.get("top1"), "cosine": fid.get("cosine"), "noisy": d.get("noisy"),
                **({"metric": primary, "value": metric.get("value"), "drop": metric.get("drop")} if primary else {}),
                "status": d.get("status"), "error": d.get("error") or d.get("reason"),
            })
    return rows


def summary_table(report: dict) -> str:
    primary = primary_metric(report)
    col, key = (primary, "value") if primary else ("top-1", "top1")
    w = max(7, len(col))
    head = f"{'target':<16} {'device':<12} {'precision':<13} {'size MB':>8} {'p50 ms':>8} {'p90 ms':>8} {col:>{w}} {'cosine':>8}  status"
    lines = [head, "-" * len(head)]
    flagged = set()
    for r in summary_rows(report):
        status = r["status"] + (" (noisy)" if r.get("noisy") else "")
        lines.append(
            f"{r['target']:<16} {r['device']:<12} {str(r.get('precision') or '-'):<13} {_fmt(r.get('size_mb'), '8.3f')} "
            f"{_fmt(r.get('p50_ms'), '8.3f')} {_fmt(r.get('p90_ms'), '8.3f')} {_fmt(r.get(key), f'{w}.4f')} {_fmt(r.get('cosine'), '8.5f')}  {status}"
        )
        if r.get("error") and r["status"] != "ok":
            lines.append(f"{'':<16} {r['error']}")
        if r["target"] not in flagged:  # targets.<id>.flags: unchanged by its pass, slower/larger than FP32
            flagged.add(r["target"])
            lines.extend(f"{'':<16} ! {flag}" for flag in r.get("flags") or [])
    return "\n".join(lines)

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


def summary_table(report: dict, width: int | None = None, color: bool = False) -> str:
    """The terminal table (edgepack/summary_table.py): fits ``width`` (default: the terminal's)."""
    from .summary_table import render

    return render(report, width=width, color=color)

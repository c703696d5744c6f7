"""report.html: the build report for people, one self-contained page (inline CSS and SVG, no script, no network).

Sections: summary and best target per device, per-target table, latency distributions per target and device
(raw samples from timings.json), a Pareto plot of latency vs the primary metric vs size, each optimize pass's
effect, conversion checks, gates, lineage and provenance. A Content-Security-Policy forbids every fetch and
script. Every value is HTML-escaped (names and texts come from user recipes).
"""

from __future__ import annotations

import json

from . import svg
from .model_card import card_summary
from .report_summary import samples_for, thread_samples
from .svg import esc

HTML_NAME = "report.html"
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'"
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b00020;font-weight:600}.ok{color:#137333}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:8px 12px;min-width:200px}
code{font-size:12px;word-break:break-all}svg.plot{display:block;margin:8px 0;background:#fff;border:1px solid #eee}.muted{color:#777}"""


def _f(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _status(s) -> str:
    return f'<span class="{"ok" if s == "ok" else "bad"}">{esc(s)}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: frozenset[int] | set[int] = frozenset()) -> str:
    """A table; ``rows`` hold markup already escaped by the caller (cells built with esc/_status)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _compact(v) -> str:
    return esc(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))


def _summary(report: dict) -> str:
    s = report.get("summary") or {}
    metric = s.get("primary_metric") or "metric"
    cards = []
    for dev, b in (s.get("best_per_device") or {}).items():
        cards.append(f'<div class="card"><b>{esc(dev)}</b>: best <code>{esc(b["target"])}</code> ({esc(b.get("precision"))})<br>'
                     f'p50 {esc(_f(b.get("p50_ms"), ".3f"))} ms, p90 {esc(_f(b.get("p90_ms"), ".3f"))} ms, '
                     f'{esc(metric)} {esc(_f(b.get("metric")))}<br><span class="muted">{esc(b.get("why"))}</span></div>')
    fails = "".join(f"<li>{esc(f)}</li>" for f in report.get("failures") or [])
    fp32 = f"<p>FP32 reference {esc(metric)}: {esc(_f(s.get('fp32_metric')))}</p>" if s.get("fp32_metric") is not None else ""
    return (f"<h2>Summary</h2><p>Status: {_status(s.get('status', '-'))}; primary metric <b>{esc(metric)}</b> "
            f"({'higher' if s.get('higher_is_better', True) else 'lower'} is better)</p>{fp32}"
            f'<div class="cards">{"".join(cards) or "<p>No target passed its gates on any device.</p>"}</div>'
            + (f"<p>Failures:</p><ul>{fails}</ul>" if fails else ""))


def _targets(report: dict) -> str:
    s = report.get("summary") or {}
    rows = []
    for tid, t in (s.get("targets") or {}).items():
        mb = lambda b: _f(b / 1e6, ".4f") if isinstance(b, (int, float)) else "-"  # noqa: E731
        for dev, d in (t.get("devices") or {"-": {"status": t.get("status")}}).items():
            rows.append([f"<code>{esc(tid)}</code>", esc(t.get("type")), esc(t.get("precision") or "-"), mb(t.get("model_bytes")),
                         mb(t.get("extras_bytes")), esc(dev), esc(_f(d.get("p50_ms"), ".3f")), esc(_f(d.get("p90_ms"), ".3f")),
                         esc(_f(d.get("metric"))), _status(d.get("status") or t.get("status")) + (" (noisy)" if d.get("noisy") else ""),
                         esc(d.get("reason") or t.get("error") or "")])
    return "<h2>Targets</h2>" + _table(["target", "type", "precision", "model MB", "extras MB", "device", "p50 ms", "p90 ms",
                                       s.get("primary_metric") or "metric", "status", "note"], rows, {3, 4, 6, 7, 8})


def _distribution_rows(report: dict, timings: dict | None) -> list[tuple[str, list[float]]]:
    rows = []
    for tid, t in (report.get("targets") or {}).items():
        for dev in (t.get("devices") or {}):
            per_count = thread_samples(timings, tid, dev)
            if len(per_count) > 1:  # one row per thread count of the device profile
                rows += [(f"{tid} @ {dev} ({n} thr)", v) for n, v in per_count.items() if v]
            elif samples_for(report, timings, tid, dev):
                rows.append((f"{tid} @ {dev}", samples_for(report, timings, tid, dev)))
    return rows


def latency_plot(report: dict, timings: dict | None) -> str:
    """Box + dots per (target, device) of the raw per-run latencies, on one shared (log when wide) axis."""
    rows = _distribution_rows(report, timings)
    if not rows:
        return "<h2>Latency distributions</h2><p>No timing samples (no validation data, or every run failed).</p>"
    values = [v for _, vs in rows for v in vs if v > 0] or [1.0]
    log = max(values) / min(values) > 20
    left, right, row_h = 190, 860, 34
    height = 60 + row_h * len(rows)
    s = svg.Scale(*svg.extent(values, log=log), left, right, log=log)
    body = svg.x_axis(s, height - 40, "latency per run (ms)" + (", log scale" if log else ""), height - 50)
    for i, (label, vs) in enumerate(rows):
        y = 20 + row_h * i + row_h / 2
        color = svg.PALETTE[i % len(svg.PALETTE)]
        tip = f"{label}: {len(vs)} runs, median {svg.quantile(sorted(vs), 0.5):.4g} ms"
        body.append(svg.text(left - 8, y + 4, label[:28], "end"))
        body += svg.box_row(s, y, row_h * 0.55, vs, color, tip)
    return ("<h2>Latency distributions</h2><p class=muted>Box: p25-p75 with the median; whiskers: p5-p95; dots: the runs.</p>"
            + svg.doc(right + 30, height, body, "latency distribution per target and device", "plot-latency"))


def _pareto_points(report: dict) -> tuple[list[dict], str]:
    s = report.get("summary") or {}
    name = s.get("primary_metric") or "metric"
    pts = []
    for tid, t in (s.get("targets") or {}).items():
        for dev, d in (t.get("devices") or {}).items():
            y = d.get("metric")
            if y is None:
                y = (((report["targets"][tid].get("devices") or {}).get(dev) or {}).get("accuracy") or {}).get("fidelity", {}).get("cosine")
            if d.get("p50_ms") and y is not None:
                pts.append({"x": d["p50_ms"], "y": y, "size": t.get("model_bytes") or 0, "label": f"{tid} @ {dev}",
                            "device": dev, "ok": d.get("status") == "ok"})
    used_cosine = any(d.get("metric") is None for t in (s.get("targets") or {}).values() for d in (t.get("devices") or {}).values())
    return pts, ("cosine to FP32" if used_cosine and pts else name)


def pareto_plot(report: dict) -> str:
    """Latency (x) vs the primary metric (y) vs model size (area); filled marks are on the Pareto front."""
    pts, ylabel = _pareto_points(report)
    if not pts:
        return "<h2>Latency vs metric vs size</h2><p>No target has both a latency and a metric.</p>"
    hib = (report.get("summary") or {}).get("higher_is_better", True)
    front = svg.pareto_front(pts, hib)
    w, h, left, bottom = 760, 420, 80, 360
    xs = svg.Scale(*svg.extent([p["x"] for p in pts], 0.15), left, w - 30)
    ys = svg.Scale(*svg.extent([p["y"] for p in pts], 0.15), bottom, 20)
    body = svg.x_axis(xs, bottom, "p50 latency (ms)", bottom - 20) + svg.y_axis(ys, left, ylabel, w - 30 - left)
    biggest = max(p["size"] for p in pts) or 1
    devices = sorted({p["device"] for p in pts})
    for i, p in enumerate(sorted(pts, key=lambda p: -p["size"])):
        color = svg.PALETTE[devices.index(p["device"]) % len(svg.PALETTE)]
        r = 5 + 17 * (p["size"] / biggest) ** 0.5
        on = pts.index(p) in front
        tip = f"{p['label']}: p50 {p['x']:.4g} ms, {ylabel} {p['y']:.4g}, model {p['size'] / 1e6:.4g} MB" + (" (Pareto front)" if on else "")
        body.append(f'<circle class="mark" cx="{svg.num(xs(p["x"]))}" cy="{svg.num(ys(p["y"]))}" r="{svg.num(r)}" '
                    f'fill="{color}" fill-opacity="{0.55 if on else 0.08}" stroke="{color}" stroke-width="{2 if on else 1}"'
                    f'{"" if p["ok"] else " stroke-dasharray=3,2"}><title>{esc(tip)}</title></circle>')
        body.append(svg.text(xs(p["x"]) + r + 3, ys(p["y"]) + 4 + 12 * (i % 3 - 1), p["label"][:32], size=10))
    legend = ", ".join(f'<span style="color:{svg.PALETTE[i % len(svg.PALETTE)]}">&#9679; {esc(d)}</span>' for i, d in enumerate(devices))
    return ("<h2>Latency vs metric vs size</h2><p class=muted>Circle area: model file size; filled: on the Pareto front "
            f"(nothing is faster, better and smaller at once); dashed: gates failed. Devices: {legend}</p>"
            + svg.doc(w, h, body, f"Pareto: p50 latency vs {ylabel} vs size", "plot-pareto"))


def _optimize(report: dict) -> str:
    rows = []
    for rec in report.get("optimize") or []:
        b, a = rec.get("before") or {}, rec.get("after") or {}
        q = rec.get("quantized") or {}
        acc = lambda d: _f((d.get("accuracy") or {}).get("top1") if (d.get("accuracy") or {}).get("top1") is not None else (d.get("accuracy") or {}).get("cosine"))  # noqa: E731
        rows.append([esc(rec.get("index")), esc(rec.get("pass")), _status(rec.get("status")),
                     esc(f"{_f(b.get('size_bytes'))} -> {_f(a.get('size_bytes'))}"),
                     esc(f"{_f((b.get('latency') or {}).get('p50_ms'))} -> {_f((a.get('latency') or {}).get('p50_ms'))}"),
                     esc(f"{acc(b)} -> {acc(a)}"), esc(_f(q.get("weights_fraction")) if q else "-"),
                     esc(rec.get("error") or rec.get("reason") or q.get("unchanged_reason") or "")])
    if not rows:
        return "<h2>Optimize passes</h2><p>The recipe has no optimize passes.</p>"
    return "<h2>Optimize passes</h2>" + _table(["#", "pass", "status", "size bytes", "p50 ms", "accuracy", "weights quantized",
                                                "note"], rows)


def _checks(report: dict) -> str:
    conv = (report.get("conversion") or {}).get("record") or {}
    rows = [[esc("convert"), esc(k), _compact(v)] for k, v in sorted(conv.items()) if k != "log"]
    for tid, t in (report.get("targets") or {}).items():
        comp = t.get("compile") or {}
        rows += [[f"<code>{esc(tid)}</code>", esc(k), _compact(v)] for k, v in sorted(comp.items()) if "check" in k or k == "notes"]
        cov = t.get("coverage") or {}
        if cov.get("unsupported"):
            rows.append([f"<code>{esc(tid)}</code>", "coverage", _compact(cov["unsupported"])])
    return "<h2>Conversion checks</h2>" + (_table(["stage", "check", "result"], rows) if rows else "<p>No checks recorded.</p>")


def _gates(report: dict) -> str:
    g = report.get("gates") or {}
    cfg = [[esc(k), _compact(v)] for k, v in sorted((g.get("config") or {}).items()) if v not in (None, [], {})]
    rows = []
    for tid, t in (report.get("targets") or {}).items():
        for dev, d in (t.get("devices") or {}).items():
            gd = d.get("gates") if isinstance(d, dict) else None
            if gd:
                msgs = "; ".join(f.get("message", "") for f in gd.get("failures") or [])
                rows.append([f"<code>{esc(tid)}</code>", esc(dev), _status("ok" if gd.get("passed") else "failed"),
                             esc(", ".join(gd.get("checked") or [])), esc(msgs)])
    return (f"<h2>Gates</h2><p>Overall: {_status('ok' if g.get('passed', True) else 'failed')}</p>"
            + (_table(["gate", "config"], cfg) if cfg else "<p>No gates configured.</p>")
            + (_table(["target", "device", "result", "checked", "failures"], rows) if rows else ""))


def _lineage(report: dict) -> str:
    rows = [[esc(s.get("name")), esc(s.get("stage")), esc("cached" if s.get("cached") else "ran"), esc(_f(s.get("seconds"))),
             f"<code>{esc(str(s.get('key', ''))[:16])}</code>",
             "<br>".join(f"{esc(k)} <code>{esc(str(v)[:16])}</code>" for k, v in (s.get("outputs") or {}).items())]
            for s in report.get("stages") or []]
    return "<h2>Lineage</h2>" + _table(["stage", "kind", "cache", "seconds", "key", "outputs"], rows, {3})


def _provenance(report: dict, manifest: dict | None, provenance: dict | None) -> str:
    src = report.get("source") or {}
    items = [f"source model ({esc(src.get('format'))}): <code>sha256:{esc(src.get('sha256'))}</code>",
             f"recipe {esc(report.get('recipe'))}: <code>sha256:{esc(report.get('recipe_sha256'))}</code>",
             f"built {esc(report.get('started'))} - {esc(report.get('finished'))}"]
    builder = (((provenance or {}).get("predicate") or {}).get("runDetails") or {}).get("builder") or {}
    if provenance:
        items.append(f"provenance.json: signed {esc(provenance.get('predicateType'))} statement, builder "
                     f"<code>{esc(builder.get('id'))}</code>")
    for s in (provenance or {}).get("subject") or []:
        items.append(f"signed subject {esc(s.get('name'))}: <code>sha256:{esc((s.get('digest') or {}).get('sha256'))}</code>")
    if manifest is not None:
        items.append("every bundle file (this page included) is listed with its sha256 in edgepack.json and signed "
                     "(signatures/model.sig); <code>edgepack verify</code> checks it")
    tools = [[esc(k), esc(v)] for k, v in sorted((report.get("toolchain") or {}).items())]
    return "<h2>Provenance</h2><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" + _table(["tool", "version"], tools)


def render(report: dict, timings: dict | None = None, manifest: dict | None = None, provenance: dict | None = None) -> str:
    """The whole page for a finished report (report.json with its ``summary`` block) and its timings."""
    title = f"{report.get('name')} {report.get('version')}: edgepack build report"
    parts = [_summary(report), _targets(report), latency_plot(report, timings), pareto_plot(report), _optimize(report),
             _checks(report), _gates(report), _lineage(report), _provenance(report, manifest, provenance)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" '
            f'content="{CSP}"><meta name="viewport" content="width=device-width"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body><h1>{esc(title)}</h1><p id="card-summary">{esc(card_summary(report))}</p>' + "".join(parts) + "</body></html>\n")

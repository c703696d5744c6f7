"""MODEL_CARD.md: Hugging Face style YAML front matter, then sections from the recipe's `card:` and the build.

The recipe's `card:` (edgepack/recipe_card.py; report.json ``card``) gives what only a person knows: intended
use, limitations, training data, license. The build fills in targets, validation, gates and toolchain from
report.json's ``summary``. ``oci_annotations`` is the card's summary as OCI annotations (registry/index.py).
"""

from __future__ import annotations

import yaml

CARD_NAME = "MODEL_CARD.md"

A_DESCRIPTION = "org.opencontainers.image.description"
A_LICENSES = "org.opencontainers.image.licenses"
A_AUTHORS = "org.opencontainers.image.authors"
A_URL = "org.opencontainers.image.url"
A_BEST = "dev.edgepack.best-per-device"
A_METRIC = "dev.edgepack.primary-metric"


def _fmt(v, spec: str = ".4g") -> str:
    return "-" if v is None else format(v, spec) if isinstance(v, (int, float)) else str(v)


def _cell(v) -> str:
    """A Markdown table cell: user text (target names, errors) cannot break the table."""
    return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def card_summary(report: dict) -> str:
    """The card's opening line: the recipe's card.summary, else one generated from the build."""
    card = report.get("card") or {}
    if card.get("summary"):
        return " ".join(str(card["summary"]).split())
    s = report.get("summary") or {}
    ok = [tid for tid, t in (s.get("targets") or {}).items() if t.get("status") == "ok"]
    n = len(s.get("targets") or {})
    text = (f"{report.get('name')} {report.get('version')}, built by edgepack: {len(ok)} of {n} target(s) built and passed "
            f"their gates ({', '.join(ok) or 'none'})")
    best = [f"{dev}: {b['target']} at p50 {_fmt(b['p50_ms'], '.3g')} ms" for dev, b in (s.get("best_per_device") or {}).items()]
    return text + ("; best " + ", ".join(best) if best else "") + "."


def front_matter(report: dict, manifest: dict) -> dict:
    s = report.get("summary") or {}
    card = report.get("card") or {}
    primary = s.get("primary_metric")
    targets = []
    for tid, t in (s.get("targets") or {}).items():
        m = (manifest.get("targets") or {}).get(tid) or {}
        targets.append({"id": tid, "type": t.get("type"), "runtime": m.get("runtime"), "precision": t.get("precision"),
                        "status": t.get("status"), "model_bytes": t.get("model_bytes"), "validated_on": m.get("validated_on") or []})
    metrics = [{"name": primary, "target": tid, "device": dev, "value": d.get("metric"), "fp32": s.get("fp32_metric")}
               for tid, t in (s.get("targets") or {}).items() for dev, d in t.get("devices", {}).items()
               if primary and d.get("metric") is not None]
    fm = {"name": report.get("name"), "version": report.get("version"), "license": card.get("license") or "unknown",
          "library_name": "edgepack", "tags": sorted({"edgepack", *card.get("tags", []), *(t["type"] for t in targets if t["type"])}),
          "source_digest": "sha256:" + str((report.get("source") or {}).get("sha256")),
          "recipe_digest": "sha256:" + str(report.get("recipe_sha256")), "targets": targets, "metrics": metrics}
    for key in ("authors", "url"):
        if card.get(key):
            fm[key] = card[key]
    return fm


def _targets_table(report: dict, manifest: dict) -> list[str]:
    s = report.get("summary") or {}
    metric = s.get("primary_metric") or "metric"
    lines = [f"| target | runtime | precision | model MB | device | p50 ms | p90 ms | {_cell(metric)} | status |", "|---" * 9 + "|"]
    for tid, t in (s.get("targets") or {}).items():
        runtime = ((manifest.get("targets") or {}).get(tid) or {}).get("runtime") or t.get("type")
        mb = _fmt((t.get("model_bytes") or 0) / 1e6, ".3f") if t.get("model_bytes") is not None else "-"
        for dev, d in (t.get("devices") or {"-": {}}).items():
            lines.append(f"| {_cell(tid)} | {_cell(runtime)} | {_cell(t.get('precision') or '-')} | {mb} | {_cell(dev)} | "
                         f"{_fmt(d.get('p50_ms'), '.3f')} | {_fmt(d.get('p90_ms'), '.3f')} | {_fmt(d.get('metric'))} | "
                         f"{_cell(d.get('status') or t.get('status'))} |")
    return lines


def _gates(report: dict) -> list[str]:
    g = report.get("gates") or {}
    cfg = {k: v for k, v in (g.get("config") or {}).items() if v not in (None, [], {})}
    lines = [f"Configured: {', '.join(f'`{k}: {_cell(v)}`' for k, v in cfg.items()) or 'none'}.", "",
             f"Result: {'all passed' if g.get('passed', True) else 'FAILED'}."]
    lines += [f"- {_cell(f.get('message', f))}" for f in g.get("failures") or []]
    return lines


def render(report: dict, manifest: dict) -> str:
    """MODEL_CARD.md text for a finished report (summary block included) and its bundle manifest."""
    card = report.get("card") or {}
    s = report.get("summary") or {}
    fm = yaml.safe_dump(front_matter(report, manifest), sort_keys=False, allow_unicode=True)
    out = ["---", fm.rstrip(), "---", "", f"# {report.get('name')} {report.get('version')}", "", card_summary(report), ""]
    for title, key in (("Intended use", "intended_use"), ("Limitations", "limitations"), ("Training data", "training_data")):
        out += [f"## {title}", "", str(card.get(key) or "_Not stated in the recipe's `card:`._").strip(), ""]
    out += ["## License", "", str(card.get("license") or "_Not stated in the recipe's `card:`._"), ""]
    out += ["## Targets and validation", ""] + _targets_table(report, manifest) + [""]
    best = s.get("best_per_device") or {}
    out += [f"- best on {_cell(dev)}: `{_cell(b['target'])}` ({b['why']})" for dev, b in best.items()]
    if s.get("fp32_metric") is not None:
        out.append(f"- FP32 reference {s.get('primary_metric')}: {_fmt(s['fp32_metric'])}")
    out += ["", "## Gates", ""] + _gates(report) + ["", "## Toolchain", ""]
    out += [f"- {k}: {v}" for k, v in sorted((report.get("toolchain") or {}).items())]
    out += ["", "## Provenance", "", f"- source model: `sha256:{(report.get('source') or {}).get('sha256')}` "
            f"({(report.get('source') or {}).get('format')})", f"- recipe: `{report.get('recipe')}` `sha256:{report.get('recipe_sha256')}`",
            "- every file of this bundle, this card included, is listed with its sha256 in edgepack.json and signed "
            "(signatures/model.sig; `edgepack verify`); provenance.json is the signed SLSA statement.", ""]
    return "\n".join(out)


def oci_annotations(report: dict) -> dict[str, str]:
    """The card's summary for the OCI index and manifests (description, licenses, authors, url, best target)."""
    import json

    card = report.get("card") or {}
    s = report.get("summary") or {}
    ann = {A_DESCRIPTION: card_summary(report)[:1000]}
    if card.get("license"):
        ann[A_LICENSES] = str(card["license"])
    if card.get("authors"):
        ann[A_AUTHORS] = ", ".join(card["authors"])
    if card.get("url"):
        ann[A_URL] = str(card["url"])
    if s.get("primary_metric"):
        ann[A_METRIC] = str(s["primary_metric"])
    if s.get("best_per_device"):
        best = {dev: {k: b.get(k) for k in ("target", "p50_ms", "metric")} for dev, b in s["best_per_device"].items()}
        ann[A_BEST] = json.dumps(best, sort_keys=True, separators=(",", ":"))
    return ann

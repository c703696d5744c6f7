"""report.json for people and machines: the ``summary`` block, raw timing samples in a side file, model sizes.

``summary`` comes first in report.json: per target its precision, sizes, status and per device p50/p90, the
primary metric and status; the best target per device. The raw per-run latencies (``samples_ms``, also under
``threads_runs.<n>``) move to ``timings.json`` beside report.json (a bundle file, signed like the others);
``load_timings`` / ``samples_for`` read them back (the HTML report, old bundles with samples inline too).
"""

from __future__ import annotations

import json
from pathlib import Path

TIMINGS_NAME = "timings.json"
TIMINGS_SCHEMA = "edgepack-timings/1"

# the file(s) a runtime loads, per artifact format (the rest of a target folder is extras: build specs, an .onnx
# kept beside its .ort, ...); a format not listed counts its whole path as the model
_MODEL_FILES = {"onnx+ort": ("model.ort",), "openvino-ir": ("model.xml", "model.bin"), "tensorrt-onnx": ("model.plan", "model.onnx")}


def size_split(artifact) -> dict:
    """``{total_bytes, model_bytes, extras_bytes, model_files}`` of a compiled artifact (a file or a folder)."""
    from .artifact import iter_files

    path = Path(artifact.path)
    total = artifact.size
    if path.is_file():
        return {"total_bytes": total, "model_bytes": total, "extras_bytes": 0, "model_files": [path.name]}
    files = {rel.as_posix(): (path / rel).stat().st_size for rel in iter_files(path)}
    wanted = _MODEL_FILES.get(artifact.format)
    if artifact.format == "onnx+ort" and (artifact.meta.get("runner") or {}).get("options", {}).get("model_file"):
        wanted = (artifact.meta["runner"]["options"]["model_file"],)
    if wanted and artifact.format == "tensorrt-onnx" and "model.plan" in files:
        wanted = ("model.plan",)  # an engine built here: the .onnx stays as the on-device fallback (an extra)
    chosen = [f for f in files if wanted and f in wanted] or list(files)
    model = sum(files[f] for f in chosen)
    return {"total_bytes": total, "model_bytes": model, "extras_bytes": total - model, "model_files": sorted(chosen)}


def primary_of(report: dict) -> str | None:
    """The primary metric's name (report.json evaluate.primary; top1 when the recipe declares none)."""
    return (report.get("evaluate") or {}).get("primary")


def metric_value(dev_record: dict, name: str | None):
    """The value of metric ``name`` in one device record (evaluate: metrics, else the implicit top-1)."""
    if not name:
        return None
    acc = dev_record.get("accuracy") or {}
    m = (acc.get("metrics") or {}).get(name)
    if isinstance(m, dict):
        return m.get("value")
    return acc.get(name) if isinstance(acc.get(name), (int, float)) else None


def higher_is_better(report: dict, name: str | None) -> bool:
    ref = ((report.get("evaluate") or {}).get("reference") or {}).get(name or "") or {}
    return bool(ref.get("higher_is_better", True))


def _device_row(d: dict, primary: str | None) -> dict:
    lat = d.get("latency") or {}
    gate_msgs = "; ".join(f.get("message", "") for f in (d.get("gates") or {}).get("failures") or [] if isinstance(f, dict))
    return {"status": d.get("status"), "p50_ms": lat.get("p50_ms"), "p90_ms": lat.get("p90_ms"), "noisy": d.get("noisy"),
            "metric": metric_value(d, primary),
            **({"reason": d.get("error") or d.get("reason") or gate_msgs or None} if d.get("status") != "ok" else {})}


def _target_row(t: dict, primary: str | None) -> dict:
    size = t.get("size") or {}
    return {"type": t.get("type"), "precision": t.get("precision_label") or t.get("precision"), "status": t.get("status"),
            "size_bytes": t.get("size_bytes"), "model_bytes": size.get("model_bytes", t.get("size_bytes")),
            "extras_bytes": size.get("extras_bytes", 0 if t.get("size_bytes") is not None else None),
            "devices": {dev: _device_row(d, primary) for dev, d in (t.get("devices") or {}).items() if isinstance(d, dict)},
            **({"error": t["error"]} if t.get("error") else {})}


def best_per_device(targets: dict) -> dict:
    """Per device: the fastest target (lowest p50) of those that built and passed their gates there."""
    best: dict = {}
    for tid, t in targets.items():
        if t["status"] != "ok":
            continue
        for dev, d in t["devices"].items():
            if d["status"] == "ok" and d["p50_ms"] is not None and (dev not in best or d["p50_ms"] < best[dev]["p50_ms"]):
                best[dev] = {"target": tid, "precision": t["precision"], "p50_ms": d["p50_ms"], "p90_ms": d["p90_ms"],
                             "metric": d["metric"], "model_bytes": t["model_bytes"]}
    for dev, b in best.items():
        n = sum(1 for t in targets.values() if t["status"] == "ok" and (t["devices"].get(dev) or {}).get("status") == "ok")
        b["why"] = f"lowest p50 of {n} target(s) that passed their gates on {dev}"
    return dict(sorted(best.items()))


def summarize(report: dict) -> dict:
    """The ``summary`` block of report.json."""
    primary = primary_of(report)
    targets = {tid: _target_row(t, primary) for tid, t in (report.get("targets") or {}).items()}
    failed = [tid for tid, t in targets.items() if t["status"] != "ok"]
    status = "gates-failed" if not (report.get("gates") or {}).get("passed", True) else ("partial" if report.get("failures") else "ok")
    return {"status": status, "primary_metric": primary, "higher_is_better": higher_is_better(report, primary),
            "fp32_metric": (((report.get("evaluate") or {}).get("reference") or {}).get(primary or "") or {}).get("value"),
            "targets": targets, "failed_targets": failed, "best_per_device": best_per_device(targets)}


def split_timings(report: dict, timings_name: str = TIMINGS_NAME) -> tuple[dict, dict]:
    """(report without raw samples, timings document). Every ``samples_ms`` list of a device record (and of its
    ``threads_runs.<n>``) moves to ``timings["targets"][tid][device]["samples_ms"` / `threads_runs"]``."""
    timings: dict = {"schema": TIMINGS_SCHEMA, "targets": {}}
    targets = {}
    for tid, t in (report.get("targets") or {}).items():
        devices = {}
        for dev, d in (t.get("devices") or {}).items():
            if not isinstance(d, dict):
                devices[dev] = d
                continue
            d, entry = dict(d), {}
            if "samples_ms" in d:
                entry["samples_ms"] = d.pop("samples_ms")
            if isinstance(d.get("threads_runs"), dict):
                runs = {n: dict(r) for n, r in d["threads_runs"].items()}
                entry["threads_runs"] = {n: r.pop("samples_ms") for n, r in runs.items() if "samples_ms" in r}
                d["threads_runs"] = runs
            if entry:
                d["samples"] = f"{timings_name}#/targets/{tid}/{dev}"
                timings["targets"].setdefault(tid, {})[dev] = entry
            devices[dev] = d
        targets[tid] = {**t, "devices": devices} if "devices" in t else t
    return {**report, "targets": targets, "timings": timings_name}, timings


def finalize(report: dict, timings_name: str = TIMINGS_NAME) -> tuple[dict, dict]:
    """(report.json with ``summary`` first and no raw samples, timings.json)."""
    slim, timings = split_timings(report, timings_name)
    return {"summary": summarize(slim), **{k: v for k, v in slim.items() if k != "summary"}}, timings


def samples_for(report: dict, timings: dict | None, tid: str, dev: str) -> list[float]:
    """Raw per-run latencies (ms) of one target on one device: from timings.json, else inline (older reports)."""
    entry = ((timings or {}).get("targets") or {}).get(tid, {}).get(dev) or {}
    if entry.get("samples_ms"):
        return list(entry["samples_ms"])
    d = ((report.get("targets") or {}).get(tid) or {}).get("devices", {}).get(dev) or {}
    return list(d.get("samples_ms") or []) if isinstance(d, dict) else []


def thread_samples(timings: dict | None, tid: str, dev: str) -> dict[str, list[float]]:
    """Per thread count (``threads: [1, 4]`` in the profile) the raw latencies of one target on one device."""
    entry = ((timings or {}).get("targets") or {}).get(tid, {}).get(dev) or {}
    runs = entry.get("threads_runs")
    return {str(n): list(v) for n, v in runs.items()} if isinstance(runs, dict) else {}


def load_timings(report_path: Path, report: dict | None = None) -> dict | None:
    """The timings document named by a report.json (``timings``: a file beside it); None if absent/unreadable."""
    report_path = Path(report_path)
    report = report if report is not None else json.loads(report_path.read_text())
    name = report.get("timings")
    if not isinstance(name, str) or "/" in name or name.startswith("."):
        return None
    try:
        doc = json.loads((report_path.parent / name).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("schema") == TIMINGS_SCHEMA else None

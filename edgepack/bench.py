"""`edgepack bench`: benchmark a built bundle's targets on one or many devices, and compare two runs.

The bundle is checked first (a folder: every file against edgepack.json; a registry reference: pulled
and signature-verified). Each target runs the same protocol as in `edgepack build` (runner.py ``bench``
job, then a ``memory`` job in its own process) on every device that has its runtime, devices in
parallel (devices/fleet.py). A bundle carries no validation data, so inputs are synthetic unless
``data`` names an .npz; the report says which.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .devices import DeviceProfile, load_profile, transport_for
from .devices.fleet import run_fleet
from .devices.ssh import DeviceUnreachableError
from .errors import BadInputError, EdgepackError, ExitCode, StageError
from .recipe import Benchmark

SCHEMA = "edgepack-bench/1"
KEPT = ("runtime", "runtime_version", "host", "threads", "cold_load_ms", "first_inference_ms", "latency", "noisy", "timed",
        "samples_ms", "warmup", "load", "transport")


def protocol_for(profile: DeviceProfile, overrides: dict) -> dict:
    """Benchmark defaults <- the device profile's ``benchmark`` <- command-line overrides (validated)."""
    merged = {**Benchmark().model_dump(), **profile.benchmark, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return Benchmark.model_validate(merged).model_dump(mode="json")
    except ValidationError as e:
        err = e.errors()[0]
        raise BadInputError(f"device {profile.name}: benchmark.{'.'.join(map(str, err['loc']))}: {err['msg']}",
                            hint="fix the profile's benchmark section or the command-line option") from e


def open_bundle(ref: str, workdir: Path, key: Path | None = None) -> tuple[Path, dict, str]:
    """A bundle folder (digests checked) or a registry reference (pulled, signature verified)."""
    from .bundle.manifest import check_files, read_manifest

    p = Path(ref).expanduser()
    if p.is_dir():
        manifest = read_manifest(p)
        check_files(p, manifest)
        return p, manifest, "digests checked against edgepack.json"
    looks_like_ref = ref.startswith("layout:") or ((":" in ref or "@" in ref) and not ref.startswith(("/", ".", "~")))
    if p.exists() or not looks_like_ref:
        raise BadInputError("not a bundle folder or registry reference",
                            hint="pass a folder made by `edgepack build`, layout:PATH:TAG or HOST/REPO:TAG", where=ref)
    from .registry import pull
    from .registry.refs import parse_ref

    if key is None:
        from .cache import edgepack_home
        from .pipeline import DEFAULT_KEY, _public_key_for

        key = _public_key_for(edgepack_home() / DEFAULT_KEY)
    dest = workdir / "bundle"
    pull(parse_ref(ref), dest, Path(key))
    return dest, read_manifest(dest), f"pulled from {ref}, signature verified with {key}"


def _source_inputs(entry: dict):
    """The target's runner contract (old bundles' loose keys included), and each data input's
    (shape, dtype) as a one-sample array (batch axis removed, source layout) from the artifact's specs."""
    from .contract import RunnerContract

    contract = RunnerContract.from_entry(entry)
    specs = {s["name"]: s for s in entry.get("inputs", [])}
    sources = {}
    for b in contract.data_inputs():
        spec = specs.get(b.name, {"shape": [1], "dtype": "float32"})
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec["shape"]]
        if b.reshape is not None:  # a size-1 axis the converter added (a scalar made [1])
            shape = [d for d in shape if d != 1]
        if b.perm:  # feed = transpose(source, perm): source.shape[perm[i]] = feed.shape[i]
            src = [1] * len(shape)
            for i, axis in enumerate(b.perm):
                src[axis] = shape[i]
            shape = src
        if b.batch_axis is not None and b.batch_axis < len(shape):
            del shape[b.batch_axis]
        sources[b.source] = ((1, *shape), "float32" if b.quantization else b.dtype)
    return contract, sources


def make_inputs(entry: dict, tid: str, dest: Path, data: Path | None) -> dict:
    """Write the inputs .npz for one target; returns how they were made (goes into the report)."""
    _, sources = _source_inputs(entry)
    if data is not None:
        try:
            with np.load(data, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files if k in sources}
        except (OSError, ValueError) as e:
            raise BadInputError(f"--data {data}: cannot read it as .npz: {e}") from e
        missing = sorted(set(sources) - set(arrays))
        if missing:
            raise BadInputError(f"--data {data}: no array named {', '.join(missing)} (target {tid})",
                                hint=f"save the inputs with np.savez(path, {'=..., '.join(sources)}=...)")
        how = {"kind": "file", "path": str(data), "samples": len(next(iter(arrays.values())))}
    else:
        rng = np.random.default_rng(0)
        arrays = {}
        for name, (shape, dtype) in sources.items():
            a = rng.standard_normal(shape) if np.dtype(dtype).kind == "f" else rng.integers(0, 2, shape)
            arrays[name] = a.astype(dtype)
        how = {"kind": "synthetic", "reason": "the bundle carries no validation data; pass --data FILE.npz for real inputs",
               "shapes": {k: list(v[0]) for k, v in sources.items()}}
    np.savez(dest, **arrays)
    return how


def bench_device(profile: DeviceProfile, bundle: Path, manifest: dict, targets: list[str], inputs: dict[str, Path],
                 overrides: dict) -> dict:
    """Every selected target on one device, one after the other. Per-target failures are recorded."""
    # the profile's thread counts (threads: [1, 4]) unless --threads overrides them; each count is one run
    counts = [None] if overrides.get("threads") is not None else profile.thread_counts()
    protocols = {n: protocol_for(profile.at_threads(n), overrides) for n in counts}
    transport = transport_for(profile)
    out: dict = {}
    for tid in targets:
        entry = manifest["targets"][tid]
        runtime = entry.get("runtime")
        if runtime not in profile.runtimes:
            out[tid] = {"status": "skipped", "reason": f"device {profile.name} has no {runtime} runtime (profile runtimes: "
                        f"{', '.join(profile.runtimes)})"}
            continue
        contract, _ = _source_inputs(entry)
        files = {"artifact": bundle / entry["path"], "inputs": inputs[tid]}
        try:
            runs = {n: _bench_one(transport, runtime, protocol, contract, files) for n, protocol in protocols.items()}
        except DeviceUnreachableError:
            raise  # the whole device fails once, not once per target
        except EdgepackError as e:
            out[tid] = {"status": "failed", "error": e.one_line()}
            continue
        out[tid] = dict(runs[counts[0]])
        if len(runs) > 1:  # the first count at the top level (as with one count), every count under threads_runs
            out[tid]["threads_runs"] = {str(n): r for n, r in runs.items()}
    return out


def _bench_one(transport, runtime: str, protocol: dict, contract, files: dict) -> dict:
    """One target at one protocol: the bench job, then the memory job in its own process."""
    job = {"mode": "bench", "runtime": runtime, "protocol": protocol, "contract": contract.to_json()}
    res = transport.execute(job, files, {})
    mem = transport.execute(dict(job, mode="memory"), files, {})
    rec = {k: res[k] for k in KEPT if k in res}
    rec.update(status="ok", protocol=protocol, memory={k: v for k, v in mem.items() if k not in ("ok", "transport")})
    return rec


def run_bench(ref: str, devices: list[str], targets: list[str] | None = None, data: Path | None = None,
              overrides: dict | None = None, key: Path | None = None, timeout_s: float | None = None) -> dict:
    profiles = [load_profile(d)[0] for d in devices or ["local"]]
    with tempfile.TemporaryDirectory(prefix="edgepack-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bundle, manifest, checked = open_bundle(ref, tmp, key)
        available = list(manifest.get("targets", {}))
        chosen = targets or available
        unknown = [t for t in chosen if t not in available]
        if unknown:
            raise BadInputError(f"--target {', '.join(unknown)}: not in bundle {manifest.get('name')} {manifest.get('version')}",
                                hint=f"targets in this bundle: {', '.join(available) or 'none'}")
        inputs, how = {}, {}
        for tid in chosen:
            inputs[tid] = tmp / f"inputs-{tid}.npz"
            how[tid] = make_inputs(manifest["targets"][tid], tid, inputs[tid], data)
        outcomes = run_fleet(profiles, lambda p: bench_device(p, bundle, manifest, chosen, inputs, overrides or {}),
                             timeout_s=timeout_s)
    report: dict = {
        "schema": SCHEMA, "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "bundle": {"ref": ref, "name": manifest.get("name"), "version": manifest.get("version"), "check": checked},
        "inputs": how, "devices": {}, "failures": [],
    }
    for p in profiles:
        o = outcomes[p.name]
        dev = {"profile": {"arch": p.arch, "os": p.os, "transport": p.transport.type.value}, **o.to_json()}
        if o.status == "ok":
            dev["targets"] = o.value
            for rec in o.value.values():
                if rec["status"] == "failed":
                    report["failures"].append(rec["error"])
            if all(rec["status"] == "failed" for rec in o.value.values()) and o.value:
                dev["status"] = "failed"
        else:
            report["failures"].append(o.error)
        report["devices"][p.name] = dev
    ran = [1 for d in report["devices"].values() for t in (d.get("targets") or {}).values() if t["status"] == "ok"]
    if not ran and not report["failures"]:
        report["failures"].append("nothing ran: no selected device has the runtime of any selected target (see each 'skipped')")
    report["status"] = "ok" if not report["failures"] else ("partial" if ran else "failed")
    report["exit_code"] = {"ok": ExitCode.OK, "partial": ExitCode.PARTIAL, "failed": ExitCode.BUILD_ERROR}[report["status"]]
    return report


# ------------------------------------------------------------------ reading results back


def latency_rows(doc: dict, where: str) -> dict[tuple[str, str], dict]:
    """(target, device) -> {latency, noisy} from a bench report or a bundle's report.json."""
    rows = {}
    if doc.get("schema") == SCHEMA:
        for dev, d in doc.get("devices", {}).items():
            for tid, t in (d.get("targets") or {}).items():
                if t.get("latency"):
                    rows[(tid, dev)] = {"latency": t["latency"], "noisy": t.get("noisy", False), "metrics": _metrics_of(t)}
    elif isinstance(doc.get("targets"), dict):
        for tid, t in doc["targets"].items():
            for dev, d in (t.get("devices") or {}).items():
                if isinstance(d, dict) and d.get("latency"):
                    rows[(tid, dev)] = {"latency": d["latency"], "noisy": d.get("noisy", False), "metrics": _metrics_of(d)}
    else:
        raise BadInputError("neither an `edgepack bench --json` result nor a bundle report.json", where=where)
    return rows


def _metrics_of(rec: dict) -> dict:
    """{name: {value, higher_is_better}} of a run's `evaluate:` metrics (report.json accuracy.metrics)."""
    return {k: v for k, v in ((rec.get("accuracy") or {}).get("metrics") or {}).items() if isinstance(v, dict)}


def metric_deltas(ma: dict, mb: dict) -> dict:
    """Per metric in both runs: A, B, delta (B - A) and worse_by (positive: B is worse, in the metric's direction)."""
    from .validate.metrics import drop

    out = {}
    for name in sorted(set(ma) & set(mb)):
        va, vb, hib = ma[name].get("value"), mb[name].get("value"), bool(ma[name].get("higher_is_better", True))
        delta = vb - va if va is not None and vb is not None else None
        out[name] = {"a": va, "b": vb, "delta": delta, "worse_by": drop(vb, va, hib), "higher_is_better": hib}
    return out


def compare(a: Path, b: Path) -> dict:
    """Per (target, device) in both files: B/A ratios of p50, p90 and mean (below 1: B is faster), and the
    deltas of every `evaluate:` metric both runs have (bundle report.json files carry them)."""
    docs = []
    for p in (a, b):
        try:
            docs.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            raise BadInputError(f"cannot read it as JSON: {e}", hint="pass files written by `edgepack bench --json`", where=p) from e
    ra, rb = latency_rows(docs[0], str(a)), latency_rows(docs[1], str(b))
    rows = []
    for key in sorted(set(ra) & set(rb)):
        la, lb = ra[key]["latency"], rb[key]["latency"]
        row = {"target": key[0], "device": key[1], "a_p50_ms": la["p50_ms"], "b_p50_ms": lb["p50_ms"],
               "noisy": bool(ra[key]["noisy"] or rb[key]["noisy"])}
        for m in ("p50_ms", "p90_ms", "mean_ms"):
            row[f"ratio_{m[:-3]}"] = (lb[m] / la[m]) if la.get(m) else None
        row["metrics"] = metric_deltas(ra[key]["metrics"], rb[key]["metrics"])
        rows.append(row)
    if not rows:
        raise StageError(f"{a} and {b} have no (target, device) pair in common",
                         hint="compare runs of the same bundle targets, or rename devices consistently")
    only = sorted({f"{t}@{d}" for t, d in set(ra) ^ set(rb)})
    return {"a": str(a), "b": str(b), "rows": rows, "unmatched": only}


def format_report(report: dict) -> str:
    lines = [f"{'target':<14} {'device':<16} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'cv':>6} {'runs':>6} "
             f"{'peak MB':>8}  status"]
    lines.append("-" * len(lines[0]))
    for dev, d in report["devices"].items():
        if not d.get("targets"):
            lines.append(f"{'*':<14} {dev:<16} {'':>9} {'':>9} {'':>9} {'':>6} {'':>6} {'':>8}  {d['status']}: {d.get('error', '')}")
            continue
        for tid, t in d["targets"].items():
            if t["status"] != "ok":
                lines.append(f"{tid:<14} {dev:<16} {'':>9} {'':>9} {'':>9} {'':>6} {'':>6} {'':>8}  "
                             f"{t['status']}: {t.get('error') or t.get('reason')}")
                continue
            lat = t["latency"]
            lines.append(f"{tid:<14} {dev:<16} {lat['p50_ms']:9.3f} {lat['p90_ms']:9.3f} {lat['p99_ms']:9.3f} "
                         f"{lat['cv']:6.2f} {lat['count']:6d} {t['memory'].get('peak_rss_mb', 0):8.1f}  "
                         f"ok{' (noisy)' if t.get('noisy') else ''}")
    kinds = {h["kind"] for h in report["inputs"].values()}
    if "synthetic" in kinds:
        lines.append("inputs: synthetic (the bundle carries no validation data; --data FILE.npz for real inputs)")
    return "\n".join(lines)


def format_compare(cmp: dict) -> str:
    lines = [f"{'target':<14} {'device':<16} {'A p50 ms':>9} {'B p50 ms':>9} {'B/A p50':>8} {'B/A p90':>8} {'B/A mean':>9}"]
    lines.append("-" * len(lines[0]))
    def fmt(v):
        return f"{v:.3f}" if v is not None else "-"

    for r in cmp["rows"]:
        lines.append(f"{r['target']:<14} {r['device']:<16} {r['a_p50_ms']:9.3f} {r['b_p50_ms']:9.3f} {fmt(r['ratio_p50']):>8} "
                     f"{fmt(r['ratio_p90']):>8} {fmt(r['ratio_mean']):>9}{'  (noisy)' if r['noisy'] else ''}")
        for name, m in (r.get("metrics") or {}).items():
            worse = m["worse_by"]
            verdict = "-" if worse is None else ("worse" if worse > 0 else "better" if worse < 0 else "same")
            lines.append(f"{'':<14} {name:<16} A {fmt(m['a']):>9} B {fmt(m['b']):>9}  delta {fmt(m['delta'])} ({verdict})")
    if cmp["unmatched"]:
        lines.append(f"only in one file: {', '.join(cmp['unmatched'])}")
    return "\n".join(lines)

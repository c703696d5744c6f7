"""A runner job as the browser page runs it, and the page's answer as the runner's result.

The host does the feeding (runner.py's contract code: batch axes, constants, dtypes), writes every
input tensor into one binary file and describes it in the page's job; the page (devices/web/runner.js)
runs onnxruntime-web and posts its timings and raw outputs, which become the runner's bench/memory
result here (runner.stats, outputs mapped by the contract into the .npz validation reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import StageError
from . import runner

PAGE = Path(__file__).with_name("web")
DTYPES = {"float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "uint16", "bool"}


def _specs(feeds: dict, out, offset: int) -> tuple[list[dict], int]:
    specs = []
    for name, a in feeds.items():
        a = np.ascontiguousarray(a)
        if a.dtype.name not in DTYPES:
            raise StageError(f"input {name}: dtype {a.dtype.name} is not supported by onnxruntime-web's runner")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        out.write(data)
        specs.append({"name": name, "type": a.dtype.name, "dims": list(a.shape), "offset": offset, "bytes": len(data)})
        offset += len(data)
    return specs, offset


def prepare(job: dict, files: dict, tmp: Path) -> tuple[dict, dict[str, Path]]:
    """(the page's job, url path -> local file) for a bench or memory job."""
    if job.get("stream"):
        raise StageError("the browser device does not run stream mode (data.validation.mode: stream) yet")
    contract = job["contract"]
    folder = Path(files["artifact"])
    options = contract.get("options") or {}
    model_file = options.get("model_file", "model.onnx")
    routes = {f"/{model_file}": folder / model_file}
    for page_file in ("index.html", "runner.js"):  # the page the bundle ships; the package's for older artifacts
        routes[f"/{page_file}"] = folder / page_file if (folder / page_file).is_file() else PAGE / page_file
    arrays = runner._read_inputs(files["inputs"])
    n = runner.data_count(contract, arrays, False)[0]
    if job.get("limit") is not None:
        n = min(n, int(job["limit"]))
    bench = job.get("mode", "bench") == "bench"
    with open(tmp / "feeds.bin", "wb") as out:
        first, offset = _specs(runner.first_feeds(contract, arrays, False), out, 0)
        samples = []
        for i in range(n if bench else 0):
            specs, offset = _specs(runner.make_feeds(contract, arrays, i, runner.state_init(contract)), out, offset)
            samples.append(specs)
    routes["/feeds.bin"] = tmp / "feeds.bin"
    proto = job.get("protocol") or {}
    page_job = {"model": model_file, "mode": job.get("mode", "bench"), "execution_provider": options.get("execution_provider", "wasm"),
                "threads": proto.get("threads"), "protocol": proto, "memory_runs": int(job.get("memory_runs", 5)),
                "feeds_url": "/feeds.bin", "first": first, "samples": samples}
    return page_job, routes


def _decode(blob: bytes, meta: list[list[dict]], contract: dict) -> dict[str, np.ndarray]:
    by_name = {o["name"]: o for o in contract["outputs"]}
    rows: dict[str, list] = {o["name"]: [] for o in contract["outputs"]}
    for sample in meta:
        outs = [np.frombuffer(blob[m["offset"]:m["offset"] + m["bytes"]], dtype=np.dtype(m["type"]).newbyteorder("<")).reshape(m["dims"])
                for m in sample]
        for k, a in runner.map_outputs(outs, contract).items():
            rows[k].append(runner._unbatch(by_name[k], a))
    return {k: np.stack(v) for k, v in rows.items() if v}


def _runtime_version(ort_version: str, browser: str) -> str:
    return f"{ort_version} ({browser})"


def bench_result(job: dict, page_job: dict, raw: dict, fetch: dict, ort_version: str, browser: str) -> dict:
    """The runner's bench result from the page's answer; outputs written to ``fetch['outputs']``."""
    proto = job.get("protocol") or {}
    samples = [float(x) for x in raw.get("samples") or []]
    result = {
        "ok": True,
        "runner_version": runner.RUNNER_VERSION,
        "runtime": job["runtime"],
        "runtime_version": _runtime_version(ort_version, browser),
        "load": {"execution_providers": raw.get("execution_providers"), "cross_origin_isolated": raw.get("cross_origin_isolated"),
                 "model_file": page_job["model"], "user_agent": raw.get("user_agent")},
        "host": runner.host_info(),
        "threads": page_job["threads"],
        "warmup": raw.get("warm"),
        "timed": raw.get("timed"),
        "cold_load_ms": float(raw["cold_load_ms"]),
        "first_inference_ms": float(raw["first_inference_ms"]),
        "latency": runner.stats(samples),
        "samples_ms": [round(x, 4) for x in samples],
        "stream": False,
        "transport": {"type": "browser", "browser": browser, "onnxruntime_web": ort_version},
    }
    result["noisy"] = bool(result["latency"].get("cv", 0) > proto.get("noisy_cv", 0.15))
    if fetch.get("outputs") and raw.get("outputs") is not None:
        payload = _decode(raw.get("_outputs_blob") or b"", raw["outputs"], job["contract"])
        dest = Path(fetch["outputs"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp.npz")
        np.savez(tmp, **payload)
        tmp.replace(dest)
        result["outputs_written"] = len(next(iter(payload.values()))) if payload else 0
    return result


def memory_result(raw: dict, memory: dict, ort_version: str, browser: str) -> dict:
    """Peak RSS of the page's renderer process over its baseline before the session was created (Linux)."""
    base, peaks = memory.get("baseline") or {}, memory.get("peaks") or {}
    grown = {pid: (peaks.get(pid) or 0.0) - b for pid, b in base.items() if peaks.get(pid) is not None}
    pid = max(grown, key=lambda p: grown[p]) if grown else None
    return {
        "ok": True,
        "rss_before_load_mb": base.get(pid) if pid is not None else None,
        "peak_rss_mb": peaks.get(pid) if pid is not None else None,
        "model_memory_mb": max(0.0, grown[pid]) if pid is not None else None,
        "method": "Chromium renderer VmHWM (reset when the page has its inputs, before the session is created)" if pid is not None
                  else "unavailable (no renderer process found under /proc)",
        "runtime_version": _runtime_version(ort_version, browser),
    }

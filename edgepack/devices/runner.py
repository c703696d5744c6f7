#!/usr/bin/env python3
"""edgepack device runner.

Self-contained on purpose: it is copied to the device and run there with only numpy and the
target's runtime installed (never edgepack's heavy dependencies). Usage:

    python runner.py JOB.json RESULT.json

Modes (job["mode"]):
  bench   cold load, first inference, warm-up (count and time), timed runs (count and time), then
          the validation inputs' outputs written to job["outputs"] (.npz, one array per output)
  memory  peak resident memory of load + a few inferences, in its own process so it never
          disturbs timing
  probe   what this device has: architecture, Python, runtimes and versions, memory, storage
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

RUNNER_VERSION = "1"

# ------------------------------------------------------------------ adapters


class OnnxRuntimeAdapter:
    module = "onnxruntime"

    def version(self):
        import onnxruntime

        return onnxruntime.__version__

    def load(self, path, threads, options):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(path, so, providers=options.get("providers") or ["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        return {"providers": self.sess.get_providers()}

    def input_names(self):
        return [i.name for i in self.sess.get_inputs()]

    def run(self, feeds):
        return self.sess.run(None, feeds)


# runtime name -> adapter class. Targets add their adapter here (tflite, openvino, coreml, tensorrt).
ADAPTERS = {
    "onnxruntime": OnnxRuntimeAdapter,
}

# ------------------------------------------------------------------ statistics


def stats(samples_ms):
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    return {
        "count": int(a.size),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "mean_ms": mean,
        "std_ms": std,
        "cv": (std / mean) if mean > 0 else 0.0,
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "throughput_per_s": (1000.0 / mean) if mean > 0 else 0.0,
    }


# ------------------------------------------------------------------ host facts


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def host_info():
    cpu = None
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            cpu = line.split(":", 1)[1].strip()
            break
    if cpu is None and sys.platform == "darwin":
        try:
            import subprocess

            cpu = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True).stdout.strip()
        except OSError:
            pass
    return {
        "arch": platform.machine(),
        "os": platform.system(),
        "os_release": platform.release(),
        "python": platform.python_version(),
        "cpu_model": cpu or platform.processor() or "unknown",
        "cpu_count": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "cpu_max_khz": _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq"),
    }


def _mem_free_mb():
    text = _read("/proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024.0
    return None


def probe(job):
    import importlib.util
    import shutil

    runtimes = {}
    for name, cls in ADAPTERS.items():
        if importlib.util.find_spec(cls.module) is None:
            runtimes[name] = None
            continue
        try:
            runtimes[name] = cls().version()
        except Exception as e:  # a runtime that is installed but broken
            runtimes[name] = f"error: {e.__class__.__name__}: {e}"
    try:
        import numpy

        np_version = numpy.__version__
    except ImportError:
        np_version = None
    workdir = job.get("workdir") or "."
    return {
        "host": host_info(),
        "numpy": np_version,
        "runtimes": runtimes,
        "mem_free_mb": _mem_free_mb(),
        "disk_free_mb": shutil.disk_usage(workdir).free / 1e6,
    }


# ------------------------------------------------------------------ running


def _peak_rss_mb():
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _current_rss_mb():
    text = _read("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return _peak_rss_mb()


def _feeds(arrays, i, job, input_names):
    """Sample i of the data, mapped (and transposed) to the artifact's inputs."""
    import numpy as np

    mapping = job.get("input_map") or [{"source": s, "name": n} for s, n in zip(sorted(arrays), input_names)]
    feeds = {}
    for m in mapping:
        a = arrays[m["source"]][i : i + 1]
        if m.get("perm"):
            a = np.transpose(a, m["perm"])
        if m.get("dtype"):
            a = a.astype(m["dtype"])
        feeds[m["name"]] = np.ascontiguousarray(a)
    return feeds


def _map_outputs(outs, job):
    import numpy as np

    perms = job.get("output_perms") or []
    order = job.get("output_order")
    if order is not None:
        outs = [outs[k] for k in order]
    res = []
    for k, o in enumerate(outs):
        o = np.asarray(o)
        if k < len(perms) and perms[k]:
            o = np.transpose(o, perms[k])
        res.append(o.astype(np.float32) if o.dtype.kind == "f" else o)
    return res


def bench(job):
    import numpy as np

    adapter = ADAPTERS[job["runtime"]]()
    proto = job.get("protocol", {})
    threads = proto.get("threads")
    with np.load(job["inputs"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__labels__"}
    n = len(next(iter(arrays.values())))

    t0 = time.perf_counter()
    load_info = adapter.load(job["artifact"], threads, job.get("options", {}))
    cold_load_ms = (time.perf_counter() - t0) * 1e3
    names = adapter.input_names()
    first = _feeds(arrays, 0, job, names)
    t0 = time.perf_counter()
    adapter.run(first)
    first_ms = (time.perf_counter() - t0) * 1e3

    warm_count, warm_s = int(proto.get("warmup_runs", 10)), float(proto.get("warmup_seconds", 0.2))
    t_end = time.perf_counter() + warm_s
    done = 0
    while done < warm_count or time.perf_counter() < t_end:
        adapter.run(first)
        done += 1
    runs, min_s = int(proto.get("runs", 50)), float(proto.get("min_seconds", 0.5))
    max_runs = int(proto.get("max_runs", 100000))
    samples = []
    t_start = time.perf_counter()
    while (len(samples) < runs or time.perf_counter() - t_start < min_s) and len(samples) < max_runs:
        t0 = time.perf_counter()
        adapter.run(first)
        samples.append((time.perf_counter() - t0) * 1e3)

    result = {
        "runner_version": RUNNER_VERSION,
        "runtime": job["runtime"],
        "runtime_version": adapter.version(),
        "load": load_info,
        "host": host_info(),
        "threads": threads,
        "warmup": {"runs": done, "seconds": warm_s},
        "cold_load_ms": cold_load_ms,
        "first_inference_ms": first_ms,
        "latency": stats(samples),
        "samples_ms": [round(x, 4) for x in samples],
    }
    cv_limit = proto.get("noisy_cv", 0.15)
    result["noisy"] = bool(result["latency"].get("cv", 0) > cv_limit)
    if job.get("outputs"):
        limit = job.get("limit") or n
        collected = None
        for i in range(min(n, limit)):
            outs = _map_outputs(adapter.run(_feeds(arrays, i, job, names)), job)
            if collected is None:
                collected = [[] for _ in outs]
            for k, o in enumerate(outs):
                collected[k].append(o)
        payload = {f"output_{k}": np.concatenate(v, axis=0) for k, v in enumerate(collected or [])}
        tmp = job["outputs"] + ".tmp.npz"
        np.savez(tmp, **payload)
        os.replace(tmp, job["outputs"])
        result["outputs_written"] = min(n, limit)
    return result


def memory(job):
    import numpy as np

    adapter = ADAPTERS[job["runtime"]]()
    with np.load(job["inputs"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__labels__"}
    before = _current_rss_mb()
    adapter.load(job["artifact"], job.get("protocol", {}).get("threads"), job.get("options", {}))
    after_load = _current_rss_mb()
    first = _feeds(arrays, 0, job, adapter.input_names())
    for _ in range(int(job.get("memory_runs", 5))):
        adapter.run(first)
    return {
        "rss_before_load_mb": before,
        "rss_after_load_mb": after_load,
        "peak_rss_mb": _peak_rss_mb(),
        "model_memory_mb": max(0.0, _peak_rss_mb() - before),
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: runner.py JOB.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    mode = job.get("mode", "bench")
    try:
        if mode != "probe" and job.get("runtime") not in ADAPTERS:
            raise RuntimeError(f"this runner has no adapter for runtime '{job.get('runtime')}'")
        result = {"probe": probe, "bench": bench, "memory": memory}[mode](job)
        result["ok"] = True
    except Exception as e:  # report, don't crash: the caller decides
        import traceback

        result = {"ok": False, "error": f"{e.__class__.__name__}: {e}", "traceback": traceback.format_exc()}
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, argv[1])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

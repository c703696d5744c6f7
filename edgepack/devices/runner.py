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
  generate  greedy decoding of a KV-cache decoder: TTFT, tokens/s, teacher-forced tokens (genrunner.py,
          shipped beside this file as the job's ``genrunner`` file)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

# 2: memory is VmHWM over the post-import baseline (issue 11); 3: job["contract"] (edgepack/contract.py), stream mode,
# outputs keyed by name; 4: bounded warm-up, timed.stopped_by, noisy from the spread (p90-p50)/p50, p50_noise_ms
RUNNER_VERSION = "4"

# ------------------------------------------------------------------ adapters (shipped beside this file)


def _sibling(name):
    """A module shipped in this file's folder (runtimes.py, runtime_tensorrt.py, genrunner.py), loaded by its path:
    the runner runs as a script under ``python -I``, where its folder is not on sys.path."""
    import importlib.util

    key = f"edgepack_runner_{name}"
    if key in sys.modules:
        return sys.modules[key]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(key, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[key] = mod
    spec.loader.exec_module(mod)
    return mod


if __package__:  # imported as edgepack.devices.runner (the build's in-process uses)
    from . import runtime_tensorrt, runtimes
else:  # run as a script on the device
    runtimes, runtime_tensorrt = _sibling("runtimes"), _sibling("runtime_tensorrt")
ADAPTERS = {**runtimes.ADAPTERS, "tensorrt": runtime_tensorrt.TensorRTAdapter}

# ------------------------------------------------------------------ statistics


def stats(samples_ms):
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {}
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if a.size > 1 else 0.0
    p50, p90 = float(np.percentile(a, 50)), float(np.percentile(a, 90))
    return {
        "count": int(a.size),
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
        "mean_ms": mean,
        "std_ms": std,
        "cv": (std / mean) if mean > 0 else 0.0,
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": float(np.percentile(a, 99)),
        "spread": (p90 - p50) / p50 if p50 > 0 else 0.0,  # the noise measure (docs/benchmark-protocol.md)
        "p50_noise_ms": p50_noise(a),
        "throughput_per_s": (1000.0 / mean) if mean > 0 else 0.0,
    }


def p50_noise(a, blocks=10, min_block=5):
    """How far the median moved during the run: half the range of the medians of (up to) ``blocks``
    consecutive blocks of samples (drift, contention). 0.0 with fewer than two blocks."""
    import numpy as np

    k = min(blocks, len(a) // min_block)
    if k < 2:
        return 0.0
    meds = [float(np.median(b)) for b in np.array_split(np.asarray(a), k)]
    return (max(meds) - min(meds)) / 2.0


def is_noisy(latency, limit):
    """Noisy: the timed runs' spread (p90 - p50) / p50 is above ``limit`` (benchmark.noisy_spread)."""
    return bool(latency.get("spread", 0.0) > limit)


def warm_up(run, feeds, max_runs, max_seconds):
    """Untimed runs before timing, bounded both ways: stop after ``max_runs`` runs or once
    ``max_seconds`` have passed, whichever comes first (one run at least, unless max_runs is 0)."""
    t0 = time.perf_counter()
    done = 0
    while done < max_runs and (done == 0 or time.perf_counter() - t0 < max_seconds):
        run(feeds)
        done += 1
    elapsed = time.perf_counter() - t0
    return {"runs": done, "seconds": max_seconds, "max_runs": max_runs, "elapsed_s": elapsed,
            "stopped_by": "warmup_runs" if done >= max_runs else "warmup_seconds"}


def time_runs(run, feeds, runs, min_seconds, max_runs):
    """One perf_counter sample per run until both ``runs`` runs and ``min_seconds`` seconds are done,
    or ``max_runs`` runs (a cap: the record says when it cut the timing short of min_seconds)."""
    samples = []
    t_start = time.perf_counter()
    while (len(samples) < runs or time.perf_counter() - t_start < min_seconds) and len(samples) < max_runs:
        t0 = time.perf_counter()
        run(feeds)
        samples.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - t_start
    capped = len(samples) >= max_runs and (len(samples) < runs or elapsed < min_seconds)
    timed = {"runs": len(samples), "elapsed_s": elapsed, "min_seconds": min_seconds, "max_runs": max_runs,
             "hit_max_runs": len(samples) >= max_runs,
             "stopped_by": "max_runs" if capped else ("min_seconds" if len(samples) > runs else "runs")}
    if capped:
        timed["note"] = ("max_runs (%d) reached after %.3f s, before min_seconds (%g s): raise benchmark.max_runs to time longer"
                         % (max_runs, elapsed, min_seconds))
    return timed, samples


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


# runtime -> the only sys.platform where it can run models
ONLY_ON = {"coreml": "darwin"}


def probe(job):
    import importlib.util
    import shutil

    runtimes = {}
    for name, cls in ADAPTERS.items():
        if importlib.util.find_spec(cls.module) is None:
            runtimes[name] = None
            continue
        if name in ONLY_ON and sys.platform != ONLY_ON[name]:  # don't import it (coremltools pulls in torch: ~1 min)
            from importlib.metadata import PackageNotFoundError, version

            try:
                v = version(cls.module)
            except PackageNotFoundError:
                v = "?"
            runtimes[name] = f"unusable: needs {ONLY_ON[name]} ({cls.module} {v} is installed)"
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


# ------------------------------------------------------------------ feeding (the runner contract)
# job["contract"] is edgepack/contract.py's RunnerContract as JSON. A data array holds one input
# without its batch axis: samples on axis 0 ([N, ...]), or in stream mode (job["stream"]) sequences
# and steps on axes 0 and 1 ([S, T, ...]). Constants are fed as given; states start at their init
# and, in stream mode, take the state output of the previous step.


def _to_feed(b, a):
    """A source-layout array (batch of 1 included) as the artifact's input ``b`` wants it."""
    import numpy as np

    if b.get("perm"):
        a = np.transpose(a, b["perm"])
    if b.get("reshape") is not None:  # e.g. a scalar the converter made [1]
        a = a.reshape(b["reshape"])
    q = b.get("quantization")  # quantized input (e.g. full-integer TFLite): done here, outside the timed runs
    if q and a.dtype.kind == "f":
        info = np.iinfo(q.get("dtype", "int8"))
        a = np.clip(np.round(a / q["scale"] + q["zero_point"]), info.min, info.max).astype(info.dtype)
    if b.get("dtype"):
        a = a.astype(b["dtype"], copy=False)
    return np.require(a, requirements="C")  # not ascontiguousarray: it makes a 0-d input 1-d


def state_init(contract):
    """{state input: its first-step value} (zeros unless the contract carries an init)."""
    import numpy as np

    return {s["input"]: (np.zeros(s["shape"], s["dtype"]) if s.get("init") is None else np.asarray(s["init"], s["dtype"]))
            for s in contract.get("state", [])}


def make_feeds(contract, arrays, index, state):
    """The feeds of one sample (index i) or one step (index (s, t)), with the current state values."""
    import numpy as np

    feeds = {}
    for b in contract["inputs"]:
        src = b["source"]
        if b.get("value") is not None:
            a = np.asarray(b["value"])
        elif src in state:
            a = np.asarray(state[src])
        else:
            a = np.asarray(arrays[src][index])
            if b.get("batch_axis") is not None:
                a = np.expand_dims(a, b["batch_axis"])
        feeds[b["name"]] = _to_feed(b, a)
    return feeds


def map_outputs(outs, contract):
    """{output name: array in the ONNX layout} from the runtime's output list."""
    import numpy as np

    res = {}
    for o in contract["outputs"]:
        a = np.asarray(outs[o["index"]])
        if o.get("perm"):
            a = np.transpose(a, o["perm"])
        res[o["name"]] = a.astype(np.float32) if a.dtype.kind == "f" else a
    return res


def _unbatch(o, a):
    ax = o.get("batch_axis")
    return a[(slice(None),) * ax + (0,)] if ax is not None and ax < a.ndim and a.shape[ax] == 1 else a


def data_count(contract, arrays, stream):
    """(samples,) or (sequences, steps) of the data arrays the contract reads."""
    states = {s["input"] for s in contract.get("state", [])}
    for b in contract["inputs"]:
        if b.get("value") is None and b["source"] not in states:
            a = arrays[b["source"]]
            return tuple(a.shape[:2]) if stream else (a.shape[0],)
    raise RuntimeError("no model input is fed from the data (all are constants or states)")


def first_feeds(contract, arrays, stream):
    return make_feeds(contract, arrays, (0, 0) if stream else 0, state_init(contract))


def run_all(run, contract, arrays, stream, limit=None):
    """Every sample (or every step of every sequence, state carried) through ``run(feeds)``:
    {output name: [N, ...] or [S, T, ...]}, each sample/step without its batch axis."""
    import numpy as np

    count = data_count(contract, arrays, stream)
    n = count[0] if limit is None else min(count[0], limit)
    names = [o["name"] for o in contract["outputs"]]
    by_name = {o["name"]: o for o in contract["outputs"]}
    rows = {k: [] for k in names}
    for i in range(n):
        state = state_init(contract)
        steps = {k: [] for k in names}
        for t in range(count[1] if stream else 1):
            outs = map_outputs(run(make_feeds(contract, arrays, (i, t) if stream else i, state)), contract)
            for s in contract.get("state", []):
                state[s["input"]] = outs[s["output"]]
            for k in names:
                steps[k].append(_unbatch(by_name[k], outs[k]))
        for k in names:
            rows[k].append(np.stack(steps[k]) if stream else steps[k][0])
    return {k: np.stack(v) for k, v in rows.items()}


def _read_inputs(path):
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files if not k.startswith("__")}


def bench(job):
    import numpy as np

    adapter = ADAPTERS[job["runtime"]]()
    proto = job.get("protocol", {})
    threads = proto.get("threads")
    contract, stream = job["contract"], bool(job.get("stream"))
    arrays = _read_inputs(job["inputs"])

    t0 = time.perf_counter()
    load_info = adapter.load(job["artifact"], threads, contract.get("options", {}))
    cold_load_ms = (time.perf_counter() - t0) * 1e3
    first = first_feeds(contract, arrays, stream)  # stream mode: latency is per step
    t0 = time.perf_counter()
    adapter.run(first)
    first_ms = (time.perf_counter() - t0) * 1e3

    warmup = warm_up(adapter.run, first, int(proto.get("warmup_runs", 10)), float(proto.get("warmup_seconds", 0.2)))
    timed, samples = time_runs(adapter.run, first, int(proto.get("runs", 50)), float(proto.get("min_seconds", 0.5)),
                               int(proto.get("max_runs", 100000)))

    result = {
        "runner_version": RUNNER_VERSION,
        "runtime": job["runtime"],
        "runtime_version": adapter.version(),
        "load": load_info,
        "host": host_info(),
        "threads": threads,
        "warmup": warmup,
        "timed": timed,
        "cold_load_ms": cold_load_ms,
        "first_inference_ms": first_ms,
        "latency": stats(samples),
        "samples_ms": [round(x, 4) for x in samples],
    }
    result["noisy"] = is_noisy(result["latency"], float(proto.get("noisy_spread", 0.25)))
    result["stream"] = stream
    if job.get("outputs"):
        payload = run_all(adapter.run, contract, arrays, stream, job.get("limit"))
        tmp = job["outputs"] + ".tmp.npz"
        np.savez(tmp, **payload)  # keyed by output name
        os.replace(tmp, job["outputs"])
        result["outputs_written"] = len(next(iter(payload.values()))) if payload else 0
    return result


def _hwm_mb():
    """This address space's own peak RSS (Linux VmHWM). ru_maxrss is not: Linux carries the parent's
    high-water mark across fork/vfork + exec, so a runner started by a build holding torch reported the
    build's 360 MB. Elsewhere (macOS) ru_maxrss is the fallback."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0, "VmHWM"
    return _peak_rss_mb(), "ru_maxrss"


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory(job):
    """Peak RSS of load + a few inferences over the runner's baseline after its imports (numpy, the runtime)
    and after reading the inputs: what the model costs, not what the caller's process had (docs/benchmark-protocol.md)."""
    import numpy as np  # noqa: F401 - imported before the baseline is taken: part of it, not of the model

    adapter = ADAPTERS[job["runtime"]]()
    runtime_version = adapter.version()  # imports the runtime: part of the baseline, not of the model
    contract = job["contract"]
    arrays = _read_inputs(job["inputs"])
    baseline = _current_rss_mb()
    reset = _reset_peak()
    adapter.load(job["artifact"], job.get("protocol", {}).get("threads"), contract.get("options", {}))
    after_load = _current_rss_mb()
    first = first_feeds(contract, arrays, bool(job.get("stream")))
    for _ in range(int(job.get("memory_runs", 5))):
        adapter.run(first)
    peak, method = _hwm_mb()
    peak = max(peak, after_load, _current_rss_mb())
    return {
        "rss_before_load_mb": baseline,
        "rss_after_load_mb": after_load,
        "peak_rss_mb": peak,
        "model_memory_mb": max(0.0, peak - baseline),
        "method": f"{method}{' reset after imports' if reset else ''}, process started with python -I",
        "runtime_version": runtime_version,
    }


def generate(job):
    """Greedy generation (edgepack/devices/genrunner.py, sent as the job's 'genrunner' file)."""
    import importlib.util

    if job.get("backend") == "executorch":
        runtimes._import_et_runtime()  # the runtime without the ExecuTorch compiler (genrunner's EtDecoder imports it)
    spec = importlib.util.spec_from_file_location("edgepack_genrunner", job["genrunner"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate(job)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: runner.py JOB.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        job = json.load(f)
    mode = job.get("mode", "bench")
    try:
        if mode not in ("probe", "generate") and job.get("runtime") not in ADAPTERS:
            raise RuntimeError(f"this runner has no adapter for runtime '{job.get('runtime')}'")
        result = {"probe": probe, "bench": bench, "memory": memory, "generate": generate}[mode](job)
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

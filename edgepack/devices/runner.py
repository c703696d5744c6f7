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
        if os.path.isdir(path):  # a folder artifact (model.onnx + model.ort): options.model_file picks one
            path = os.path.join(path, options.get("model_file", "model.onnx"))
        self.sess = ort.InferenceSession(path, so, providers=options.get("providers") or ["CPUExecutionProvider"])
        self.out_names = [o.name for o in self.sess.get_outputs()]
        return {"providers": self.sess.get_providers(), "model_file": os.path.basename(path)}

    def input_names(self):
        return [i.name for i in self.sess.get_inputs()]

    def run(self, feeds):
        return self.sess.run(None, feeds)


def _first_module(*names):
    import importlib.util

    for n in names:
        try:
            if importlib.util.find_spec(n) is not None:
                return n
        except (ImportError, ValueError):
            pass
    return names[0]


def _capture_fd2(fn):
    """Run fn() with the C-level stderr captured (runtimes log delegate use there); return (result, text)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    sys.stderr.write(text)
    return result, text


class TFLiteAdapter:
    """LiteRT / TFLite interpreter: ai_edge_litert, else tflite_runtime, else tensorflow.lite.

    Float feeds for quantized (int8/uint8/int16) inputs are quantized with the tensor's scale and
    zero point; quantized outputs are dequantized, so outputs compare with the FP32 reference.
    Options: xnnpack (default true: the interpreter's default delegates, i.e. XNNPACK on CPU).
    """

    module = _first_module("ai_edge_litert", "tflite_runtime", "tensorflow")

    def _interpreter(self):
        """(Interpreter class, OpResolverType enum) of the first runtime found."""
        if self.module == "ai_edge_litert":
            from ai_edge_litert import interpreter as m

            return m.Interpreter, m.OpResolverType
        if self.module == "tflite_runtime":
            from tflite_runtime import interpreter as m

            return m.Interpreter, m.OpResolverType
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType

    def version(self):
        from importlib.metadata import version

        dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(self.module, self.module)
        return f"{dist} {version(dist)}"

    def load(self, path, threads, options):
        interpreter, resolvers = self._interpreter()
        xnnpack = options.get("xnnpack", True)
        resolver = resolvers.AUTO if xnnpack else resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES

        def make():
            it = interpreter(model_path=path, num_threads=int(threads) if threads else None, experimental_op_resolver_type=resolver)
            it.allocate_tensors()
            return it

        self.it, log = _capture_fd2(make)
        self.ins = {d["name"]: d for d in self.it.get_input_details()}
        self.outs = self.it.get_output_details()
        return {
            "interpreter": f"{self.module} ({self.version()})",
            "op_resolver": "AUTO (default delegates)" if xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
            "xnnpack": "XNNPACK delegate" in log,
            "xnnpack_evidence": next((ln.strip() for ln in log.splitlines() if "XNNPACK" in ln), None),
            "quantized_inputs": [n for n, d in self.ins.items() if d["quantization"][0]],
            "quantized_outputs": [d["name"] for d in self.outs if d["quantization"][0]],
        }

    def input_names(self):
        return list(self.ins)

    def run(self, feeds):
        import numpy as np

        for name, a in feeds.items():
            d = self.ins[name]
            scale, zero = d["quantization"]
            if scale and a.dtype.kind == "f" and np.dtype(d["dtype"]).kind in "iu":
                info = np.iinfo(d["dtype"])
                a = np.clip(np.round(a / scale + zero), info.min, info.max).astype(d["dtype"])
            self.it.set_tensor(d["index"], a)
        self.it.invoke()
        res = []
        for d in self.outs:
            o = self.it.get_tensor(d["index"])
            scale, zero = d["quantization"]
            if scale and o.dtype.kind in "iu":
                o = (o.astype(np.float32) - zero) * scale
            res.append(o)
        return res


class OpenVINOAdapter:
    """OpenVINO runtime. The artifact is an IR folder (model.xml + model.bin) or the .xml itself.

    Options: device (default CPU), inference_precision (default f32: pinned, never the plugin's
    default, which is bf16 on CPUs with bf16/AMX support). The effective value is returned.
    """

    module = "openvino"

    def version(self):
        import openvino

        return openvino.__version__

    def load(self, path, threads, options):
        import glob

        import openvino as ov

        xml = path
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.xml")))
            if not found:
                raise RuntimeError(f"no .xml file in the OpenVINO IR folder {path}")
            xml = found[0]
        device = options.get("device", "CPU")
        wanted = options.get("inference_precision", "f32")
        config = {"INFERENCE_PRECISION_HINT": wanted, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        self.cm = core.compile_model(core.read_model(xml), device, config)
        self.req = self.cm.create_infer_request()
        info = {"device": device, "inference_precision_requested": wanted}
        for key, prop in (("inference_precision", "INFERENCE_PRECISION_HINT"), ("num_threads", "INFERENCE_NUM_THREADS"),
                          ("execution_devices", "EXECUTION_DEVICES")):
            try:
                value = self.cm.get_property(prop)
                if hasattr(value, "to_string"):  # an openvino Type: 'f32', not "<Type: 'float32'>"
                    value = value.to_string()
                info[key] = value if isinstance(value, (int, float, list)) else str(value)
            except Exception as e:  # noqa: BLE001 - a property the plugin does not expose: recorded, not fatal
                info[key] = f"unavailable: {e.__class__.__name__}"
        return info

    def input_names(self):
        return [i.get_any_name() for i in self.cm.inputs]

    def run(self, feeds):
        # shared (zero-copy) inputs/outputs: ~40 us less Python-side overhead per call on this host;
        # outputs are copied below because the next call overwrites them
        self.req.infer(feeds, share_inputs=True, share_outputs=True)
        return [self.req.get_output_tensor(k).data.copy() for k in range(len(self.cm.outputs))]


class CoreMLAdapter:
    """Core ML (macOS only): an .mlpackage loaded with coremltools. Options: compute_units (default ALL)."""

    module = "coremltools"

    def version(self):
        import coremltools

        return coremltools.__version__

    def load(self, path, threads, options):
        import coremltools as ct

        units = options.get("compute_units", "ALL")
        self.model = ct.models.MLModel(path, compute_units=getattr(ct.ComputeUnit, units))
        spec = self.model.get_spec()
        self.ins = [i.name for i in spec.description.input]
        self.outs = [o.name for o in spec.description.output]
        return {"compute_units": units, "spec_version": spec.specificationVersion}

    def input_names(self):
        return list(self.ins)

    def run(self, feeds):
        res = self.model.predict(feeds)
        return [res[n] for n in self.outs]


class _Cuda:
    """The few CUDA runtime calls TensorRT inference needs, through ctypes (no pycuda/cuda-python)."""

    def __init__(self):
        import ctypes
        import ctypes.util
        import glob

        names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.12", "libcudart.so.11.0"]
        for site in sys.path:
            names += sorted(glob.glob(os.path.join(site, "nvidia", "cuda_runtime", "lib", "libcudart.so*")))
        names += sorted(glob.glob("/usr/local/cuda/lib64/libcudart.so*"))
        self.lib = None
        for n in names:
            try:
                self.lib = ctypes.CDLL(n) if n else None
            except OSError:
                continue
            if self.lib is not None:
                break
        if self.lib is None:
            raise RuntimeError("cannot load the CUDA runtime (libcudart.so): install the CUDA runtime or JetPack")
        self.c = ctypes

    def check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"CUDA {what} failed with error {rc}")

    def compute_capability(self):
        major, minor = self.c.c_int(), self.c.c_int()
        self.check(self.lib.cudaDeviceGetAttribute(self.c.byref(major), 75, 0), "cudaDeviceGetAttribute")
        self.check(self.lib.cudaDeviceGetAttribute(self.c.byref(minor), 76, 0), "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"

    def malloc(self, nbytes):
        ptr = self.c.c_void_p()
        self.check(self.lib.cudaMalloc(self.c.byref(ptr), self.c.c_size_t(max(int(nbytes), 1))), "cudaMalloc")
        return ptr.value

    def copy(self, dst, src, nbytes, kind):  # kind 1: host->device, 2: device->host
        self.check(self.lib.cudaMemcpy(self.c.c_void_p(dst), self.c.c_void_p(src), self.c.c_size_t(nbytes), kind), "cudaMemcpy")

    def stream(self):
        s = self.c.c_void_p()
        self.check(self.lib.cudaStreamCreate(self.c.byref(s)), "cudaStreamCreate")
        return s.value or 0

    def sync(self, stream):
        self.check(self.lib.cudaStreamSynchronize(self.c.c_void_p(stream)), "cudaStreamSynchronize")


def jetpack_release(text=None):
    """'R36 (release), REVISION: 4.3' (L4T, which fixes the JetPack release) from /etc/nv_tegra_release on a Jetson, else None."""
    text = _read("/etc/nv_tegra_release") if text is None else text
    if not text:
        return None
    first = text.splitlines()[0].lstrip("# ").split(", GCID")[0]
    return first.strip()


def trt_cache_key(spec, onnx_path, trt_version, cc, jetpack):
    """Engine cache key: TensorRT version, compute capability, JetPack, and the ONNX + spec digests."""
    import hashlib

    h = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "built"}, sort_keys=True).encode())
    with open(onnx_path, "rb") as f:
        h.update(hashlib.sha256(f.read()).digest())
    import re

    slug = re.sub(r"[^A-Za-z0-9.]+", "_", jetpack or "none").strip("_")
    return f"trt{trt_version}-sm{cc}-jp{slug}-{h.hexdigest()[:16]}"


def trt_build(onnx_path, spec, plan_path, cache_path):
    """Build a serialized engine from the ONNX file and the build spec; keep the timing cache.

    Returns build facts. Writes plan_path and cache_path atomically (temp file, then rename)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {os.path.basename(onnx_path)}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec["workspace_mb"]) << 20)
    precision = spec["precision"]
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ in the graph: no calibrator
    if spec.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(spec["dla_core"])
        if spec.get("allow_gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if spec.get("builder_optimization_level") is not None:
        config.builder_optimization_level = int(spec["builder_optimization_level"])
    if spec.get("profile"):
        profile = builder.create_optimization_profile()
        for name, p in spec["profile"].items():
            profile.set_shape(name, p["min"], p["opt"], p["max"])
        config.add_optimization_profile(profile)
    blob = b""
    if cache_path and os.path.exists(cache_path):
        with open(cache_path, "rb") as f:
            blob = f.read()
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT could not build an engine (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    for path, data in ((plan_path, bytes(plan)), (cache_path, bytes(config.get_timing_cache().serialize()))):
        if path:
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
    return {"build_s": build_s, "timing_cache_reused": bool(blob), "tensorrt": trt.__version__}


class TensorRTAdapter:
    """TensorRT: the artifact is a folder with model.onnx and build_spec.json (and model.plan when it
    was built on the build host). The engine is built on first use and cached in a folder keyed by
    TensorRT version, GPU compute capability and JetPack release (options: engine_cache)."""

    module = "tensorrt"

    def version(self):
        import tensorrt

        return tensorrt.__version__

    def _engine(self, folder, options):
        with open(os.path.join(folder, "build_spec.json")) as f:
            spec = json.load(f)
        onnx_path = os.path.join(folder, spec["onnx"])
        cc, jp = self.cuda.compute_capability(), jetpack_release()
        key = trt_cache_key(spec, onnx_path, self.version(), cc, jp)
        info = {"cache_key": key, "compute_capability": cc, "jetpack": jp}
        shipped = spec.get("built") or {}
        if shipped.get("cache_key") == key and os.path.exists(os.path.join(folder, spec.get("plan", "model.plan"))):
            info["engine"] = "shipped"
            return os.path.join(folder, spec.get("plan", "model.plan")), info
        root = options.get("engine_cache") or os.environ.get("EDGEPACK_TRT_CACHE") or os.path.expanduser("~/.cache/edgepack/tensorrt")
        entry = os.path.join(root, key)
        plan = os.path.join(entry, "model.plan")
        if os.path.exists(plan):
            info["engine"] = "cached"
            return plan, info
        os.makedirs(entry, exist_ok=True)
        # one timing cache per TensorRT version + GPU + JetPack, shared by every model built there
        timing = os.path.join(root, f"timing-{key.rsplit('-', 1)[0]}.cache")
        info.update(trt_build(onnx_path, spec, plan, timing))
        info["engine"] = "built on device"
        info["timing_cache"] = timing
        return plan, info

    def load(self, path, threads, options):
        import numpy as np
        import tensorrt as trt

        self.cuda = _Cuda()
        plan, info = self._engine(path, options)
        with open(plan, "rb") as f:
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT cannot deserialize {plan} (built by another TensorRT version or GPU?)")
        self.ctx = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outs = [n for n in names if n not in self.ins]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers = {}
        return info

    def input_names(self):
        return list(self.ins)

    def _buffer(self, name, nbytes):
        ptr, size = self.buffers.get(name, (None, 0))
        if ptr is None or size < nbytes:
            ptr, size = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, size)
            self.ctx.set_tensor_address(name, ptr)
        return ptr

    def run(self, feeds):
        import numpy as np

        for name in self.ins:
            a = np.require(np.asarray(feeds[name], dtype=self.dtypes[name]), requirements="C")  # 0-d stays 0-d
            self.ctx.set_input_shape(name, a.shape)
            self.cuda.copy(self._buffer(name, a.nbytes), a.ctypes.data, a.nbytes, 1)
        outs = []
        for name in self.outs:
            o = np.empty(tuple(self.ctx.get_tensor_shape(name)), dtype=self.dtypes[name])
            self._buffer(name, o.nbytes)
            outs.append(o)
        if not self.ctx.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.sync(self.stream)
        for name, o in zip(self.outs, outs):
            self.cuda.copy(o.ctypes.data, self.buffers[name][0], o.nbytes, 2)
        return outs


class ExecuTorchAdapter:
    """ExecuTorch runtime (pybindings, XNNPACK and the portable kernels built in): a .pte program.

    Options: method (default forward), inputs (the method's argument order, by input name). The
    runtime imports torch (its pybindings link libtorch): the device needs executorch's own environment.
    """

    module = "executorch"

    def version(self):
        from importlib.metadata import version

        _import_et_runtime()  # torch + the pybindings: part of the memory baseline, not of the model
        return version("executorch")

    def load(self, path, threads, options):
        import torch

        _import_et_runtime()
        from executorch.runtime import Runtime

        if os.path.isdir(path):
            path = os.path.join(path, options.get("model_file", "model.pte"))
        info = {}
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))  # XNNPACK's threadpool
            info["threadpool"] = portable_lib._threadpool_get_thread_count()
        try:  # quantize/dequantize kernels (an int8 program's Q/DQ nodes outside a delegate); absent from some builds
            import executorch.kernels.quantized  # noqa: F401
        except ImportError:
            pass
        runtime = Runtime.get()
        self.method = runtime.load_program(path).load_method(options.get("method", "forward"))
        self.names = list(options.get("inputs") or [])
        self._torch = torch
        info.update(method=options.get("method", "forward"), backends=sorted(runtime.backend_registry.registered_backend_names))
        return info

    def input_names(self):
        return list(self.names)

    def run(self, feeds):
        t = self._torch
        outs = self.method.execute([t.from_numpy(feeds[n]) for n in self.names])
        return [o.numpy() if hasattr(o, "numpy") else o for o in outs]


def _import_et_runtime():
    """Import executorch.runtime without the ExecuTorch compiler. Its pybindings module imports
    ``executorch.exir._warnings`` for one warning class, and importing that runs ``executorch/exir/__init__``:
    the whole compiler stack (torch._dynamo, inductor), ~10 s of CPU and hundreds of MB a device does not need.
    That one small module is loaded from its file while the package is a stub, then the stub is removed (a later
    ``import executorch.exir`` gets the real package). Any surprise: the plain import."""
    import importlib.util
    import types

    if "executorch.extension.pybindings.portable_lib" in sys.modules or "executorch.exir" in sys.modules:
        return
    stubbed = False
    try:
        spec = importlib.util.find_spec("executorch")
        path = os.path.join(list(spec.submodule_search_locations)[0], "exir", "_warnings.py")
        if os.path.isfile(path):
            wspec = importlib.util.spec_from_file_location("executorch.exir._warnings", path)
            warnings_mod = importlib.util.module_from_spec(wspec)
            stub = types.ModuleType("executorch.exir")
            stub.__path__ = []
            sys.modules["executorch.exir"], sys.modules["executorch.exir._warnings"] = stub, warnings_mod
            stubbed = True
            wspec.loader.exec_module(warnings_mod)
            import executorch.extension.pybindings.portable_lib  # noqa: F401
    except Exception:  # noqa: BLE001 - the plain import below says what is wrong, if anything
        sys.modules.pop("executorch.extension.pybindings.portable_lib", None)
    finally:
        if stubbed:
            sys.modules.pop("executorch.exir", None)
            sys.modules.pop("executorch.exir._warnings", None)
    import executorch.runtime  # noqa: F401


# runtime name -> adapter class. Targets add their adapter here (tflite, openvino, coreml, tensorrt).
ADAPTERS = {
    "onnxruntime": OnnxRuntimeAdapter,
    "tflite": TFLiteAdapter,
    "openvino": OpenVINOAdapter,
    "coreml": CoreMLAdapter,
    "tensorrt": TensorRTAdapter,
    "executorch": ExecuTorchAdapter,
}

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

"""TensorRT for the device runner: the engine build (cached by ONNX, spec, TensorRT version, GPU and JetPack)
and the adapter, with the few CUDA runtime calls it needs through ctypes.

Shipped to the device beside runner.py (which loads it from its own folder); numpy and TensorRT only.
"""

from __future__ import annotations

import json
import os
import sys
import time


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
    if text is None:
        try:
            with open("/etc/nv_tegra_release") as f:
                text = f.read().strip()
        except OSError:
            return None
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

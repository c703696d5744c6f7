"""Runtime adapters of the device runner: ONNX Runtime, TFLite/LiteRT, OpenVINO, Core ML, ExecuTorch.

Shipped to the device beside runner.py (which loads it from its own folder) and, like it, self-contained:
numpy and the target's runtime only. An adapter has ``version()``, ``load(path, threads, options)``,
``input_names()`` and ``run(feeds) -> list of arrays``; TensorRT's lives in runtime_tensorrt.py.
"""

from __future__ import annotations

import os
import sys


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


# runtime name -> adapter class (runner.py adds TensorRT's from runtime_tensorrt.py)
ADAPTERS = {
    "onnxruntime": OnnxRuntimeAdapter,
    "tflite": TFLiteAdapter,
    "openvino": OpenVINOAdapter,
    "coreml": CoreMLAdapter,
    "executorch": ExecuTorchAdapter,
}

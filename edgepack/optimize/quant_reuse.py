"""Static quantization of one model many times: the accuracy-aware search's trials, quantized once.

The search quantizes the same pre-processed model once per candidate node (and once per search
step) with different nodes kept in float. :func:`ort_static.quantize_with_ranges` repeats all the
work every time: shape inference, and the weight scales and quantized weights (on MobileNetV2
18,000 per-channel scales over 3.5M weights: 84% of a trial). :class:`ReusedQuantizer` does the
shape inference once and keeps every weight's quantization parameters and quantized initializer
across trials, keyed by everything they are computed from (weight name in the one model, quant
type, axis, scale, zero point); each trial copies the model and runs ONNX Runtime's own quantizer
on it, so the output is byte-identical to :func:`ort_static.quantize_with_ranges` (tests/test_search_reuse.py).

How (onnxruntime 1.23): QDQ - a subclass computes ``_calc_initializer_quant_params`` only for
tensors not seen before (copies are returned: ORT adjusts weight scales for int32 biases in place)
and ``quantize_onnx_initializer``, a module-level function of ``qdq_quantizer``, is wrapped once
with a lookup in the calling thread's active cache (no active cache: the original runs). QOperator -
a subclass replays the initializers ``quantize_initializer_impl`` / ``quantize_weight_per_channel_impl``
added the first time. Upgrading onnxruntime needs tests/test_search_reuse.py green.
"""

from __future__ import annotations

import threading
from pathlib import Path

VERIFIED_ORT = ("1.23.",)  # onnxruntime releases whose quantizer internals this module was checked against
_active = threading.local()  # .cache: the ReusedQuantizer whose trial this thread is quantizing
_classes: dict = {}


def supported() -> bool:
    """True when the installed onnxruntime is one this module was verified against (tests/test_search_reuse.py);
    on any other release the search quantizes each trial from scratch (same result, slower)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime").startswith(VERIFIED_ORT)
    except PackageNotFoundError:
        return False


def _array_key(a) -> tuple:
    import numpy as np

    a = np.asarray(a)
    return (a.dtype.str, a.shape, a.tobytes())


def _install() -> dict:
    """The caching quantizer classes (made once, on first use: importing onnxruntime is lazy)."""
    if _classes:
        return _classes
    from .ort_static import without_torch

    without_torch()
    from onnxruntime.quantization import qdq_quantizer
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer

    original = qdq_quantizer.quantize_onnx_initializer

    def quantize_onnx_initializer(weight, quant_type, zero_point, scale, axis=None, quant_weight_name=None):
        cache = getattr(_active, "cache", None)
        if cache is None:
            return original(weight, quant_type, zero_point, scale, axis, quant_weight_name)
        key = ("qweight", weight.name, quant_type, axis, quant_weight_name, _array_key(zero_point), _array_key(scale))
        return _copy_tensor(cache.lookup(key, lambda: original(weight, quant_type, zero_point, scale, axis, quant_weight_name)))

    qdq_quantizer.quantize_onnx_initializer = quantize_onnx_initializer

    class CachedQDQ(qdq_quantizer.QDQQuantizer):
        def _calc_initializer_quant_params(self):
            cache = _active.cache
            keys = {n: ("qparams", n, info.tensor_type.value, info.axis, info.data_type) for n, info in self.tensors_to_quantize.items()}
            todo = {n: info for n, info in self.tensors_to_quantize.items() if not cache.has(keys[n])}
            saved, self.tensors_to_quantize = self.tensors_to_quantize, todo
            try:
                fresh = super()._calc_initializer_quant_params()
            finally:
                self.tensors_to_quantize = saved
            for n in todo:  # None: not an initializer (an activation), remembered too
                cache.store(keys[n], fresh.get(n))
            out = {}
            for n in self.tensors_to_quantize:  # the original order
                p = fresh[n] if n in fresh else cache.get(keys[n])
                if p is not None:
                    out[n] = _copy_params(p)
            return out

        def _adjust_weight_scale_for_int32_bias(self, input_scale, weight_scale, weight_name, bias_tp, is_per_channel):
            key = ("bias-adjust", weight_name, bias_tp.name, is_per_channel, _array_key(input_scale), _array_key(weight_scale))
            done, scale = _active.cache.lookup(key, lambda: super(CachedQDQ, self)._adjust_weight_scale_for_int32_bias(
                input_scale, weight_scale, weight_name, bias_tp, is_per_channel))
            return done, (scale.copy() if scale is not None else None)

    class CachedQOperator(ONNXQuantizer):
        def _replay(self, key, compute):
            cache = _active.cache
            graph = self.model.model.graph

            def first():
                n = len(graph.initializer)
                names = compute()
                return names, [_copy_tensor(t) for t in graph.initializer[n:]]

            hit = cache.has(key)
            names, added = cache.lookup(key, first)
            if hit:
                self.model.initializer_extend([_copy_tensor(t) for t in added])
            return names

        def quantize_initializer_impl(self, weight, qType, reduce_range=False, keep_float_weight=False):
            return self._replay(("qop-init", weight.name, qType, reduce_range, keep_float_weight),
                                lambda: super(CachedQOperator, self).quantize_initializer_impl(weight, qType, reduce_range, keep_float_weight))

        def quantize_weight_per_channel_impl(self, weight_name, weight_qType, channel_axis, reduce_range=True, keep_float_weight=False):
            return self._replay(("qop-channel", weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight),
                                lambda: super(CachedQOperator, self).quantize_weight_per_channel_impl(
                                    weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight))

    _classes.update(qdq=CachedQDQ, qoperator=CachedQOperator)
    return _classes


def _copy_params(p):
    import numpy as np

    q = type(p).__new__(type(p))
    q.data = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in p.data.items()}
    return q


def _copy_tensor(t):
    import onnx

    c = onnx.TensorProto()
    c.CopyFrom(t)
    return c


class ReusedQuantizer:
    """``quantize(exclude, dest)`` for one model and one set of calibration ranges, as
    :func:`ort_static.quantize_with_ranges` would with the same arguments (same bytes), with the
    shape-inferred model and every weight's quantization kept across calls. Thread-safe: trials
    may run at once (each on its own copy of the model; a value computed twice is the same value)."""

    def __init__(self, model: Path, ranges, *, qformat: str, per_channel: bool, symmetric_activations: bool,
                 symmetric_weights: bool, op_types: list[str] | None, include: list[str] | None, exclude: list[str]):
        from .ort_static import without_torch

        without_torch()
        from onnxruntime.quantization.quant_utils import QuantType, load_model_with_shape_infer, update_opset_version
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        self._classes = _install()
        self.act, self.wt = (QuantType.QInt8 if symmetric_activations else QuantType.QUInt8), QuantType.QInt8
        self.types = list(op_types) if op_types else list(set(QLinearOpsRegistry) | set(QDQRegistry))
        self.qformat, self.per_channel, self.ranges, self.include, self.exclude = qformat, per_channel, ranges, include or [], list(exclude)
        self.extra = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": symmetric_weights}
        self._base = update_opset_version(load_model_with_shape_infer(Path(model)), self.wt)
        self._values: dict = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    # -- the cache (keys name tensors of this one model)

    def has(self, key) -> bool:
        return key in self._values

    def get(self, key):
        return self._values[key]

    def store(self, key, value) -> None:
        with self._lock:
            self._values.setdefault(key, value)

    def lookup(self, key, compute):
        if key in self._values:
            self.hits += 1
            return self._values[key]
        self.misses += 1
        value = compute()
        with self._lock:
            return self._values.setdefault(key, value)

    # -- one trial

    def quantize(self, exclude: list[str], dest: Path) -> bytes:
        """Write the quantized model with ``exclude`` kept in float (besides the recipe's own exclusions) to
        ``dest`` (ORT's own save: topological sort, initializer checks); returns its bytes."""
        import onnx
        from onnxruntime.quantization.quant_utils import QuantizationMode

        m = onnx.ModelProto()
        m.CopyFrom(self._base)
        ex = [*self.exclude, *exclude]
        if self.qformat == "qoperator":
            q = self._classes["qoperator"](m, self.per_channel, False, QuantizationMode.QLinearOps, True, self.wt, self.act, self.ranges,
                                           self.include, ex, self.types, self.extra)
        else:
            q = self._classes["qdq"](m, self.per_channel, False, self.wt, self.act, self.ranges, self.include, ex, self.types, self.extra)
        _active.cache = self
        try:
            q.quantize_model()
        finally:
            _active.cache = None
        tmp = dest.with_suffix(".onnx.tmp")
        q.model.save_model_to_file(str(tmp), False)
        data = tmp.read_bytes()
        tmp.replace(dest)
        return data

"""ONNX Runtime static quantization, split in two: calibrate once, quantize many times.

``quantize_static`` re-runs calibration on every call. The accuracy-aware search quantizes the same
model dozens of times with different nodes kept in float, so calibration runs once here
(:func:`calibrate`) and :func:`quantize_with_ranges` builds the quantizer from the ranges, doing
what ``onnxruntime.quantization.quantize_static`` (1.23) does after calibration.

Pre-processing (each step recorded with its reason): Constant nodes holding weights become
initializers (the quantizer only quantizes initializer weights), ``quant_pre_process`` (shape
inference + graph optimization), and an opset upgrade when per-channel needs opset 13.
"""

from __future__ import annotations

from pathlib import Path

from ..progress_hooks import report


def without_torch() -> None:
    """Call before importing ``onnxruntime.quantization``: it imports ``onnxruntime.tools``, whose
    ``__init__`` imports torch whenever it is installed (1.7 s, unused here; edgepack/bareimport.py)."""
    from ..bareimport import bare_package

    bare_package("onnxruntime.tools")


# Op types the ORT quantizer can quantize (QDQ registry), used to list candidate nodes.
def quantizable_op_types(qformat: str) -> set[str]:
    without_torch()
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QDQRegistry) if qformat == "qdq" else set(QLinearOpsRegistry)


def constants_to_initializers(path: Path, out: Path, record: dict) -> Path:
    """Move Constant nodes that hold tensors of >= 2 elements into graph initializers."""
    import onnx

    m = onnx.load(str(path))
    moved = []
    keep = []
    for node in m.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = node.attribute[0].t
            n = 1
            for d in t.dims:
                n *= d
            if n >= 2:
                t.name = node.output[0]
                m.graph.initializer.append(t)
                moved.append(node.output[0])
                continue
        keep.append(node)
    if not moved:
        return path
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, str(out))
    record["preprocess"].append(
        f"constant folding: {len(moved)} weight tensor(s) held in Constant nodes moved to initializers (the quantizer only quantizes initializers)"
    )
    return out


def ensure_opset(path: Path, minimum: int, workdir: Path, record: dict, why: str) -> Path:
    import onnx
    from onnx import version_converter

    m = onnx.load(str(path))
    current = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if current >= minimum:
        return path
    upgraded = version_converter.convert_version(m, minimum)
    out = workdir / "opset_upgraded.onnx"
    onnx.save(upgraded, str(out))
    record["preprocess"].append(f"opset upgraded {current} -> {minimum} ({why})")
    return out


def preprocess(src: Path, workdir: Path, record: dict, min_opset: int, why: str) -> Path:
    without_torch()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model_in = constants_to_initializers(src, workdir / "constants_folded.onnx", record)
    model_in = ensure_opset(model_in, min_opset, workdir, record, why)
    pre = workdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(model_in), str(pre), skip_symbolic_shape=False)
        record["preprocess"].append("quant_pre_process: shape inference and graph optimization (ORT basic level)")
        return pre
    except Exception as e:  # keep going without it, and say so
        record["preprocess"].append(f"quant_pre_process skipped: {e.__class__.__name__}: {str(e)[:200]}")
        return model_in


def candidate_nodes(path: Path, op_types: list[str] | None, qformat: str, include: list[str] | None, exclude: list[str]) -> list[str]:
    """Names of the nodes the quantizer would touch (the search space of the accuracy-aware pass)."""
    import onnx

    types = set(op_types) if op_types else quantizable_op_types(qformat)
    m = onnx.load(str(path), load_external_data=False)
    names = [n.name for n in m.graph.node if n.op_type in types and n.name and n.name not in exclude]
    if include:
        names = [n for n in names if n in include]
    return names


class NpzReader:
    """CalibrationDataReader over a frozen .npz: one complete feed per call, fed as the device runner
    feeds the model (edgepack/feeding.py: batch axes, constants, stream steps with the state carried);
    rewindable. Read from the file ``batch`` samples (sequences) at a time (edgepack/data.py
    ``iter_batches``), so memory does not grow with the calibration set; same feeds in the same order."""

    def __init__(self, npz: Path, model_path: Path, model=None, recipe_dir: Path | None = None, batch: int = 64):
        from ..data import npz_layout

        self._npz, self._model_path, self._model, self._dir, self._batch = Path(npz), model_path, model, recipe_dir, batch
        self._layout = npz_layout(self._npz)
        self.rewind()

    def _samples(self):
        from ..data import is_label_key, iter_batches, read_npz
        from ..feeding import onnx_feeds

        if self._layout is None:  # a hand-made (compressed) file: whole arrays
            yield from onnx_feeds(self._model_path, read_npz(self._npz)[0], self._model, self._dir)
            return
        names = [k for k in self._layout if not is_label_key(k)]
        total, done = (self._layout[names[0]][2][0] if names else None), 0
        for chunk in iter_batches(self._npz, names, self._batch):
            yield from onnx_feeds(self._model_path, chunk, self._model, self._dir)
            done += len(chunk[names[0]])
            report("calibration samples", done, total)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = self._samples()

    def __len__(self):
        return sum(1 for _ in self._samples())


CALIBRATION_CHUNK = 64  # feeds per collect_data call (minmax); None: all at once


class _ListReader:
    def __init__(self, feeds: list):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _collect(calibrator, reader, method: str) -> None:
    """Feed the calibrator. ORT's MinMax calibrator keeps every feed's outputs until compute_data
    (its max_intermediate_outputs drops them instead, onnxruntime 1.23), so minmax collects
    CALIBRATION_CHUNK feeds at a time: each call merges its min/max into the running range, the same
    ranges as one pass. Histogram methods (entropy, percentile) bin over the whole set: one pass."""
    import itertools

    if method != "minmax" or not CALIBRATION_CHUNK:
        calibrator.collect_data(reader)
        return
    feeds = iter(reader.get_next, None)
    first = next(feeds, None)
    if first is None:
        calibrator.collect_data(_ListReader([]))  # ORT's own "No data is collected." error
    while first is not None:
        calibrator.collect_data(_ListReader([first, *itertools.islice(feeds, CALIBRATION_CHUNK - 1)]))
        first = next(feeds, None)


def calibrate(model: Path, calib: Path, method: str, op_types: list[str] | None, workdir: Path, recipe_model=None, recipe_dir: Path | None = None):
    """Tensor ranges over the calibration set (onnxruntime TensorsData)."""
    without_torch()
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    cal_dir = workdir / "calibration"
    cal_dir.mkdir(exist_ok=True)
    calibrator = create_calibrator(
        Path(model),
        op_types or [],
        augmented_model_path=str(cal_dir / "augmented_model.onnx"),
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method],
    )
    _collect(calibrator, NpzReader(calib, model, recipe_model, recipe_dir), method)
    ranges = calibrator.compute_data()
    del calibrator
    import shutil

    shutil.rmtree(cal_dir, ignore_errors=True)
    return ranges


def quantize_with_ranges(
    model: Path, out: Path, ranges, *, qformat: str, per_channel: bool, symmetric_activations: bool,
    symmetric_weights: bool, op_types: list[str] | None, include: list[str] | None, exclude: list[str],
) -> None:
    without_torch()
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, QuantType, load_model_with_shape_infer, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    act = QuantType.QInt8 if symmetric_activations else QuantType.QUInt8
    wt = QuantType.QInt8
    types = list(op_types) if op_types else list(set(QLinearOpsRegistry) | set(QDQRegistry))
    m = load_model_with_shape_infer(Path(model))
    m = update_opset_version(m, wt)
    extra = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": symmetric_weights}
    if qformat == "qoperator":
        q = ONNXQuantizer(m, per_channel, False, QuantizationMode.QLinearOps, True, wt, act, ranges, include or [], list(exclude), types, extra)
    else:
        q = QDQQuantizer(m, per_channel, False, wt, act, ranges, include or [], list(exclude), types, extra)
    q.quantize_model()
    tmp = out.with_suffix(".onnx.tmp")
    q.model.save_model_to_file(str(tmp), False)
    tmp.replace(out)

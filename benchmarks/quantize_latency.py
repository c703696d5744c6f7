"""FP32 vs static INT8 (edgepack's quantize pass) latency of a MobileNetV2 at 224x224, side by side.

    python benchmarks/quantize_latency.py [--threads 1] [--rounds 5] [--runs 20] [--format qdq|qoperator] [--per-tensor]

The model (benchmarks/mobilenetv2.py, random weights) is exported to ONNX, quantized by the same
QuantizeStage a recipe runs (static, per-channel, MinMax, calibration on 16 random images), then both
models are timed with ONNX Runtime on this host in interleaved rounds (FP32 round, INT8 round, ...)
so that load drift from other processes hits both alike. Prints p50 per model and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def export(path: Path) -> None:
    import torch

    from mobilenetv2 import build

    torch.onnx.export(build(), (torch.zeros(1, 3, 224, 224),), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}}, opset_version=17, dynamo=False)


def quantize(fp32: Path, work: Path, fmt: str, per_channel: bool) -> tuple[Path, dict]:
    from edgepack.artifact import Artifact
    from edgepack.cache import StageCache
    from edgepack.data import freeze
    from edgepack.engine import Engine
    from edgepack.ingest import onnx_specs
    from edgepack.optimize import PassContext, make_pass
    from edgepack.recipe import Gates, QuantizePass

    rng = np.random.default_rng(0)
    calib = freeze({"input": rng.standard_normal((16, 3, 224, 224)).astype(np.float32)}, None, work / "data", "calibration")
    ins, outs = onnx_specs(fp32)
    cfg = QuantizePass.model_validate({"pass": "quantize", "mode": "static", "format": fmt, "per_channel": per_channel})
    stage = make_pass(cfg, PassContext(0, "benchmark optimize[0]", work, None, Gates()))
    res = Engine(StageCache(work / "cache", enabled=False)).run("quantize", stage, {"model": Artifact(fp32, "onnx", inputs=ins, outputs=outs), "calibration": calib})
    return res.outputs["model"].path, res.record


def main() -> None:
    import onnxruntime as ort

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model per round")
    ap.add_argument("--format", choices=["qdq", "qoperator"], default="qdq")
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weights (QOperator per-channel fails in ORT 1.23)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "mobilenetv2.onnx"
        t0 = time.perf_counter()
        export(fp32)
        int8, record = quantize(fp32, work, args.format, not args.per_tensor)
        prep = time.perf_counter() - t0
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sessions = {name: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for name, p in (("fp32", fp32), ("int8", int8))}
        x = {"input": np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)}
        for s in sessions.values():
            for _ in range(5):
                s.run(None, x)
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(args.rounds):
            for name, s in sessions.items():
                for _ in range(args.runs):
                    t = time.perf_counter()
                    s.run(None, x)
                    times[name].append((time.perf_counter() - t) * 1e3)
        p50 = {k: statistics.median(v) for k, v in times.items()}
        sizes = {"fp32": fp32.stat().st_size, "int8": int8.stat().st_size}
    print(f"MobileNetV2 224x224, batch 1, ONNX Runtime {ort.__version__} CPU, {args.threads} thread(s), {args.format.upper()} static INT8 {'per-tensor' if args.per_tensor else 'per-channel'}")
    print(f"  export + quantize: {prep:.1f} s   preprocess: {record['preprocess']}")
    for k in ("fp32", "int8"):
        print(f"  {k}: p50 {p50[k]:8.2f} ms   p90 {np.percentile(times[k], 90):8.2f} ms   size {sizes[k] / 1e6:6.2f} MB   ({len(times[k])} runs)")
    print(f"  speed-up fp32/int8 (p50): {p50['fp32'] / p50['int8']:.2f}x   size ratio: {sizes['fp32'] / sizes['int8']:.2f}x")


if __name__ == "__main__":
    main()

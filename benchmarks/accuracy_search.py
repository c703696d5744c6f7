"""Accuracy-aware search on MobileNetV2: cost per candidate node vs one evaluation of a candidate model (issue 12 item 5).

    python benchmarks/accuracy_search.py [--validation 64] [--calibration 32] [--jobs N] [--legacy]

The model is benchmarks/mobilenetv2.py's (random weights, 224x224), exported to ONNX; calibration and
validation sets are random 1x3x224x224 samples frozen as a build freezes them, under a temporary folder
deleted at the end. The quantize pass runs as a build runs it (Engine + QuantizeStage: static QDQ
per-channel INT8, minmax) with ``accuracy_aware: {metric: cosine, max_drop: 0, max_float_nodes: 2}``,
a budget no configuration meets, so the search ranks every candidate and then fails after two steps
(the benchmark reads its record from the error). Printed side by side from one run:

- per-candidate cost: the sensitivity phase's wall time / number of candidates (skipped ones included;
  also per evaluated candidate);
- one evaluation: the search's evaluator on one candidate model (the fully quantized one: session
  creation + the validation set + the metric), median of 3;
- with --legacy, the search before issue 12 item 5 (one thread, the whole model re-quantized per
  trial, nothing skipped) on the same inputs, and whether both chose the same nodes.
Target: per-candidate cost <= 2x one evaluation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _export(path: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mobilenetv2 import build

    torch.onnx.export(build().eval(), torch.randn(1, 3, 224, 224), str(path), input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})


def _freeze(n: int, seed: int, folder: Path, role: str):
    import numpy as np

    from edgepack.data import freeze

    return freeze({"input": np.random.default_rng(seed).random((n, 3, 224, 224), dtype=np.float32)}, None, folder, role)


def _search(model, cal, val, work: Path, speed) -> dict:
    from edgepack.artifact import Artifact  # noqa: F401  (the stage's input type)
    from edgepack.cache import StageCache
    from edgepack.engine import Engine
    from edgepack.errors import PassFailedError
    from edgepack.optimize import PassContext, accuracy_aware, make_pass
    from edgepack.recipe import Gates, QuantizePass

    accuracy_aware.SPEED = speed
    cfg = {"pass": "quantize", "mode": "static", "format": "qdq", "per_channel": True, "calibration": "minmax",
           "accuracy_aware": {"metric": "cosine", "max_drop": 0.0, "max_float_nodes": 2}}
    stage = make_pass(QuantizePass.model_validate(cfg), PassContext(0, "bench optimize[0]", work, None, Gates()))
    try:
        Engine(StageCache(work / "cache")).run("optimize[0] quantize", stage, {"model": model, "calibration": cal, "validation": val})
    except PassFailedError as e:
        return e.record["accuracy_aware"]
    sys.exit("the search met a budget of 0: nothing to measure")


def _one_evaluation(model: Path, cal, val, work: Path) -> float:
    """The search's evaluator on the fully quantized model, median of 3."""
    from edgepack.optimize import ort_static
    from edgepack.optimize.accuracy_aware import _Evaluator
    from edgepack.optimize.effect import run_model
    from edgepack.recipe import AccuracyAware

    from edgepack.data import read_npz

    rec = {"preprocess": []}
    pre = ort_static.preprocess(model, work, rec, 13, "per-channel")
    ranges = ort_static.calibrate(pre, cal.path, "minmax", None, work)
    q = work / "full.onnx"
    ort_static.quantize_with_ranges(pre, q, ranges, qformat="qdq", per_channel=True, symmetric_activations=False,
                                    symmetric_weights=True, op_types=None, include=None, exclude=[])
    reference = run_model(model, read_npz(val.path)[0])
    ev = _Evaluator(val.path, reference, AccuracyAware(metric="cosine", max_drop=0.0), "bench")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        ev(q)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _report(name: str, aa: dict, one: float) -> float:
    n, skipped, sec = aa["candidates"], aa.get("skipped", 0), aa["seconds"]["sensitivity"]
    per = sec / n
    print(f"{name}: {n} candidates ({skipped} skipped), {aa.get('jobs', 1)} thread(s): sensitivity {sec:.1f} s = "
          f"{per:.3f} s per candidate ({sec / max(1, n - skipped):.3f} s per evaluated one) = {per / one:.2f}x one evaluation")
    return per


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--validation", type=int, default=64)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--jobs", type=int, default=None, help="threads for the new search (default: the number of cores)")
    ap.add_argument("--legacy", action="store_true", help="also run the search as it was before (slow: minutes)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from edgepack.artifact import Artifact
    from edgepack.optimize.accuracy_aware import LEGACY, SearchSpeed

    with tempfile.TemporaryDirectory(prefix="edgepack-search-") as d:
        d = Path(d)
        onnx_path = d / "mobilenetv2.onnx"
        _export(onnx_path)
        model = Artifact(onnx_path, "onnx")
        cal, val = _freeze(args.calibration, 1, d / "data", "calibration"), _freeze(args.validation, 2, d / "data", "validation")
        (d / "eval").mkdir()
        one = _one_evaluation(onnx_path, cal, val, d / "eval")
        (d / "new").mkdir()
        new = _search(model, cal, val, d / "new", SearchSpeed(jobs=args.jobs))
        print(f"MobileNetV2 224x224, static QDQ per-channel INT8, {args.calibration} calibration / {args.validation} validation samples")
        print(f"one evaluation of a candidate model: {one:.3f} s (median of 3)")
        per = _report("search", new, one)
        print(f"per-candidate cost / one evaluation: {per / one:.2f}x (target <= 2x)")
        if args.legacy:
            (d / "legacy").mkdir()
            old = _search(model, cal, val, d / "legacy", LEGACY)
            old_per = _report("legacy search", old, one)
            same = [e["node"] for e in old["sensitivity"]] == [e["node"] for e in new["sensitivity"]] and old["steps"] == new["steps"]
            print(f"legacy / new per-candidate cost: {old_per / per:.1f}x; same ranking and steps: {same}")


if __name__ == "__main__":
    main()

"""OpenVINO CPU: per-call latency of the ways a runner can call an InferRequest, side by side.

    python benchmarks/openvino_infer.py IR_FOLDER_OR_XML [--rounds 5] [--calls 3000]

Prints the median per-call time of each mode (rounds alternate, to share the machine's noise) and
its ratio to `infer(dict)` (what the runner did before it switched to shared inputs/outputs).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ir")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--precision", default="f32")
    args = ap.parse_args()
    import openvino as ov

    xml = args.ir if args.ir.endswith(".xml") else min(glob.glob(os.path.join(args.ir, "*.xml")))
    core = ov.Core()
    cm = core.compile_model(core.read_model(xml), "CPU",
                            {"INFERENCE_PRECISION_HINT": args.precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1})
    req = cm.create_infer_request()
    rng = np.random.default_rng(0)
    feeds = {}
    for p in cm.inputs:
        shape = [d.get_length() if d.is_static else 1 for d in p.get_partial_shape()]
        feeds[p.get_any_name()] = rng.random(shape).astype(np.float32)

    def plain():
        req.infer(feeds)
        return [req.get_output_tensor(k).data.copy() for k in range(len(cm.outputs))]

    def shared():
        req.infer(feeds, share_inputs=True, share_outputs=True)
        return [req.get_output_tensor(k).data.copy() for k in range(len(cm.outputs))]

    modes = {"infer(dict)": plain, "infer(dict, share_inputs/outputs)": shared}
    assert all(np.array_equal(a, b) for a, b in zip(plain(), shared()))
    per_mode: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.rounds):
        for name, fn in modes.items():
            for _ in range(200):
                fn()
            samples = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
            per_mode[name].append(statistics.median(samples) * 1e6)
    base = statistics.median(per_mode["infer(dict)"])
    print(f"{xml}  openvino {ov.__version__}  {args.rounds} rounds x {args.calls} calls, 1 thread, load {os.getloadavg()[0]:.1f}")
    for name, vals in per_mode.items():
        med = statistics.median(vals)
        print(f"  {name:<36} median p50 {med:8.1f} us  ratio {med / base:5.2f}  rounds: {' '.join(f'{v:.1f}' for v in vals)}")


if __name__ == "__main__":
    main()

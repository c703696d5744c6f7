"""Peak RSS of MobileNetV2 static quantization vs the number of calibration samples (issue 12 item 6).

    python benchmarks/calibration_rss.py [--many 2000] [--few 100] [--reader batched|whole]

The model is benchmarks/mobilenetv2.py's (random weights), exported to ONNX once. Calibration sets of
--many and --few random 1x3x224x224 samples are frozen as a build freezes them (edgepack.data.freeze),
under a temporary folder deleted at the end. Each quantization (calibrate with minmax + QDQ
per-channel int8, edgepack/optimize/ort_static.py) runs in its own child process, which reports its
peak RSS (VmHWM: ru_maxrss would include the parent's RSS, inherited across fork + exec). ``--reader whole`` measures the reader edgepack had before (every sample
held in memory) for comparison. Prints both peaks and their ratio (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from edgepack.optimize import ort_static
if sys.argv[5] == "whole":
    class Whole:
        def __init__(self, npz, model_path, model=None, recipe_dir=None):
            from edgepack.data import read_npz
            from edgepack.feeding import onnx_feeds
            self._s = onnx_feeds(model_path, read_npz(npz)[0], model, recipe_dir); self._it = iter(self._s)
        def get_next(self): return next(self._it, None)
        def rewind(self): self._it = iter(self._s)
    ort_static.NpzReader = Whole
    ort_static.CALIBRATION_CHUNK = None
model, calib, work = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ranges = ort_static.calibrate(model, calib, "minmax", None, work)
ort_static.quantize_with_ranges(model, work / "q.onnx", ranges, qformat="qdq", per_channel=True,
    symmetric_activations=False, symmetric_weights=True, op_types=None, include=None, exclude=[])
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]  # this process's own peak
print(json.dumps({"peak_rss_mb": int(hwm[0].split()[1]) / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _export(path: Path) -> None:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mobilenetv2 import build

    torch.manual_seed(0)
    torch.onnx.export(build().eval(), torch.randn(1, 3, 224, 224), str(path), input_names=["input"],
                      output_names=["output"], opset_version=17, dynamo=False)


def _freeze(n: int, folder: Path) -> Path:
    import numpy as np

    from edgepack.data import freeze

    x = np.random.default_rng(n).random((n, 3, 224, 224), dtype=np.float32)
    return freeze({"input": x}, None, folder, "calibration").path


def _quantize(model: Path, calib: Path, work: Path, reader: str) -> tuple[float, float]:
    work.mkdir()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(model), str(calib), str(work), str(REPO), reader],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"], time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--many", type=int, default=2000)
    ap.add_argument("--few", type=int, default=100)
    ap.add_argument("--reader", choices=["batched", "whole"], default="batched")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="edgepack-calib-rss-") as d:
        d = Path(d)
        model = d / "mobilenetv2.onnx"
        _export(model)
        res = {}
        for n in (args.few, args.many):
            calib = _freeze(n, d / f"data{n}")
            res[n] = _quantize(model, calib, d / f"work{n}", args.reader)
            calib.unlink()
    for n, (rss, sec) in res.items():
        print(f"{n:5d} calibration samples ({args.reader} reader): peak RSS {rss:7.0f} MB  ({sec:.0f} s)")
    print(f"peak RSS ratio {args.many} vs {args.few}: {res[args.many][0] / res[args.few][0]:.2f}x (target <= 1.2)")


if __name__ == "__main__":
    main()

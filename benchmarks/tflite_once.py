"""TFLite once: three TFLite targets (fp32, fp16, int8) of MobileNetV2, cold, new path vs the old per-target path.

    python benchmarks/tflite_once.py [--calibration 16] [--baseline-rev REV]

The model is benchmarks/mobilenetv2.py's (random weights, 224x224), exported to ONNX once. Both builds
start from an empty stage cache (a fresh EDGEPACK_HOME) and have no validation data, so only the
TFLite stages differ. New: this checkout (one shared onnx2tf SavedModel stage, then each target's
variant). Old: the same recipe built by a git worktree of --baseline-rev (default: the parent of the
commit that added edgepack/targets/tf_convert.py), where each target runs onnx2tf and every converter
variant itself. Prints each build's TFLite stage seconds (from report.json lineage) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
name: mnv2-tflite
version: '1'
model:
  format: onnx
  path: model.onnx
  inputs:
    - {name: input, shape: [batch, 3, 224, 224], layout: NCHW}
  outputs: [logits]
data:
  calibration: {path: calib.npz}
targets:
  - {type: tflite, name: tflite-fp32}
  - {type: tflite, name: tflite-fp16, precision: fp16}
  - {type: tflite, name: tflite-int8, precision: int8}
devices: [local]
"""
TFLITE_STAGES = ("compile.tflite", "convert.onnx2tf-savedmodel")


def _export(folder: Path, samples: int) -> Path:
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from mobilenetv2 import build

    torch.onnx.export(build(), (torch.randn(1, 3, 224, 224),), str(folder / "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    np.savez(folder / "calib.npz", input=np.random.default_rng(0).standard_normal((samples, 3, 224, 224), dtype=np.float32))
    (folder / "recipe.yaml").write_text(RECIPE)
    return folder / "recipe.yaml"


def _build(code: Path, recipe: Path, home: Path, out: Path) -> tuple[float, dict]:
    env = dict(os.environ, EDGEPACK_HOME=str(home), PYTHONPATH=str(code))
    env.pop("EDGEPACK_CACHE", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(recipe), "-o", str(out), "--no-publish"],
                          env=env, cwd=code, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"build with {code} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    stages = json.loads((out / "report.json").read_text())["stages"]
    return wall, {s["name"]: s["seconds"] for s in stages if s["stage"] in TFLITE_STAGES}


def _baseline_rev() -> str:
    added = subprocess.run(["git", "-C", str(REPO), "log", "--diff-filter=A", "--format=%H", "--", "edgepack/targets/tf_convert.py"],
                           check=True, capture_output=True, text=True).stdout.split()
    if not added:
        sys.exit("no commit adds edgepack/targets/tf_convert.py here: pass --baseline-rev")
    return added[-1] + "^"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibration", type=int, default=16, help="calibration samples (int8 target)")
    ap.add_argument("--baseline-rev", default=None, help="git revision with the per-target path")
    args = ap.parse_args()
    rev = args.baseline_rev or _baseline_rev()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = _export(tmp, args.calibration)
        old_code = tmp / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old_code), rev], check=True, capture_output=True)
        try:
            new_wall, new = _build(REPO, recipe, tmp / "home-new", tmp / "out-new")
            old_wall, old = _build(old_code, recipe, tmp / "home-old", tmp / "out-old")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old_code)], check=False)
    print(f"load average after: {os.getloadavg()}")
    for label, wall, st in (("new (shared SavedModel)", new_wall, new), (f"old (per target, {rev})", old_wall, old)):
        print(f"{label}: TFLite stages {sum(st.values()):.1f} s, build wall {wall:.1f} s")
        for name, sec in st.items():
            print(f"    {name:<44} {sec:7.1f} s")
    print(f"TFLite stages new / old: {sum(new.values()) / sum(old.values()):.2f}x (target <= 0.4x)")


if __name__ == "__main__":
    main()

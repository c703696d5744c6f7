"""Parallel local executor: the same multi-target build, cold, with --jobs 1 and --jobs 2, side by side.

    python benchmarks/parallel_build.py [--model small|mobilenetv2] [--repeat 2] [--calibration 16]

Targets: ONNX Runtime fp32 + int8 (static quantize pass), OpenVINO fp32 + int8, TFLite fp32 + int8 (one
shared onnx2tf conversion), validated on the build host. `small` is a tiny CNN (8x8 input, seconds per
stage: the wall is dominated by worker start-up and backend imports); `mobilenetv2` is benchmarks/
mobilenetv2.py's model at 224x224 (the issue's six-target build; many minutes per run on 2 cores).
Every build starts from an empty stage cache (a fresh EDGEPACK_HOME); runs alternate j1, j2, j1, j2, ...
so load drifts on a shared machine hit both alike. Prints each wall time, the per-pair ratio j2/j1, the
median ratio, the artifact digests' equality, and from each --jobs 2 run's report what no schedule can beat on
2, 4 and 8 cores (the host's validations must run alone).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = """\
name: parallel-bench
version: '1'
model:
  format: onnx
  path: model.onnx
  inputs:
    - {{name: input, shape: [batch, {c}, {hw}, {hw}], layout: NCHW}}
  outputs: [logits]
data:
  calibration: {{path: calib.npz}}
  validation: {{path: val.npz}}
optimize:
  - {{pass: quantize, mode: static}}
targets:
  - {{type: onnxruntime, name: ort-fp32, input: fp32}}
  - {{type: onnxruntime, name: ort-int8}}
  - {{type: openvino, name: ov-fp32, input: fp32}}
  - {{type: openvino, name: ov-int8, precision: int8, input: fp32}}
  - {{type: tflite, name: tfl-fp32, input: fp32}}
  - {{type: tflite, name: tfl-int8, precision: int8, input: fp32}}
devices: [local]
gates: {{min_cosine: {gate}}}
benchmark: {{warmup_runs: 2, warmup_seconds: 0, runs: 20, min_seconds: 0}}
"""


def _small():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval(), 1, 8


def _export(folder: Path, model: str, samples: int) -> Path:
    import torch

    if model == "mobilenetv2":
        sys.path.insert(0, str(REPO / "benchmarks"))
        from mobilenetv2 import build

        net, c, hw = build().eval(), 3, 224
    else:
        net, c, hw = _small()
    torch.onnx.export(net, (torch.randn(1, c, hw, hw),), str(folder / "model.onnx"), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", input=rng.standard_normal((samples, c, hw, hw), dtype=np.float32))
    np.savez(folder / "val.npz", input=rng.standard_normal((samples, c, hw, hw), dtype=np.float32))
    # mobilenetv2.py's weights are random: its outputs barely vary over samples, so a centred cosine between two
    # runtimes is noise (0.05-0.46 for FP32 targets); the benchmark times the build, its gate only has to pass
    gate = -1 if model == "mobilenetv2" else 0.5
    (folder / "recipe.yaml").write_text(RECIPE.format(c=c, hw=hw, gate=gate))
    return folder / "recipe.yaml"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # the build and the workers it waited for
    return r.ru_utime + r.ru_stime


def _bounds(out: Path, cpu: float, wall1: float) -> str:
    """What no schedule can beat, from the --jobs 2 run's own report: host validations must overlap nothing
    (E, their wall time) and the rest shares the cores; the longest chain of node durations is a floor too."""
    nodes = {n["id"]: n for n in json.loads((out / "report.json").read_text())["plan"]["nodes"] if n.get("end_s") is not None}
    excl = sum(n["end_s"] - n["start_s"] for n in nodes.values() if n["kind"] == "validate" and n["id"].endswith("@ local"))
    longest: dict[str, float] = {}
    for nid, n in nodes.items():  # report order is the plan's, a topological order
        longest[nid] = (n["end_s"] - n["start_s"]) + max((longest[d] for d in n["deps"] if d in longest), default=0.0)
    chain = max(longest.values(), default=0.0)
    per = lambda k: excl + (cpu - excl) / k  # noqa: E731 - validations taken as using about one core
    return (f"  --jobs 2: {cpu:.1f} s CPU; host validations (exclusive) {excl:.1f} s; longest node chain {chain:.1f} s\n"
            f"  no schedule beats E + (CPU - E)/cores: 2 cores {per(2):.1f} s ({per(2) / wall1:.2f}x of --jobs 1), "
            f"4 cores {per(4):.1f} s ({per(4) / wall1:.2f}x), 8 cores {per(8):.1f} s ({per(8) / wall1:.2f}x); "
            f"and never the chain ({chain / wall1:.2f}x); with no exclusive work at all, CPU/2 = {cpu / 2 / wall1:.2f}x on 2 cores")


def _build(recipe: Path, home: Path, out: Path, jobs: int) -> tuple[float, float, dict]:
    env = dict(os.environ, EDGEPACK_HOME=str(home), PYTHONPATH=str(REPO))
    env.pop("EDGEPACK_CACHE", None)
    c0 = _cpu()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(recipe), "-o", str(out), "--no-publish",
                           "--jobs", str(jobs)], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 5):
        sys.exit(f"--jobs {jobs} build failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    manifest = json.loads((out / "edgepack.json").read_text())
    return wall, _cpu() - c0, {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].startswith("targets/")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("small", "mobilenetv2"), default="small")
    ap.add_argument("--repeat", type=int, default=2, help="pairs of (--jobs 1, --jobs 2) builds")
    ap.add_argument("--calibration", type=int, default=16)
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()}")
    ratios, digests = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = _export(tmp, args.model, args.calibration)
        for i in range(args.repeat):
            walls, cpus = {}, {}
            for jobs in (1, 2):
                walls[jobs], cpus[jobs], d = _build(recipe, tmp / f"home-{i}-{jobs}", tmp / f"out-{i}-{jobs}", jobs)
                digests.append(d)
            ratios.append(walls[2] / walls[1])
            print(f"pair {i}: --jobs 1 {walls[1]:.1f} s ({cpus[1]:.1f} s CPU), --jobs 2 {walls[2]:.1f} s ({cpus[2]:.1f} s CPU), "
                  f"ratio {ratios[-1]:.2f}x")
            print(_bounds(tmp / f"out-{i}-2", cpus[2], walls[1]))
    print(f"load average after: {os.getloadavg()}")
    print(f"median wall ratio --jobs 2 / --jobs 1: {statistics.median(ratios):.2f}x over {len(ratios)} pair(s)")
    print(f"artifact digests identical across all builds: {all(d == digests[0] for d in digests)}")


if __name__ == "__main__":
    main()

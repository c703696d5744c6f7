"""ExecuTorch int8 vs fp32: `.pte` size, p50 latency and fidelity, for the digits CNN and MTCNN RNet.

    python benchmarks/executorch_int8.py [--model digits|rnet] [--threads 1] [--rounds 5] [--runs 300]

Builds the model with the real `edgepack build` (targets et-fp32 and et-int8: torch.export, XNNPACK
partitioner, int8 by PT2E with the XNNPACK quantizer calibrated on the recipe's data) in the executorch
toolchain environment (installed first if missing), then times both programs with the ExecuTorch runtime
in that environment in interleaved rounds (fp32 round, int8 round, ...) so load drift hits both alike.
Prints size, delegated share, metric and centred cosine vs FP32 (from report.json), p50 per program and
the int8/fp32 p50 ratio. RNet's weights and face crops come from the test fixtures (facenet-pytorch 2.6.0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

TIME_PTE = """
import sys, time, json, numpy as np, torch
from executorch.extension.pybindings import portable_lib
import executorch.kernels.quantized  # Q/DQ kernels of int8 programs outside the delegate
from executorch.runtime import Runtime
paths, x, threads, rounds, runs = sys.argv[1].split(","), np.load(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
portable_lib._unsafe_reset_threadpool(threads)
methods = [Runtime.get().load_program(p).load_method("forward") for p in paths]
feed = [torch.from_numpy(np.ascontiguousarray(x[:1]))]
times = [[] for _ in paths]
for m in methods:
    for _ in range(50):
        m.execute(feed)
for _ in range(rounds):
    for k, m in enumerate(methods):
        for _ in range(runs):
            t0 = time.perf_counter(); m.execute(feed); times[k].append((time.perf_counter() - t0) * 1e3)
print(json.dumps([float(np.percentile(t, 50)) for t in times]))
"""

TARGETS = "targets:\n  - {type: executorch, name: et-fp32}\n  - {type: executorch, name: et-int8, precision: int8}\n"
BENCH = "benchmark: {warmup_runs: 5, warmup_seconds: 0, runs: 50, min_seconds: 0}\n"


def recipe(model: str, d: Path) -> tuple[str, np.ndarray, str]:
    """(recipe text, timing input, metric name) with the model's files placed in ``d``."""
    if model == "digits":
        shutil.copytree(REPO / "recipes" / "digits", d, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, str(d))
        import digits_data

        text = (d / "recipe.yaml").read_text()
        head = text[: text.index("optimize:")]
        return head + TARGETS + "devices: [local]\n" + BENCH, digits_data.validation()[0]["input"], "top1"
    from realmodels import data, recipes, wheels

    shutil.copy(REPO / "tests" / "realmodels" / "nets.py", d / "nets.py")
    x, y = data.face_crops()
    np.savez(d / "crops.npz", input=x)
    np.save(d / "face.npy", y)
    weights = wheels.wheel_files("facenet-pytorch", "2.6.0") / "rnet.pt"
    text = recipes.rnet_head("rnet-et", weights)
    return text + TARGETS + BENCH, x, "face_accuracy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("digits", "rnet"), default="digits")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "edgepack", "toolchains", "install", "executorch"], env=env, check=True)
    python = subprocess.run([sys.executable, "-c", "from edgepack.toolchains import resolve; print(resolve('executorch').python or '')"],
                            env=env, check=True, capture_output=True, text=True).stdout.strip() or sys.executable
    with tempfile.TemporaryDirectory(prefix="edgepack-et-bench-") as tmp:
        d = Path(tmp) / "recipe"
        d.mkdir()
        text, x, metric = recipe(args.model, d)
        (d / "recipe.yaml").write_text(text)
        r = subprocess.run([sys.executable, "-m", "edgepack", "build", "recipe.yaml", "-o", "out", "--no-publish"], cwd=d,
                           env=dict(env, EDGEPACK_HOME=str(Path(tmp) / "home")), capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"build failed (exit {r.returncode}): {r.stderr[-1500:]}")
        report = json.loads((d / "out" / "report.json").read_text())
        np.save(Path(tmp) / "x.npy", x)
        ptes = [str(d / "out" / report["targets"][t]["artifact"]["path"]) for t in ("et-fp32", "et-int8")]
        out = subprocess.run([python, "-c", TIME_PTE, ",".join(ptes), str(Path(tmp) / "x.npy"), str(args.threads), str(args.rounds),
                              str(args.runs)], capture_output=True, text=True, check=True).stdout
        p50 = json.loads(out.strip().splitlines()[-1])
    print(f"model {args.model}, threads {args.threads}, {args.rounds} interleaved rounds x {args.runs} runs; "
          f"FP32 reference {metric} {report['evaluate']['reference'][metric]['value']:.4f}")
    for tid, ms in zip(("et-fp32", "et-int8"), p50):
        t = report["targets"][tid]
        dev = t["devices"]["local"]
        print(f"  {tid}: {t['size_bytes'] / 1024:.1f} KiB, delegated {t['compile']['delegation']['delegated_fraction']:.2f}, "
              f"{metric} {dev['accuracy']['metrics'][metric]['value']:.4f}, cosine {dev['accuracy']['fidelity']['cosine']:.5f}, "
              f"p50 {ms:.4f} ms (validation p50 {dev['latency']['p50_ms']:.4f} ms)")
    print(f"int8/fp32 p50 ratio: {p50[1] / p50[0]:.3f}")


if __name__ == "__main__":
    main()

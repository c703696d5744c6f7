"""ExecuTorch int8 vs fp32: `.pte` size, p50 latency and fidelity, for the digits CNN and MTCNN RNet.

    python benchmarks/executorch_int8.py [--model digits [rnet]] [--threads 1] [--rounds 5] [--runs 300] [--workdir DIR]

Builds the model with the real `edgepack build` (targets et-fp32 and et-int8: torch.export, XNNPACK
partitioner, int8 by PT2E with the XNNPACK quantizer calibrated on the recipe's data) in the executorch
toolchain environment (installed first if missing), then times both programs with the ExecuTorch runtime
in that environment in interleaved rounds (fp32 round, int8 round, ...) so load drift hits both alike.
Several models: one build (one plan) and every program timed in the same rounds, side by side.
Prints size, delegated share, metric, centred cosine and max abs error vs FP32 (from report.json), p50 per
program and each model's int8/fp32 p50 ratio. RNet's weights and face crops come from the test fixtures (facenet-pytorch 2.6.0).
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
paths, xs, threads, rounds, runs = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
portable_lib._unsafe_reset_threadpool(threads)
methods = [Runtime.get().load_program(p).load_method("forward") for p in paths]
feeds = [[torch.from_numpy(np.ascontiguousarray(np.load(x)[:1]))] for x in xs]
times = [[] for _ in paths]
for m, feed in zip(methods, feeds):
    for _ in range(50):
        m.execute(feed)
for _ in range(rounds):
    for k, (m, feed) in enumerate(zip(methods, feeds)):
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


def build_all(models: list[str], tmp: Path, env: dict) -> dict[str, tuple[dict, Path, np.ndarray, str]]:
    """Every model's recipe in one `edgepack build` (one plan): model -> (report, recipe dir, timing input, metric).
    Bundles already built in ``tmp`` (--workdir) are reused: only the timing runs again."""
    out = {}
    for model in models:
        d = tmp / model
        d.mkdir(exist_ok=True)
        text, x, metric = recipe(model, d)
        (d / "recipe.yaml").write_text(text + "package: {output: out}\n")
        out[model] = (d, x, metric)
    if all((d / "out" / "report.json").is_file() for d, _, _ in out.values()):
        return {m: (json.loads((d / "out" / "report.json").read_text()), d, x, metric) for m, (d, x, metric) in out.items()}
    r = subprocess.run([sys.executable, "-m", "edgepack", "build", *[str(out[m][0] / "recipe.yaml") for m in models], "--no-publish"],
                       env=dict(env, EDGEPACK_HOME=str(tmp / "home")), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"build failed (exit {r.returncode}): {r.stderr[-1500:]}")
    return {m: (json.loads((d / "out" / "report.json").read_text()), d, x, metric) for m, (d, x, metric) in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", nargs="+", choices=("digits", "rnet"), default=["digits"], help="one or both, timed side by side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--workdir", type=Path, help="build here and keep it; a later run with the same folder only re-times")
    args = ap.parse_args()
    models = list(dict.fromkeys(args.model))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "edgepack", "toolchains", "install", "executorch"], env=env, check=True)
    found = subprocess.run([sys.executable, "-c", "from edgepack.toolchains import home, resolve; print(home()); print(resolve('executorch').python or '')"],
                           env=env, check=True, capture_output=True, text=True).stdout.splitlines()
    env["EDGEPACK_TOOLCHAINS_DIR"] = found[0]  # the build gets its own EDGEPACK_HOME: keep the toolchains where they are
    python = found[1].strip() or sys.executable
    load0 = os.getloadavg()[0]
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgepack-et-bench-") as scratch:
        tmp = str(args.workdir.resolve()) if args.workdir else scratch
        built = build_all(models, Path(tmp), env)
        ptes, xs = [], []
        for m in models:
            report, d, x, _ = built[m]
            np.save(Path(tmp) / f"{m}.x.npy", x)
            for t in ("et-fp32", "et-int8"):
                ptes.append(str(d / "out" / report["targets"][t]["artifact"]["path"]))
                xs.append(str(Path(tmp) / f"{m}.x.npy"))
        load1 = os.getloadavg()[0]
        out = subprocess.run([python, "-c", TIME_PTE, ",".join(ptes), ",".join(xs), str(args.threads), str(args.rounds),
                              str(args.runs)], capture_output=True, text=True, check=True).stdout
        p50 = json.loads(out.strip().splitlines()[-1])
    print(f"threads {args.threads}, {args.rounds} interleaved rounds x {args.runs} runs of every program; "
          f"load average {load1:.2f} before timing ({load0:.2f} before the build), {os.getloadavg()[0]:.2f} after")
    print("| model | target | .pte KiB | delegated | metric (FP32) | cosine vs FP32 | max abs err | p50 ms | validation p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for i, m in enumerate(models):
        report, _, _, metric = built[m]
        ref = report["evaluate"]["reference"][metric]["value"]
        for k, tid in enumerate(("et-fp32", "et-int8")):
            t = report["targets"][tid]
            dev = t["devices"]["local"]
            fid = dev["accuracy"]["fidelity"]
            print(f"| {m} | {tid} | {t['size_bytes'] / 1024:.1f} | {t['compile']['delegation']['delegated_fraction']:.2f} "
                  f"({t['compile']['lowering']}) | {metric} {dev['accuracy']['metrics'][metric]['value']:.4f} ({ref:.4f}) | "
                  f"{fid['cosine']:.5f} | {fid['max_abs_error']:.3g} | {p50[2 * i + k]:.4f} | {dev['latency']['p50_ms']:.4f} |")
        ratios.append(f"{m} {p50[2 * i + 1] / p50[2 * i]:.3f}")
    print("int8/fp32 p50 ratio: " + ", ".join(ratios))


if __name__ == "__main__":
    main()

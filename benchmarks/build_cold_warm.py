"""Cold vs warm `edgepack build` of the digits recipe, measured side by side in one run.

    python benchmarks/build_cold_warm.py [--recipe recipes/digits/recipe.yaml] [--repeat 3]

Cold: an empty stage cache (a fresh EDGEPACK_HOME each time). Warm: the same recipe again with the
cache kept, so every stage is a cache hit and only package + sign + publish run. Also measures, in
the same run, the import floor: a child `python -c 'import click, pydantic, yaml, numpy, onnx,
cryptography'`. Each cold build is followed by --warm-runs warm builds, each warm build by one floor run (alternating, so
both see the same load on the machine). Prints the medians, cold/warm (target >= 10x) and warm/floor (target <= 2x),
by wall time and by CPU time (user + sys of the child: less sensitive to other load on the machine).
The children run with Python's bytecode cache on, as an installed package does (PYTHONDONTWRITEBYTECODE
is removed from their environment: with it every edgepack module is compiled from source on every run,
about 0.3 s of a warm build that users never pay; the first cold build writes the cache).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _build(recipe: Path, home: Path, out: Path) -> tuple[float, float]:
    env = _env(EDGEPACK_HOME=str(home))
    c0, t0 = _cpu(), time.perf_counter()
    # --force: the warm build publishes the same version again (release tags are immutable otherwise)
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(recipe), "-o", str(out), "--json", "--force"],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"build failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0, _cpu() - c0


FLOOR = "import click, pydantic, yaml, numpy, onnx, cryptography"


def _floor() -> tuple[float, float]:
    c0, t0 = _cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True, env=_env())
    return time.perf_counter() - t0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "digits" / "recipe.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warm-runs", type=int, default=3, help="warm builds per cold one, each followed by a floor run")
    args = ap.parse_args()
    cold, warm, floor = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            home, out = Path(tmp) / "home", Path(tmp) / "bundle"
            cold.append(_build(args.recipe, home, out))
            for _ in range(args.warm_runs):  # warm and floor alternate: both see the same load on the machine
                warm.append(_build(args.recipe, home, out))
                floor.append(_floor())
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    runs = lambda xs, i: [round(x[i], 2) for x in xs]  # noqa: E731
    print(f"recipe: {args.recipe}")
    for i, what in ((0, "wall"), (1, "cpu")):
        c, w, f = med(cold, i), med(warm, i), med(floor, i)
        print(f"[{what}] cold build (empty cache): median {c:.2f} s  runs {runs(cold, i)}")
        print(f"[{what}] warm build (all stages cached): median {w:.2f} s  runs {runs(warm, i)}")
        print(f"[{what}] import floor ({FLOOR}): median {f:.2f} s  runs {runs(floor, i)}")
        print(f"[{what}] cold / warm ratio: {c / w:.1f}x (target >= 10x)")
        print(f"[{what}] warm / import floor: {w / f:.2f}x (target <= 2x)")

if __name__ == "__main__":
    main()

"""Cold vs warm `edgepack build` of the digits recipe, measured side by side in one run.

    python benchmarks/build_cold_warm.py [--recipe recipes/digits/recipe.yaml] [--repeat 3]

Cold: an empty stage cache (a fresh EDGEPACK_HOME each time). Warm: the same recipe again with the
cache kept, so every stage is a cache hit and only package + sign + publish run. Also measures, in
the same run, the import floor: a child `python -c 'import click, pydantic, yaml, numpy, onnx,
cryptography'`. Prints the medians of --repeat, cold/warm (target >= 10x) and warm/floor (target <= 2x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _build(recipe: Path, home: Path, out: Path) -> float:
    env = dict(os.environ, EDGEPACK_HOME=str(home))
    t0 = time.perf_counter()
    # --force: the warm build publishes the same version again (release tags are immutable otherwise)
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(recipe), "-o", str(out), "--json", "--force"],
                       env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"build failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


FLOOR = "import click, pydantic, yaml, numpy, onnx, cryptography"


def _floor() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "digits" / "recipe.yaml")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cold, warm, floor = [], [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            home, out = Path(tmp) / "home", Path(tmp) / "bundle"
            cold.append(_build(args.recipe, home, out))
            warm.append(_build(args.recipe, home, out))
            floor.append(_floor())
    c, w, f = statistics.median(cold), statistics.median(warm), statistics.median(floor)
    print(f"recipe: {args.recipe}")
    print(f"cold build (empty cache): median {c:.2f} s  runs {[round(x, 2) for x in cold]}")
    print(f"warm build (all stages cached): median {w:.2f} s  runs {[round(x, 2) for x in warm]}")
    print(f"import floor ({FLOOR}): median {f:.2f} s  runs {[round(x, 2) for x in floor]}")
    print(f"cold / warm ratio: {c / w:.1f}x (target >= 10x)")
    print(f"warm / import floor: {w / f:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()

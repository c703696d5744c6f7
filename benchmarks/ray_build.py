"""Three recipes on a local Ray cluster vs the local executor: same bundles, and the wall-time ratio.

    python benchmarks/ray_build.py [--recipe recipes/digits/recipe.yaml] [--workers 1]

Makes three copies of the recipe (names NAME-a, -b, -c; same model), starts a real local Ray cluster
(tests/raycluster.py: a head node with 1 CPU plus --workers worker nodes with 2 CPUs each, every node
with its own cache) and a docker-registry as the shared cache store (tests/registry_server.py), then
builds the three cold with `--executor local` (fresh cache) and cold with `--executor ray` (fresh
caches everywhere, a fresh store repository). Prints whether every artifact digest and lineage key
is equal, and ray/local wall time. On one machine the cluster only adds overhead (task shipping, store
round trips, node start excluded); the point of Ray is more machines, which this cannot show.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from raycluster import RayCluster  # noqa: E402
from registry_server import RegistryServer  # noqa: E402


def copies(recipe: Path, dest: Path) -> list[Path]:
    out = []
    text = recipe.read_text()
    name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("name:"))
    for suffix in "abc":
        d = dest / f"{name}-{suffix}"
        shutil.copytree(recipe.parent, d, ignore=shutil.ignore_patterns("__pycache__"))
        (d / recipe.name).write_text(text.replace(f"name: {name}", f"name: {name}-{suffix}", 1))
        out.append(d / recipe.name)
    return out


def build(recipes: list[Path], cwd: Path, env: dict, *extra) -> float:
    cwd.mkdir(parents=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", *map(str, recipes), "--no-publish", "--json", *extra],
                       cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"build failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return time.perf_counter() - t0


def digests(cwd: Path) -> dict:
    out = {}
    for m in sorted((cwd / "dist").glob("*/edgepack.json")):
        doc = json.loads(m.read_text())
        out[doc["name"]] = ({f["path"]: f["sha256"] for f in doc["files"] if f["path"].startswith("targets/")},
                            {s["name"]: s["key"] for s in doc["lineage"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "digits" / "recipe.yaml")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ep-raybench-") as tmp:
        tmp = Path(tmp)
        recipes = copies(args.recipe.resolve(), tmp / "src")
        base = {"EDGEPACK_HOME": str(tmp / "home")}
        local = build(recipes, tmp / "local", {**base, "EDGEPACK_CACHE": str(tmp / "cache-local")}, "--executor", "local")
        with RegistryServer(tmp / "registry") as reg, RayCluster(tmp / "cluster", workers=args.workers) as cluster:
            env = {**base, "EDGEPACK_CACHE": str(tmp / "cache-ray"), "RAY_ADDRESS": cluster.address,
                   "EDGEPACK_CACHE_STORE": f"oci://{reg.host}/edgepack-cache"}
            on_ray = build(recipes, tmp / "ray", env, "--executor", "ray")
        same = digests(tmp / "local") == digests(tmp / "ray") and len(digests(tmp / "local")) == 3
        print(f"recipes: 3 x {args.recipe}; ray cluster: head (1 CPU) + {args.workers} worker node(s) x 2 CPUs, 127.0.0.1")
        print(f"local executor: {local:.1f} s   ray executor: {on_ray:.1f} s   ray/local: {on_ray / local:.2f}x")
        print(f"artifact digests and cache keys equal: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()

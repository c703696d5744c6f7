"""The Ray executor on a real local Ray cluster (tests/raycluster.py: a head and two worker node
processes on 127.0.0.1, each node with its own cache), artifacts through a real docker-registry."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_RECIPE, digits_arrays, tiny_onnx, write_recipe
from raycluster import RayCluster
from raycluster import available as ray_missing
from registry_server import RegistryServer
from registry_server import available as registry_missing

from edgepack.cache import ENTRY_NAME, check_entry

pytestmark = [pytest.mark.skipif(ray_missing() is not None, reason=str(ray_missing())),
              pytest.mark.skipif(registry_missing() is not None, reason=str(registry_missing()))]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    with RayCluster(tmp_path_factory.mktemp("raycluster"), workers=1, head_cpus=1) as c:
        yield c


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with RegistryServer(tmp_path_factory.mktemp("ray-store")) as s:
        yield s


def three_recipes(root: Path, seed: int) -> list[Path]:
    """Three small ONNX recipes (static INT8 + ONNX Runtime, validated here), each its own model."""
    out = []
    x, y = digits_arrays(64)
    for i in range(3):
        d = root / f"m{seed}-{i}"
        d.mkdir(parents=True)
        tiny_onnx(d / "model.onnx", seed=seed * 10 + i)
        np.savez(d / "calib.npz", input=x[:32])
        np.savez(d / "val.npz", input=x)
        np.save(d / "labels.npy", y)
        text = TINY_RECIPE.replace("name: tiny", f"name: m{seed}-{i}").replace("min_cosine: 0.9", "min_cosine: 0.5")
        out.append(write_recipe(d / "recipe.yaml", text))
    return out


def build(recipes, cwd: Path, cache: Path, env: dict, *extra, background=False):
    args = [sys.executable, "-m", "edgepack.cli", "build", *map(str, recipes), "--no-publish", "--cache-dir", str(cache), *extra]
    import os

    full = {**os.environ, **env}
    if background:
        return subprocess.Popen(args, cwd=cwd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=600)


def bundles(cwd: Path, recipes) -> dict:
    """Per recipe: the artifact files (path -> sha256) and the cache keys of its lineage."""
    out = {}
    for r in recipes:
        name = r.parent.name
        m = json.loads((cwd / "dist" / f"{name}-0.1.0" / "edgepack.json").read_text())
        out[name] = ({f["path"]: f["sha256"] for f in m["files"] if f["path"].startswith("targets/")},
                     {s["name"]: s["key"] for s in m["lineage"]})
    return out


def entries_whole(root: Path) -> int:
    n = 0
    for meta in root.glob(f"*/*/{ENTRY_NAME}"):
        assert check_entry(meta.parent, json.loads(meta.read_text())["files"]) is None, meta
        n += 1
    return n


def test_three_recipes_on_the_ray_cluster_give_the_local_bundles(cluster, registry, tmp_path):
    recipes = three_recipes(tmp_path / "src", seed=1)
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = build(recipes, tmp_path / "local", tmp_path / "cache-local", {})
    assert local.returncode == 0, local.stdout + local.stderr
    env = {"RAY_ADDRESS": cluster.address, "EDGEPACK_CACHE_STORE": f"oci://{registry.host}/cache"}
    r = build(recipes, tmp_path / "ray", tmp_path / "cache-ray", env, "--executor", "ray")
    assert r.returncode == 0, r.stdout + r.stderr
    assert bundles(tmp_path / "ray", recipes) == bundles(tmp_path / "local", recipes)  # same bytes, same keys
    report = json.loads((tmp_path / "ray" / "dist" / "m1-0-0.1.0" / "report.json").read_text())
    on_ray = {s["name"] for s in report["stages"] if s.get("executor") == "ray"}
    assert {"compile ort", "optimize[0] quantize"} <= on_ray
    for r_ in recipes:  # validation on this host overlapped nothing, Ray tasks of the other recipes included
        rep = json.loads((tmp_path / "ray" / "dist" / f"{r_.parent.name}-0.1.0" / "report.json").read_text())
        assert rep["plan"]["executor"] == "ray"
        validations = [n for n in rep["plan"]["nodes"] if n["kind"] == "validate"]
        assert validations and all(n["overlapped"] == [] for n in validations), validations
    nodes = {n: entries_whole(cluster.root / f"{n}-home" / "cache") for n in ["head", *cluster.workers]
             if (cluster.root / f"{n}-home" / "cache").exists()}
    assert nodes.get("w1", 0) >= 1 and sum(nodes.values()) >= 3 * 3  # the stages ran on the nodes (the second node too), each its own cache
    assert entries_whole(tmp_path / "cache-ray")


def test_without_a_shared_store_the_ray_executor_is_bad_input(cluster, tmp_path):
    recipes = three_recipes(tmp_path / "src", seed=2)[:1]
    r = build(recipes, tmp_path, tmp_path / "cache", {"RAY_ADDRESS": cluster.address}, "--executor", "ray")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no shared cache store" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_worker_node_killed_mid_build_its_tasks_rerun_elsewhere(cluster, registry, tmp_path):
    """Last in this module: it takes the worker node away (the head node is left to re-run its tasks)."""
    recipes = three_recipes(tmp_path / "src", seed=3)[:2]
    env = {"RAY_ADDRESS": cluster.address, "EDGEPACK_CACHE_STORE": f"oci://{registry.host}/cache-kill"}
    p = build(recipes, tmp_path, tmp_path / "cache", env, "--executor", "ray", background=True)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and p.poll() is None and time.monotonic() < deadline:
        for w in cluster.workers:  # never the head: it holds the cluster
            if cluster.task_pids(w):  # a task of this build is running on node w: take the node away
                cluster.kill_node(w)
                killed = w
                break
        time.sleep(0.05)
    out, err = p.communicate(timeout=600)
    assert killed is not None, "no task was seen running on a worker node"
    assert not cluster.pids(killed)
    if p.returncode != 0:  # allowed: a clear one-line failure, never a traceback
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    else:
        assert all((tmp_path / "dist" / f"{r.parent.name}-0.1.0" / "edgepack.json").is_file() for r in recipes), out
    entries_whole(tmp_path / "cache")
    for w in ["head", *cluster.workers]:
        if (cluster.root / f"{w}-home" / "cache").exists():
            entries_whole(cluster.root / f"{w}-home" / "cache")  # the killed node's cache too: no half entry
    assert p.returncode == 0, out + err  # Ray re-ran the lost tasks on the head node

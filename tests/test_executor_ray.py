"""The Ray executor on a real local Ray cluster (tests/raycluster.py: a head and two worker node
processes on 127.0.0.1, each node with its own cache), artifacts through a real docker-registry."""

from __future__ import annotations

import functools
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
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


UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]


def hidden(args: list[str], src: Path, view: Path) -> list[str]:
    """``args`` run in a private mount namespace with ``src`` bind-mounted at ``view``."""
    mount = f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(view))}"
    return [*UNSHARE, "sh", "-c", f"{mount} && exec {shlex.join(args)}"]


@functools.lru_cache(maxsize=None)
def private_mounts() -> str | None:
    """None when this process may make a private mount namespace with a bind mount (root), else why not."""
    d = Path(tempfile.mkdtemp(prefix="ep-ns-"))
    try:
        r = subprocess.run([*UNSHARE, "mount", "--bind", str(d), str(d)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"no private mount namespace here ({e})"
    finally:
        d.rmdir()
    return None if r.returncode == 0 else f"no private mount namespace here (unshare: {r.stderr.strip()[:120]})"


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


def build(recipes, cwd: Path, cache: Path, env: dict, *extra, background=False, hide: tuple[Path, Path] | None = None):
    """``edgepack build`` in a subprocess. ``hide=(src, view)``: in a private mount namespace with ``src``
    bind-mounted at ``view``, so only the build sees the files there (the Ray nodes see an empty folder)."""
    args = [sys.executable, "-m", "edgepack.cli", "build", *map(str, recipes), "--no-publish", "--cache-dir", str(cache), *extra]
    import os

    if hide is not None:
        args = hidden(args, *hide)
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


WITH_PROGRESS = """import json, sys
import edgepack
events = []
edgepack.build(sys.argv[1], executor="ray", publish=False, cache_dir=sys.argv[2], quiet=True, progress=events.append)
with open(sys.argv[3], "w") as f:
    json.dump(events, f)
"""


LLAMA_RECIPE = """\
name: tiny-llama-ray
version: 0.1.0
model:
  format: hf
  path: tiny-llama
  task: text-generation
generation:
  prompts: prompts.txt
  prompt_lengths: [8]
  new_tokens: 4
  runs: 1
targets:
  - {type: onnxruntime, name: ort}
evaluate:
  - type: token_agreement
gates:
  metrics:
    token_agreement: {min: 0.99}
"""


@pytest.mark.skipif(private_mounts() is not None, reason=str(private_mounts()))
def test_a_hugging_face_folder_reaches_the_ray_nodes_through_the_store(cluster, registry, tmp_path):
    """A text-generation build whose reference (PyTorch on the folder, in a worker the task spawns) and compile
    (ONNX Runtime GenAI's layout: config and tokenizer files from the folder) run as Ray tasks while the folder
    is visible to the coordinator only (a private mount namespace): the nodes fetch it from the store, verified,
    the bundle is the local build's byte for byte, and the reference's progress reaches edgepack.build(progress=).
    The Ray build starts from the local build's convert entry (the coordinator's own node, not under test here)."""
    import os

    import hfmodels

    src, view, ray_cache = tmp_path / "src", tmp_path / "view", tmp_path / "cache-ray"
    view.mkdir()
    shutil.copytree(hfmodels.llama_folder(), src / "tiny-llama")
    (src / "tiny-llama" / "README.md").write_text("not part of the model\n")  # neither keys nor travels
    hfmodels.write_texts(src, prompts=2)
    write_recipe(src / "recipe.yaml", LLAMA_RECIPE)
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = build([src / "recipe.yaml"], tmp_path / "local", tmp_path / "cache-local", {})
    assert local.returncode == 0, local.stdout + local.stderr
    out = "dist/tiny-llama-ray-0.1.0"
    convert = next(s["key"] for s in json.loads((tmp_path / "local" / out / "report.json").read_text())["stages"] if s["name"] == "convert")
    shutil.copytree(tmp_path / "cache-local" / convert[:2] / convert, ray_cache / convert[:2] / convert)
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "EDGEPACK_CACHE_STORE": f"oci://{registry.host}/cache-hf"}
    args = [sys.executable, "-c", WITH_PROGRESS, str(view / "recipe.yaml"), str(ray_cache), str(tmp_path / "events.json")]
    r = subprocess.run(hidden(args, src, view), cwd=tmp_path / "ray", env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(view.iterdir())  # outside the build's namespace the recipe folder was never there

    def bundle(cwd: Path):
        m = json.loads((cwd / out / "edgepack.json").read_text())
        return ({f["path"]: f["sha256"] for f in m["files"] if f["path"].startswith(("targets/", "tokenizer/"))},
                {s["name"]: s["key"] for s in m["lineage"]})
    files, keys = bundle(tmp_path / "ray")
    assert (files, keys) == bundle(tmp_path / "local")  # same bytes, same keys
    assert any(p.startswith("targets/ort/genai/") for p in files) and "tokenizer/tokenizer.json" in files
    report = json.loads((tmp_path / "ray" / out / "report.json").read_text())
    assert {"reference fp32", "compile ort"} <= {s["name"] for s in report["stages"] if s.get("executor") == "ray"}
    fetched = []  # the folder as the nodes received it: an input entry, verified, in each node's own cache
    for n in ["head", *cluster.workers]:
        for meta in (cluster.root / f"{n}-home" / "cache").glob(f"*/*/{ENTRY_NAME}"):
            entry = json.loads(meta.read_text())
            if entry["outputs"].get("artifact", {}).get("format") == "hf":
                assert check_entry(meta.parent, entry["files"]) is None
                fetched.append(sorted(entry["files"]))
    assert fetched and all("tiny-llama/model.safetensors" in f and "tiny-llama/config.json" in f for f in fetched), fetched
    assert not any("tiny-llama/README.md" in f for f in fetched)
    events = [e for e in json.loads((tmp_path / "events.json").read_text()) if e.get("stage") == "reference fp32"]
    kinds = [e["event"] for e in events]  # reported in the worker the Ray task spawned, replayed between start and done
    assert kinds[0] == "start" and kinds[-1] == "done" and events[-1]["status"] == "ok", kinds
    steps = [e for e in events if e["event"] == "update" and e["task"] == "reference"]
    assert steps and steps[-1]["completed"] == steps[-1]["total"], events


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

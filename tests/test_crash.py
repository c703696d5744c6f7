"""Crash windows, hit deterministically with named fail points (edgepack/failpoints.py), then a
real SIGKILL of the real `edgepack build` process: `-o DIR` always holds a complete signed bundle
(the old one or the new one), and the next run removes what the dead one left, never what a live
concurrent run holds."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TINY_RECIPE, digits_arrays, run_cli, tiny_onnx, write_recipe

from edgepack.cache import StageCache, check_entry

TOKEN = re.compile(r"ep-\d+-\d+-[0-9a-f]{8}-")


def _env(edgepack_home, failpoints=None):
    return {"PYTHONPATH": str(REPO), "EDGEPACK_HOME": str(edgepack_home), "EDGEPACK_FAILPOINTS": failpoints or ""}


def _build(recipe, out, cache, edgepack_home, failpoints=None):
    return run_cli("build", recipe, "-o", out, "--no-publish", "--cache-dir", cache,
                   cwd=out.parent, env=_env(edgepack_home, failpoints), timeout=600)


def _popen_build(recipe, out, cache, edgepack_home, failpoints):
    return subprocess.Popen([sys.executable, "-m", "edgepack.cli", "build", str(recipe), "-o", str(out), "--no-publish",
                             "--cache-dir", str(cache)], cwd=out.parent, env={**os.environ, **_env(edgepack_home, failpoints)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _wait_stopped(proc, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the build exited ({proc.returncode}) before its fail point: {proc.communicate()[1][-2000:]}")
        if _state(proc.pid) == "T":
            return
        time.sleep(0.05)
    raise AssertionError("the build never reached its fail point")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if TOKEN.search(p.name))


def _verify(bundle, edgepack_home):
    r = run_cli("verify", bundle, env=_env(edgepack_home))
    assert r.returncode == 0, r.stderr
    return json.loads((bundle / "edgepack.json").read_text())


def _revise(recipe: Path, tag: str) -> str:
    """A new recipe text (so a new recipe_sha256 in the manifest) with every stage still cached."""
    recipe.write_text(recipe.read_text() + f"# {tag}\n")
    return __import__("hashlib").sha256(recipe.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """One cold build of the tiny recipe: its recipe folder, cache, signed bundle and EDGEPACK_HOME."""
    root = tmp_path_factory.mktemp("warm")
    d = root / "tiny"
    d.mkdir()
    tiny_onnx(d / "model.onnx")
    x, y = digits_arrays(64)
    np.savez(d / "calib.npz", input=x[:32])
    np.savez(d / "val.npz", input=x)
    np.save(d / "labels.npy", y)
    write_recipe(d / "recipe.yaml", TINY_RECIPE)
    home = root / "home"
    r = _build(d / "recipe.yaml", root / "out", root / "cache", home)
    assert r.returncode == 0, r.stderr
    return root, home


@pytest.fixture
def built(warm, tmp_path, monkeypatch):
    """A private copy of the warm build: (recipe, out, cache, home, first manifest)."""
    root, home = warm
    monkeypatch.setenv("EDGEPACK_HOME", str(home))
    for name in ("tiny", "cache", "out"):
        shutil.copytree(root / name, tmp_path / name, symlinks=True)
    out = tmp_path / "out"
    return tmp_path / "tiny" / "recipe.yaml", out, tmp_path / "cache", home, _verify(out, home)


def _rerun_validation(recipe: Path, runs: int) -> Path:
    """A sibling recipe whose validation settings differ (that stage re-runs, the others hit)."""
    other = recipe.with_name(f"recipe-{runs}.yaml")
    other.write_text(recipe.read_text().replace("  runs: 10\n", f"  runs: {runs}\n"))
    return other


@pytest.mark.parametrize("point", ["package.after_write", "sign.after_write"])
def test_kill_before_the_swap_keeps_the_old_signed_bundle(built, point):
    recipe, out, cache, home, first = built
    new_sha = _revise(recipe, point)
    r = _build(recipe, out, cache, home, f"{point}=kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _verify(out, home) == first  # the previous signed bundle, untouched
    assert _leftovers(out.parent), "the killed run left no staging folder (fail point not reached?)"
    r = _build(recipe, out, cache, home)
    assert r.returncode == 0, r.stderr
    assert _verify(out, home)["recipe_sha256"] == new_sha
    assert _leftovers(out.parent) == [] and {p.name for p in out.parent.iterdir() if p.name.startswith(".out")} <= {".out.logs"}


def test_kill_after_the_exchange_leaves_the_new_bundle(built):
    recipe, out, cache, home, _ = built
    new_sha = _revise(recipe, "exchange")
    r = _build(recipe, out, cache, home, "swap.before_cleanup=kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _verify(out, home)["recipe_sha256"] == new_sha  # exchanged in one step: new and signed
    staged = [out.parent / n for n in _leftovers(out.parent) if (out.parent / n / "edgepack.json").is_file()]
    assert len(staged) == 1  # the old bundle, under the staging name
    assert _build(recipe, out, cache, home).returncode == 0
    assert _leftovers(out.parent) == []


def test_kill_between_the_fallback_renames_is_repaired_by_the_next_run(built):
    """Without RENAME_EXCHANGE (swap.exchange=error: a filesystem without it) the swap is two renames;
    a kill between them leaves DIR missing and the old bundle as .old, which the next run puts back."""
    recipe, out, cache, home, first = built
    r = _build(recipe, out, cache, home, "swap.exchange=error,swap.between_renames=kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and [n for n in _leftovers(out.parent) if n.endswith(".old")]
    r = _build(recipe, out, cache, home, "package.after_write=kill")  # the next run dies too, later...
    assert r.returncode == -signal.SIGKILL
    assert _verify(out, home) == first  # ...but first put the old signed bundle back
    new_sha = _revise(recipe, "fallback")
    r = _build(recipe, out, cache, home, "swap.exchange=error")  # the fallback swap, uninterrupted
    assert r.returncode == 0, r.stderr
    assert _verify(out, home)["recipe_sha256"] == new_sha and _leftovers(out.parent) == []


def test_killed_cache_commit_leaves_a_workdir_the_next_run_removes(built):
    recipe, out, cache, home, _ = built
    recipe = _rerun_validation(recipe, 11)
    r = _build(recipe, out, cache, home, "cache.before_commit=kill")
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert len(_leftovers(cache / "tmp")) == 1
    r = _build(recipe, out, cache, home)
    assert r.returncode == 0, r.stderr
    assert _leftovers(cache / "tmp") == []
    _verify(out, home)


def test_cleanup_spares_a_live_concurrent_run(built, tmp_path):
    """Build A stopped (alive) in its signing window, build C stopped (alive) mid cache commit: a build
    B to A's DIR with A's cache, and C's cache cleanup, remove a dead run's leftovers and neither live one's."""
    recipe, out, cache, home, _ = built
    dead = cache / "tmp" / "0123456789ab-ep-999999999-1-00000000-dead"  # another boot, two days old: dead
    dead.mkdir(parents=True)
    os.utime(dead, (time.time() - 2 * 86400,) * 2)
    shutil.copytree(cache, tmp_path / "cache-c")
    sha_a = _revise(recipe, "A")
    a = _popen_build(recipe, out, cache, home, "sign.after_write=stop")
    c = _popen_build(_rerun_validation(recipe, 12), tmp_path / "out-c", tmp_path / "cache-c", home, "cache.before_commit=stop")
    try:
        _wait_stopped(a)
        _wait_stopped(c)
        staged_a = _leftovers(out.parent)
        workdir_c = [n for n in _leftovers(tmp_path / "cache-c" / "tmp") if "dead" not in n]
        assert staged_a and len(workdir_c) == 1
        r = _build(recipe, out, cache, home)  # B: same DIR, same cache, while A is alive
        assert r.returncode == 0, r.stderr
        assert set(staged_a) <= set(_leftovers(out.parent)) and not dead.exists()
        StageCache(tmp_path / "cache-c").new_workdir("f" * 64)  # C's cache cleaned while C is alive
        assert workdir_c[0] in _leftovers(tmp_path / "cache-c" / "tmp")
        assert not (tmp_path / "cache-c" / "tmp" / dead.name).exists()
        for p in (a, c):
            os.kill(p.pid, signal.SIGCONT)
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-2000:]
    finally:
        for p in (a, c):
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert _verify(out, home)["recipe_sha256"] == sha_a  # A swapped in last, complete and signed
    assert _leftovers(out.parent) == []
    assert [n for n in _leftovers(tmp_path / "cache-c" / "tmp") if n.startswith("ffff")]  # only the test's own


def test_bytes_written_over_a_cached_model_are_caught_and_the_stage_reruns(built):
    recipe, out, cache, home, first = built
    shipped = out / first["targets"]["ort"]["path"]
    good = shipped.read_bytes()
    entries = [p for p in cache.rglob("*.onnx") if "tmp" not in p.relative_to(cache).parts and p.read_bytes() == good]
    assert entries, "the compiled model is not in the cache"
    for p in entries:
        p.write_bytes(good[:-8] + b"tampered")  # same size: only the digest can tell
    r = _build(recipe, out, cache, home)
    assert r.returncode == 0, r.stderr
    assert "failed its check (model.onnx: sha256 mismatch); evicted, re-running" in r.stdout
    assert shipped.read_bytes() != good[:-8] + b"tampered"  # rebuilt, not the tampered bytes
    report = json.loads((out / "report.json").read_text())
    assert any(s.get("evicted") for s in report["stages"])
    for meta in cache.glob("*/*/entry.json"):  # every entry left is whole
        assert check_entry(meta.parent, json.loads(meta.read_text())["files"]) is None


def test_killed_publish_and_pull_leave_temps_the_next_run_removes(built, tmp_path):
    """The index temp of a push killed before its rename, and a pull killed after its swap (the old
    copy under the staging name): the next push and pull remove both; DIR always verifies."""
    recipe, out, cache, home, first = built
    reg, pulled = tmp_path / "registry" / "tiny", tmp_path / "pulled"  # repository = model name, tag = version
    ref = f"layout:{reg}:0.1.0"
    assert run_cli("publish", out, ref, env=_env(home)).returncode == 0
    r = run_cli("publish", out, ref, env=_env(home, "atomic_write.index.json=kill"))
    assert r.returncode == -signal.SIGKILL and len(_leftovers(reg)) == 1
    assert run_cli("pull", ref, "-o", pulled, env=_env(home)).returncode == 0
    r = run_cli("pull", ref, "-o", pulled, env=_env(home, "swap.before_cleanup=kill"))
    assert r.returncode == -signal.SIGKILL and len(_leftovers(tmp_path)) == 1
    assert _verify(pulled, home) == first
    r = run_cli("publish", out, ref, env=_env(home))
    assert r.returncode == 0, r.stderr
    r = run_cli("pull", ref, "-o", pulled, env=_env(home))
    assert r.returncode == 0, r.stderr
    assert _leftovers(reg) == [] and _leftovers(tmp_path) == [] and _verify(pulled, home) == first

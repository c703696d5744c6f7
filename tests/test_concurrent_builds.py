"""Concurrent builds of one recipe sharing one cache, one output folder and one fresh EDGEPACK_HOME:
3 builds x 5 rounds, all exit 0 (a build waits for the entry or folder lock another holds), and
the end state is consistent: the bundle verifies, every cache entry matches its digests, and no
temp file or folder is left."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from conftest import REPO, run_cli

from edgepack.cache import check_entry

ROUNDS, BUILDS = 5, 3
TOKEN = re.compile(r"ep-\d+-\d+-[0-9a-f]{8}-")


def test_three_concurrent_builds_five_rounds(tiny_recipe, tmp_path, edgepack_home):
    out, cache = tmp_path / "out", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEPACK_HOME=str(edgepack_home), EDGEPACK_FAILPOINTS="")
    base = tiny_recipe.read_text()
    shas = []
    for rnd in range(ROUNDS):
        # each round changes the validation settings: that stage's entry is raced for, the others hit
        tiny_recipe.write_text(base.replace("  runs: 10\n", f"  runs: {10 + rnd}\n"))
        shas.append(__import__("hashlib").sha256(tiny_recipe.read_bytes()).hexdigest())
        procs = [subprocess.Popen([sys.executable, "-m", "edgepack.cli", "build", str(tiny_recipe), "-o", str(out),
                                   "--no-publish", "--cache-dir", str(cache)], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(BUILDS)]
        results = [(p, *p.communicate(timeout=900)) for p in procs]
        for p, _, err in results:
            assert p.returncode == 0, f"round {rnd}: exit {p.returncode}: {err[-2000:]}"
        r = run_cli("verify", out, env={"EDGEPACK_HOME": str(edgepack_home)})
        assert r.returncode == 0, f"round {rnd}: {r.stderr}"
        assert json.loads((out / "edgepack.json").read_text())["recipe_sha256"] == shas[-1]
    entries = list(cache.glob("*/*/entry.json"))
    assert len(entries) >= 5 + ROUNDS - 1  # convert, quantize, reference, compile, validate x ROUNDS
    for meta in entries:
        assert check_entry(meta.parent, json.loads(meta.read_text())["files"]) is None, meta
    assert [p.name for p in (cache / "tmp").iterdir()] == []
    assert [p.name for p in tmp_path.iterdir() if TOKEN.search(p.name) or p.name.endswith(".lock")] == []
    assert len(list((edgepack_home / "keys").glob("*.pem"))) == 2  # one key pair, not one per racing build

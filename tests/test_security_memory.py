"""Issue 11 finding 14: the memory figures in report.json are the model's, not the build process's.

The build runs in a process that has torch imported and 400 MB of ballast resident (as a real build
of a PyTorch model has); the runner that measures memory is a fresh `python -I` whose peak is its own
(VmHWM reset after its imports), so the tiny model's figures match `edgepack bench` within 20%.
"""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import run_cli

HEAVY_BUILD = """
import sys, numpy as np, torch
ballast = np.ones(50_000_000)  # 400 MB, resident
from edgepack.cli import main
main(sys.argv[1:])
"""


def test_tiny_model_memory_is_the_same_in_a_heavy_build_and_in_bench(tiny_recipe, tmp_path):
    out = tmp_path / "bundle"
    res = subprocess.run([sys.executable, "-c", HEAVY_BUILD, "build", str(tiny_recipe), "--no-publish", "-o", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    built = json.loads((out / "report.json").read_text())["targets"]["ort"]["devices"]["local"]["memory"]
    bench = run_cli("bench", out, "--json", "--runs", "3", "--min-seconds", "0", "--warmup-runs", "1")
    assert bench.returncode == 0, bench.stderr[-3000:]
    doc = json.loads(bench.stdout)
    benched = doc["devices"]["local"]["targets"]["ort"]["memory"]
    assert built["peak_rss_mb"] < 300, built  # not the build's 400 MB ballast + torch
    for k in ("peak_rss_mb", "model_memory_mb"):
        assert abs(built[k] - benched[k]) <= 0.2 * max(built[k], benched[k]) + 1.0, (k, built, benched)

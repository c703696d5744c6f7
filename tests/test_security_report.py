"""Issue 11 findings 12 and 14: what report.json says is about the model, not about the build host.

One build, run the way a PyTorch build runs (torch imported, 400 MB of ballast resident in the build
process), with absolute paths for the recipe, its model and data, the output, cache and registry:
- no file of the bundle and no blob of the registry holds the test's directory (every host path lives
  under it: recipe, cache, EDGEPACK_HOME, logs);
- the memory runner is a fresh `python -I` whose peak is its own (VmHWM reset after its imports), so the
  tiny model's figures match `edgepack bench` within 20%, far below the build process's 400 MB.
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


def test_report_has_no_host_paths_and_the_models_own_memory(tiny_recipe, tmp_path):
    d = tiny_recipe.parent
    text = tiny_recipe.read_text()
    for name in ("model.onnx", "calib.npz", "val.npz", "labels.npy"):
        text = text.replace(f"path: {name}", f"path: {d / name}").replace(f"labels: {name}", f"labels: {d / name}")
    tiny_recipe.write_text(text)
    out, cache, registry = tmp_path / "dist" / "bundle", tmp_path / "cache", tmp_path / "registry" / "tiny"
    res = subprocess.run([sys.executable, "-c", HEAVY_BUILD, "build", str(tiny_recipe.absolute()), "-o", str(out),
                          "--cache-dir", str(cache), "--registry", f"layout:{registry}"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())

    # finding 12: no build-host paths in signed or published files
    assert report["recipe"] == "recipe.yaml"
    assert report["targets"]["ort"]["artifact"]["path"] == "targets/ort/model.onnx"
    leaks = [str(f.relative_to(tmp_path)) for root in (out, registry) for f in sorted(root.rglob("*"))
             if f.is_file() and str(tmp_path).encode() in f.read_bytes()]
    assert not leaks, f"build-host paths in {leaks}"
    assert run_cli("verify", out).returncode == 0

    # finding 14: memory measured in a clean process
    built = report["targets"]["ort"]["devices"]["local"]["memory"]
    bench = run_cli("bench", out, "--json", "--runs", "3", "--min-seconds", "0", "--warmup-runs", "1")
    assert bench.returncode == 0, bench.stderr[-3000:]
    benched = json.loads(bench.stdout)["devices"]["local"]["targets"]["ort"]["memory"]
    assert built["peak_rss_mb"] < 300, built  # not the build's 400 MB ballast + torch
    for k in ("peak_rss_mb", "model_memory_mb"):
        assert abs(built[k] - benched[k]) <= 0.2 * max(built[k], benched[k]), (k, built, benched)

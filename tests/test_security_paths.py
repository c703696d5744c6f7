"""Issue 11 finding 12: no build-host path in report.json, edgepack.json or the published artifact.

The recipe names its model and data by absolute path and the build uses an absolute output and cache
directory; afterwards no file of the bundle and no blob of the registry it was published to holds the
test's directory (every host path lives under it: recipe, cache, EDGEPACK_HOME, logs)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_no_host_paths_in_signed_files(tiny_recipe, tmp_path, edgepack_home):
    d = tiny_recipe.parent
    text = tiny_recipe.read_text()
    for name in ("model.onnx", "calib.npz", "val.npz", "labels.npy"):
        text = text.replace(f"path: {name}", f"path: {d / name}").replace(f"labels: {name}", f"labels: {d / name}")
    tiny_recipe.write_text(text)
    out, cache, registry = tmp_path / "dist" / "bundle", tmp_path / "cache", tmp_path / "registry"
    res = run_cli("build", tiny_recipe.absolute(), "-o", out, "--cache-dir", cache, "--registry", f"layout:{registry}")
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"] == "recipe.yaml"
    assert report["targets"]["ort"]["artifact"]["path"] == "targets/ort/model.onnx"
    leaks = []
    for root in (out, registry):
        for f in sorted(root.rglob("*")):
            if f.is_file() and str(tmp_path).encode() in f.read_bytes():
                leaks.append(str(f.relative_to(tmp_path)))
    assert not leaks, f"build-host paths in {leaks}"
    assert run_cli("verify", out).returncode == 0

"""onnxruntime-web for the browser tests: the pinned npm package (edgepack.devices.browser.ORT_WEB_VERSION),
fetched once with ``npm pack`` into ~/.cache/edgepack-tests/ort-web-VERSION/package (or $EDGEPACK_TEST_CACHE)
and reused offline afterwards; only the dist files the runner page loads are kept (~35 MB).
``python3 tests/ortweb.py`` (scripts/setup-tests.sh) fetches it ahead of the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edgepack.devices.browser import ORT_WEB_VERSION  # noqa: E402

KEEP = ("package/package.json", "package/LICENSE", "package/dist/ort.wasm.min.mjs", "package/dist/ort-wasm-simd-threaded.mjs",
        "package/dist/ort-wasm-simd-threaded.wasm", "package/dist/ort.webgpu.min.mjs", "package/dist/ort-wasm-simd-threaded.jsep.mjs",
        "package/dist/ort-wasm-simd-threaded.jsep.wasm")


def cache_root() -> Path:
    return Path(os.environ.get("EDGEPACK_TEST_CACHE", Path.home() / ".cache" / "edgepack-tests"))


def ort_web_package() -> Path:
    """The onnxruntime-web package folder (what EDGEPACK_ORT_WEB points at)."""
    root = cache_root() / f"ort-web-{ORT_WEB_VERSION}"
    if (root / "package" / "dist" / "ort-wasm-simd-threaded.wasm").is_file():
        return root / "package"
    npm = shutil.which("npm")
    assert npm, "npm is not installed (scripts/setup-tests.sh installs it): the browser tests need onnxruntime-web from the npm registry"
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ort-web-", dir=root.parent))
    try:
        r = subprocess.run([npm, "pack", f"onnxruntime-web@{ORT_WEB_VERSION}", "--silent"], cwd=tmp, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"npm pack onnxruntime-web@{ORT_WEB_VERSION} failed (npm registry unreachable?): {r.stderr[-500:]}"
        tgz = next(tmp.glob("onnxruntime-web-*.tgz"))
        with tarfile.open(tgz) as t:
            t.extractall(tmp / "x", members=[m for m in t.getmembers() if m.name in KEEP], filter="data")
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp / "x", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "package"


if __name__ == "__main__":
    print(ort_web_package())

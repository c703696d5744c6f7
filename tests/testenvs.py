"""The extra Python environments the tests use, built once and cached outside the checkout under
$EDGEPACK_TEST_CACHE (default ~/.cache/edgepack-tests), so CI rebuilds them only when their lock changes:

- toolchains/NAME-<lock digest>/: a managed toolchain environment (`edgepack toolchains install NAME`), found by
  every test through EDGEPACK_TOOLCHAINS_DIR (conftest.py);
- py312-numpy2-<digest>/: Python 3.12 with the core's dependencies and numpy 2 (no toolchain), where a subset of
  the suite runs (tests/test_toolchain_env.py).

`python3 tests/testenvs.py` (scripts/setup-tests.sh) builds both; the fixtures call the same functions, which
do nothing when the environment is complete.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("EDGEPACK_TEST_CACHE") or Path.home() / ".cache" / "edgepack-tests")
TOOLCHAINS_DIR = Path(os.environ.get("EDGEPACK_TOOLCHAINS_DIR") or TEST_CACHE / "toolchains")
NUMPY2_PYTHON = "3.12"
TEST_TOOLCHAINS = ("tflite", "executorch", "genai")  # the toolchain environments the tests build through (test_toolchain_env.py, test_target_executorch.py, test_decoder.py)


def ensure_toolchain(name: str) -> Path | None:
    """The managed environment of ``name`` under TOOLCHAINS_DIR, installed when missing (None: this machine has no
    Python the lock allows; the tests that need it skip)."""
    sys.path.insert(0, str(REPO))
    from edgepack.errors import BadInputError
    from edgepack.toolchains.env import find_python

    try:
        find_python(name)
    except BadInputError as e:
        print(e.one_line())
        return None
    env = {**os.environ, "EDGEPACK_TOOLCHAINS_DIR": str(TOOLCHAINS_DIR), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "edgepack", "toolchains", "install", name], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", f"from edgepack.toolchains import env_dir; print(env_dir({name!r}))"],
                         env=env, check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def numpy2_requirements() -> list[str]:
    """The core's own dependencies (pyproject.toml) with numpy 2, and pytest: no toolchain, no edgepack install
    (the checkout is put on PYTHONPATH, so the cached environment serves any clone)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], "numpy>=2,<3", "pytest>=8", "pytest-timeout>=2.3"]


def find_python(version: str) -> str | None:
    sys.path.insert(0, str(REPO))
    from edgepack.toolchains.env import _candidates, _version_of

    for exe in _candidates():
        v = _version_of(exe)
        if v and v.startswith(version + "."):
            return exe
    return None


def numpy2_env() -> Path | None:
    """Python 3.12 + the core with numpy 2; returns its interpreter (None: no Python 3.12 on this machine)."""
    base = find_python(NUMPY2_PYTHON)
    if base is None:
        return None
    reqs = numpy2_requirements()
    digest = hashlib.sha256("\n".join([NUMPY2_PYTHON, *reqs]).encode()).hexdigest()[:12]
    d = TEST_CACHE / f"py{NUMPY2_PYTHON.replace('.', '')}-numpy2-{digest}"
    py = d / "bin" / "python"
    if (d / "complete").exists():
        return py
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    d.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([base, "-m", "venv", str(d)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *reqs], check=True)
    (d / "complete").write_text("\n".join(reqs) + "\n")
    return py


if __name__ == "__main__":
    for name in TEST_TOOLCHAINS:
        print(ensure_toolchain(name))
    print(numpy2_env() or f"no Python {NUMPY2_PYTHON} (pyenv or python{NUMPY2_PYTHON} on PATH): the numpy-2 test will be skipped")

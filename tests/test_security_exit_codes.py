"""Issue 11 finding 11: bad input exits 2 and a bad artifact exits 4, with one line, before any stage.

Covers a .npz with object arrays, `-o /proc/...`, `--cache-dir` on a file, `--target nosuch`, deeply nested
JSON in a bundle and in a layout index, and a full disk (a real small tmpfs; needs root, skipped otherwise).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

DEEP = "[" * 200_000 + "]" * 200_000


def _one_line(res, code: int, *needles: str) -> str:
    assert res.returncode == code, res.stderr[-3000:] + res.stdout[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "internal error" not in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _build(recipe: Path, *extra, out: Path | None = None):
    out = out or recipe.parent / "out"
    return run_cli("build", recipe, "--no-publish", "-o", out, *extra, cwd=recipe.parent), out


def test_npz_with_object_arrays_is_bad_input(tiny_recipe):
    np.savez(tiny_recipe.parent / "calib.npz", input=np.array([1, "a", None], dtype=object))
    res, out = _build(tiny_recipe)
    _one_line(res, 2, "calib.npz (data.calibration.path)", "Object arrays")
    assert not out.exists()


def test_output_under_proc_is_bad_input(tiny_recipe):
    res, _ = _build(tiny_recipe, out=Path("/proc/edgepack-test/bundle"))
    _one_line(res, 2, "/proc/edgepack-test/bundle (package.output)")
    assert "convert" not in res.stdout + res.stderr


def test_cache_dir_on_a_file_is_bad_input(tiny_recipe):
    f = tiny_recipe.parent / "a-file"
    f.write_text("x")
    res, out = _build(tiny_recipe, "--cache-dir", f)
    _one_line(res, 2, f"{f} (--cache-dir)", "not a directory")
    assert not out.exists()


@pytest.mark.parametrize("name, hint", [("nosuch", "its targets: ort"), ("orr", "did you mean 'ort'?")])
def test_unknown_target_fails_before_convert(tiny_recipe, name, hint):
    res, out = _build(tiny_recipe, "--target", name)
    _one_line(res, 2, f"--target {name}", hint)
    assert "convert" not in res.stdout + res.stderr and not out.exists()


@pytest.fixture
def pub_key(tmp_path) -> Path:
    res = run_cli("keygen", tmp_path / "k" / "key.pem")
    assert res.returncode == 0, res.stderr
    return tmp_path / "k" / "key.pub.pem"


def test_deeply_nested_bundle_manifest_is_a_bad_artifact(tmp_path, pub_key):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "edgepack.json").write_text(DEEP)
    _one_line(run_cli("verify", bundle, "--key", pub_key), 4, str(bundle), "nested too deeply")


def test_deeply_nested_layout_index_is_a_bad_artifact(tmp_path, pub_key):
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(DEEP)
    res = run_cli("pull", f"layout:{layout}:1.0.0", "-o", tmp_path / "out", "--key", pub_key)
    _one_line(res, 4, "nested too deeply")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (mount needs root: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_cache_disk_is_one_line_before_any_stage(tiny_recipe, small_tmpfs):
    res, out = _build(tiny_recipe, "--cache-dir", small_tmpfs / "cache")
    _one_line(res, 2, f"{small_tmpfs / 'cache'} (--cache-dir)", "MB free", "needs about")
    assert "convert" not in res.stdout + res.stderr and not out.exists()
    assert list(small_tmpfs.iterdir()) == []


def test_disk_full_while_writing_is_one_line_naming_the_path(tmp_path, small_tmpfs):
    fd = os.open(small_tmpfs / "fill", os.O_WRONLY | os.O_CREAT)  # fill the file system to the last block
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    res = run_cli("keygen", small_tmpfs / "keys" / "key.pem")
    _one_line(res, 2, "no space left on device", str(small_tmpfs), "MB free")
    assert not (small_tmpfs / "keys" / "key.pem").exists()

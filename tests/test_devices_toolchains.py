"""`edgepack devices check` and toolchain environments (issue 14 item 1): for the targets a device profile runs,
which toolchain each needs, whether this host has it (the running environment or a managed one) and the install
command when it does not; the local device's runtimes that live in a toolchain environment are probed there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent))
import testenvs  # noqa: E402


def _profile(tmp_path: Path, runtimes: list[str]) -> Path:
    p = tmp_path / "dev.yaml"
    p.write_text(f"name: here\ntransport: {{type: local}}\nruntimes: [{', '.join(runtimes)}]\n")
    return p


def _check(profile: Path, env: dict) -> tuple[dict, str]:
    """The real command's --json document, and the text the command prints for it."""
    from edgepack.devices.check import format_check

    res = run_cli("devices", "check", profile, "--json", env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    return info, format_check(info)


def test_missing_toolchains_are_named_with_their_install_command(tmp_path):
    """No managed environment and the running one never used: every toolchain a listed target needs is missing."""
    env = {"EDGEPACK_TOOLCHAINS_DIR": str(tmp_path / "none"), "EDGEPACK_TOOLCHAINS": "managed"}
    info, text = _check(_profile(tmp_path, ["onnxruntime", "executorch", "openvino", "coreml"]), env)
    rows = {r["toolchain"]: r for r in info["toolchains"]}
    assert set(rows) == {"executorch", "openvino", "coreml"}  # onnxruntime needs none
    for name, row in rows.items():
        assert row["installed"] is False and row["targets"] == [name], row
        assert row["install"] == f"edgepack toolchains install {name}" and "managed" in row["missing"], row
        assert f"toolchain:   {name:<12} not installed here: edgepack toolchains install {name}" in text, text
    assert "ONNX sources only" in rows["coreml"]["note"]
    # the local runner runs .pte programs in the executorch environment: absent here, so the device cannot run them
    assert "executorch" not in info["can_run_targets"] and "onnxruntime" in info["can_run_targets"]
    prob = [p for p in info["problems"] if "'executorch'" in p]
    assert len(prob) == 1 and "edgepack toolchains install executorch" in prob[0], info["problems"]


def test_local_runtime_probed_in_its_managed_environment(tmp_path):
    """The executorch toolchain installed (managed): its runtime is probed in that environment's Python, as a build's
    local validation runs it, and the toolchain row names the environment."""
    et = testenvs.ensure_toolchain("executorch")
    if et is None:
        pytest.skip("no Python the executorch lock allows on this machine")
    lock = json.loads((et / "toolchain.json").read_text())
    env = {"EDGEPACK_TOOLCHAINS": "managed"}  # conftest's EDGEPACK_TOOLCHAINS_DIR: the tests' cached environments
    info, text = _check(_profile(tmp_path, ["onnxruntime", "executorch"]), env)
    assert info["runtimes"]["executorch"] == lock["versions"]["executorch"], info["runtimes"]
    assert Path(info["runtime_envs"]["executorch"]) == et
    assert info["can_run_targets"] == ["executorch", "onnxruntime"] and info["problems"] == [], info
    (row,) = info["toolchains"]
    assert row["toolchain"] == "executorch" and row["installed"] and Path(row["environment"]) == et, row
    assert row["python"] == lock["python"] and row["versions"]["executorch"] == lock["versions"]["executorch"]
    assert f"toolchain:   executorch   {et.name} (Python {lock['python']})" in text, text
    assert f"(in {et})" in text

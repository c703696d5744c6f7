"""The Python API and the command's help: `python -m edgepack`, -h everywhere, an example in each command's help."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = [[], ["build"], ["schema"], ["keygen"], ["verify"], ["publish"], ["pull"], ["ls"], ["copy"], ["bench"],
            ["check"], ["devices"], ["devices", "check"]]


def _help(*args):
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True, timeout=120)


def test_python_m_edgepack_help():
    r = _help("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Usage: edgepack") and "build" in r.stdout


def test_dash_h_and_example_in_every_command():
    from click.testing import CliRunner

    from edgepack.cli import cli

    runner = CliRunner()
    for cmd in COMMANDS:
        if cmd == ["check"] and "check" not in cli.commands:
            continue
        short = runner.invoke(cli, [*cmd, "-h"])
        assert short.exit_code == 0, (cmd, short.output)
        assert short.output == runner.invoke(cli, [*cmd, "--help"]).output
        assert "Example:" in short.output and "  edgepack " in short.output.split("Example:")[1], cmd


def test_build_three_times_in_one_interpreter_with_progress(tiny_recipe, edgepack_home, tmp_path, caplog):
    import logging

    import edgepack

    events: list[dict] = []
    results = []
    with caplog.at_level(logging.INFO, logger="edgepack"):
        for k in range(3):
            recipe = tiny_recipe if k != 1 else tiny_recipe.parent  # a folder works too
            results.append(edgepack.build(recipe, output=tmp_path / f"out{k}", publish=False, quiet=True, progress=events.append))
    assert callable(edgepack.build)
    assert [r.exit_code for r in results] == [0, 0, 0] and all((r.bundle / "edgepack.json").is_file() for r in results)
    done = [e for e in events if e["event"] == "done"]
    assert [e["stage"] for e in done].count("convert") == 3
    assert {e["status"] for e in done if e["stage"] == "convert"} >= {"cached"}  # later calls reuse the cache
    assert {"event": "start", "stage": "package + sign"} in events
    assert any(r.name == "edgepack" and "convert" in r.getMessage() for r in caplog.records)

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

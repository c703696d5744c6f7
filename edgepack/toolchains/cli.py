"""`edgepack toolchains install NAME...` and `edgepack toolchains ls` (registered by edgepack/cli.py)."""

from __future__ import annotations

import json

import click


@click.group("toolchains")
def toolchains_group():
    """Toolchain environments: one virtual environment per heavy backend, made from the lock edgepack ships.

    \b
    Example:
      edgepack toolchains install tflite openvino
      edgepack toolchains ls"""


@toolchains_group.command("install")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Re-create an environment that is already installed.")
def install_cmd(names, force):
    """Create the environment of each toolchain under $EDGEPACK_HOME/toolchains/NAME-<lock digest>/.

    Uses uv when it is on PATH and works with this machine's pip index settings, pip otherwise; the lock's
    Python is the running one when it matches, else pyenv's or pythonX.Y on PATH.

    \b
    Example:
      edgepack toolchains install tflite"""
    from . import get
    from .env import install

    for name in names:
        get(name)  # every name checked before the first (slow) install
    for name in names:
        install(name, force=force, echo=click.echo)


@toolchains_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON on stdout.")
def ls_cmd(as_json):
    """Every toolchain: the environment that would run it (the running one when it satisfies the lock, or a
    managed one) and its versions, or the command that installs it.

    \b
    Example:
      edgepack toolchains ls --json"""
    from .env import format_listing, listing

    rows = listing()
    click.echo(json.dumps(rows, indent=2) if as_json else format_listing(rows))

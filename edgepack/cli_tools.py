"""`edgepack init` and `edgepack completion`: commands that help write and type the others.
Registered on the `edgepack` group by edgepack/cli.py."""

from __future__ import annotations

from pathlib import Path

import click

SHELLS = ("bash", "zsh", "fish")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Where to write the recipe (default: recipe.yaml beside the model).")
@click.option("--force", is_flag=True, help="Overwrite an existing recipe file.")
def init(model, output, force):
    """Write a commented starter recipe from a model file's inputs and outputs.

    Inputs (names, shapes, dtypes) are read from the file without running it: ONNX, TFLite, Keras
    (.keras), SavedModel. PyTorch files hold no shapes: the recipe says what to fill in. Targets:
    ONNX Runtime fp32 and int8 (dynamic), gates on cosine and size.

    \b
    Example:
      edgepack init model.onnx && edgepack check recipe.yaml
      edgepack init saved_model/ -o recipes/mine/recipe.yaml"""
    from .starter import recipe_shape, write_starter

    path, io = write_starter(model, output, force)
    ins = ", ".join(f"{t.name} {recipe_shape(t, k)} {t.dtype}" for k, t in enumerate(io.inputs)) if io.inputs else None
    click.echo(f"wrote {path} ({io.format}; inputs: {ins})" if ins else f"wrote {path} ({io.format})")
    if io.note:
        click.echo(f"note: {io.note} (the lines marked TODO)")
    click.echo(f"next: edgepack check {path}")


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the shell completion script for bash, zsh or fish.

    \b
    Example:
      edgepack completion bash > ~/.local/share/bash-completion/completions/edgepack
      edgepack completion zsh > "${fpath[1]}/_edgepack"
      edgepack completion fish > ~/.config/fish/completions/edgepack.fish"""
    from click.shell_completion import get_completion_class

    from .cli import cli

    cls = get_completion_class(shell)
    assert cls is not None  # click ships bash, zsh and fish
    click.echo(cls(cli, {}, "edgepack", "_EDGEPACK_COMPLETE").source())

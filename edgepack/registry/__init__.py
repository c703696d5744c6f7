"""Registries: push, pull and list bundles by reference.

``push``/``pull``/``list_tags`` dispatch on the reference kind through a static table:
``layout:PATH:TAG`` goes to ``registry/layout.py``; ``host/repo:tag`` goes to
``registry/remote.py`` (same three functions), which a later change adds.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from edgepack.errors import BadInputError
from edgepack.registry.refs import Ref, parse_ref

BACKENDS = {"layout": "edgepack.registry.layout", "remote": "edgepack.registry.remote"}


def _backend(ref: Ref):
    try:
        return importlib.import_module(BACKENDS[ref.kind])
    except ModuleNotFoundError as e:
        if e.name != BACKENDS[ref.kind]:
            raise
        raise BadInputError(
            f"{ref}: {ref.kind} registries are not supported by this edgepack version",
            hint="use a layout:PATH:TAG reference",
        ) from e


def push(bundle_dir: Path, ref: str | Ref) -> dict:
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    return _backend(ref).push(bundle_dir, ref)


def pull(ref: str | Ref, out_dir: Path, public_key: Path) -> dict:
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    return _backend(ref).pull(ref, out_dir, public_key)


def list_tags(ref: str | Ref | Path) -> list[dict]:
    """Tags of a registry: a ``layout:PATH`` / ``host/repo`` reference, or a layout folder path."""
    if isinstance(ref, Path):
        ref = Ref(kind="layout", path=ref)
    elif isinstance(ref, str):
        ref = parse_ref(ref, require_tag=False)
    backend = _backend(ref)
    return backend.list_tags(ref.path) if ref.kind == "layout" else backend.list_tags(ref)


__all__ = ["Ref", "parse_ref", "push", "pull", "list_tags"]

"""Registries: push, pull and list bundles by reference.

``push``/``pull``/``list_tags`` dispatch on the reference kind through a static table:
``layout:PATH:TAG`` goes to ``registry/layout.py``; ``host/repo:tag`` goes to
``registry/remote.py`` (same three functions). ``verify`` and ``copy`` work on both kinds
(docs/registry.md).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from edgepack.errors import BadInputError, EdgepackError
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


def push(bundle_dir: Path, ref: str | Ref, plain_http: bool = False) -> dict:
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if ref.kind == "remote":
        return _backend(ref).push(bundle_dir, ref, plain_http=plain_http)
    return _backend(ref).push(bundle_dir, ref)


def pull(ref: str | Ref, out_dir: Path, public_key, device=None, target: str | None = None, plain_http: bool = False) -> dict:
    """Fetch and verify a bundle; with ``device`` (a DeviceProfile) or ``target`` only that target.

    ``public_key`` is a PEM path or a ``sigcheck.Trust`` (certificate chain). Layout tags that
    hold a single-manifest bundle go through ``layout.pull``; everything else through ``fetch``.
    """
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if ref.kind == "layout" and device is None and target is None and isinstance(public_key, (str, Path)) and _single(ref):
        return _backend(ref).pull(ref, out_dir, public_key)
    from edgepack.registry import remote

    return remote.pull(ref, out_dir, public_key, device=device, target=target, plain_http=plain_http)


def _single(ref: Ref) -> bool:
    from edgepack.registry import layout

    root, desc = layout.resolve(ref)
    try:
        doc = json.loads(layout._read_blob(root, desc, str(ref)))
    except (EdgepackError, ValueError):
        return True  # layout.pull reports the problem
    return not (isinstance(doc, dict) and doc.get("mediaType") == layout.OCI_INDEX)


def verify(ref: str | Ref, public_key, plain_http: bool = False) -> dict:
    """Check a registry artifact's signature and layer digests without downloading its files."""
    from edgepack.registry import remote

    return remote.verify(parse_ref(ref) if isinstance(ref, str) else ref, public_key, plain_http=plain_http)


def copy(src: str | Ref, dst: str | Ref, plain_http: bool = False) -> dict:
    """Copy a bundle between layouts and remote registries with digests preserved."""
    from edgepack.registry import remote

    return remote.copy(src, dst, plain_http=plain_http)


def list_tags(ref: str | Ref | Path, plain_http: bool = False) -> list[dict]:
    """Tags of a registry: a ``layout:PATH`` / ``host/repo`` reference, or a layout folder path."""
    if isinstance(ref, Path):
        ref = Ref(kind="layout", path=ref)
    elif isinstance(ref, str):
        ref = parse_ref(ref, require_tag=False)
    backend = _backend(ref)
    return backend.list_tags(ref.path) if ref.kind == "layout" else backend.list_tags(ref, plain_http=plain_http)


__all__ = ["Ref", "parse_ref", "push", "pull", "list_tags", "verify", "copy"]

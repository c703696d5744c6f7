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
            f"{ref.kind} registries are not supported by this edgepack version",
            hint="use a layout:PATH:TAG reference", where=ref
        ) from e


def push(bundle_dir: Path, ref: str | Ref, plain_http: bool = False, trust=None, force: bool = False,
         timeout: float | None = None) -> dict:
    """Publish a signed bundle (one OCI form on every kind of registry: the per-target image index).

    ``trust`` (a public key path or ``sigcheck.Trust``): verify the signature with it before
    uploading; None checks the signed file list only (a build has just verified its signature).
    ``force`` moves an existing tag that holds other content (refused otherwise, exit 2)."""
    from edgepack.bundle.sigcheck import as_trust

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    _backend(ref)
    from edgepack.registry import remote

    return remote.push(bundle_dir, ref, plain_http=plain_http, trust=None if trust is None else as_trust(trust), force=force,
                       timeout=timeout)


def pull(ref: str | Ref, out_dir: Path, public_key, device=None, target: str | None = None, plain_http: bool = False,
         force: bool = False, timeout: float | None = None) -> dict:
    """Fetch and verify a bundle; with ``device`` (a DeviceProfile) or ``target`` only that target.

    ``public_key`` is a PEM path or a ``sigcheck.Trust`` (certificate chain). Layout tags that
    hold an older single-manifest bundle go through ``layout.pull``; everything else through
    ``fetch``. ``force`` replaces a non-empty ``out_dir`` edgepack did not write.
    """
    ref = parse_ref(ref) if isinstance(ref, str) else ref
    if ref.kind == "layout" and device is None and target is None and isinstance(public_key, (str, Path)) and _single(ref):
        return _backend(ref).pull(ref, out_dir, public_key, force=force)
    from edgepack.registry import remote

    return remote.pull(ref, out_dir, public_key, device=device, target=target, plain_http=plain_http, force=force,
                       timeout=timeout)


def _single(ref: Ref) -> bool:
    from edgepack.registry import layout

    root, desc = layout.resolve(ref)
    try:
        doc = json.loads(layout._read_blob(root, desc, str(ref)))
    except (EdgepackError, ValueError):
        return True  # layout.pull reports the problem
    return not (isinstance(doc, dict) and doc.get("mediaType") == layout.OCI_INDEX)


def verify(ref: str | Ref, public_key, plain_http: bool = False, timeout: float | None = None) -> dict:
    """Check a registry artifact's signature, name/version and layer digests without downloading its files."""
    from edgepack.registry import remote

    return remote.verify(parse_ref(ref) if isinstance(ref, str) else ref, public_key, plain_http=plain_http, timeout=timeout)


def copy(src: str | Ref, dst: str | Ref, public_key, plain_http: bool = False, force: bool = False,
         timeout: float | None = None) -> dict:
    """Copy a bundle between layouts and remote registries with digests preserved; the source is
    verified with ``public_key`` (path or ``Trust``) before anything is uploaded."""
    from edgepack.registry import remote

    return remote.copy(src, dst, public_key, plain_http=plain_http, force=force, timeout=timeout)


def list_tags(ref: str | Ref | Path, plain_http: bool = False) -> list[dict]:
    """Tags of a registry: a ``layout:PATH`` / ``host/repo`` reference, or a layout folder path."""
    if isinstance(ref, Path):
        ref = Ref(kind="layout", path=ref)
    elif isinstance(ref, str):
        ref = parse_ref(ref, require_tag=False)
    backend = _backend(ref)
    return backend.list_tags(ref.path) if ref.kind == "layout" else backend.list_tags(ref, plain_http=plain_http)


__all__ = ["Ref", "parse_ref", "push", "pull", "list_tags", "verify", "copy"]

"""Resolve 'module:function' entrypoints relative to a recipe's directory."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from .errors import BadInputError


def resolve(spec: str, base_dir: Path, field: str) -> Callable:
    module_name, _, func_name = spec.partition(":")
    base = str(Path(base_dir).resolve())
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, SyntaxError, anything the module raises on import
        raise BadInputError(
            f"cannot import module '{module_name}' ({e.__class__.__name__}: {e})",
            hint=f"the module is looked up in {base} and on PYTHONPATH", where=field
        ) from e
    fn = getattr(module, func_name, None)
    if fn is None or not callable(fn):
        raise BadInputError(f"module '{module_name}' has no function '{func_name}'", where=field)
    return fn


def module_file(spec: str, base_dir: Path) -> Path | None:
    """The source file behind an entrypoint's module (for digests), without importing it."""
    module_name = spec.partition(":")[0]
    base = str(Path(base_dir).resolve())
    if base not in sys.path:
        sys.path.insert(0, base)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if found is None or not found.origin or not Path(found.origin).is_file():
        return None
    return Path(found.origin)

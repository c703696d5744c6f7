"""YAML for recipes and device profiles: bounded size and alias expansion, duplicate keys refused.

``yaml.safe_load`` builds no arbitrary objects, but a few lines of nested aliases ("billion laughs")
expand to billions of nodes in everything that walks the data afterwards, and a repeated key silently
keeps the last value. ``load`` composes the node graph first (aliases stay shared there, so composing
is linear in the text), counts the nodes the document expands to and checks every mapping for repeated
keys, then constructs the Python data. Errors name ``file:line:col``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import RecipeError

MAX_BYTES = 1 << 20  # 1 MiB: recipes and profiles are hand-written; data lives in .npy/.npz files
MAX_NODES = 100_000  # nodes after alias expansion
MAX_DEPTH = 100  # nested collections: a hand-written file never comes close; the check must not rely on the recursion limit
# libyaml's parser when PyYAML was built with it (the wheels are): the same nodes and marks, ~10x faster to compose
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _at(path: Path, node) -> str:
    return f"{path}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _check(root, path: Path) -> None:
    """Expanded size (memoized per shared node) within MAX_NODES; no recursive aliases; no duplicate keys."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node, depth: int = 0) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if depth > MAX_DEPTH:
            raise RecipeError(f"the YAML is nested too deeply (more than {MAX_DEPTH} levels)", hint="flatten the structure", where=_at(path, node))
        if key in active:
            raise RecipeError("recursive YAML alias", hint="an alias may not refer to the node that contains it", where=_at(path, node))
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in seen:
                        first = seen[k.value]
                        raise RecipeError(f"duplicate key '{k.value}' (first at line {first.start_mark.line + 1})",
                                          hint="keep one of the two; YAML would silently use the last", where=_at(path, k))
                    seen[k.value] = k
                total += size(k, depth + 1) + size(v, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                total += size(v, depth + 1)
        active.discard(key)
        if total > MAX_NODES:
            raise RecipeError(f"the YAML expands to more than {MAX_NODES} nodes (nested aliases?)",
                              hint="write the values out, or use fewer nested anchors and aliases", where=_at(path, node))
        sizes[key] = total
        return total

    size(root)


def load(text: str, path: Path):
    """Parse ``text`` (the file at ``path``) as YAML within the limits above; RecipeError on bad YAML."""
    if len(text.encode()) > MAX_BYTES:
        raise RecipeError(f"{len(text.encode())} bytes, more than the {MAX_BYTES}-byte limit for a YAML file",
                          hint="keep data in .npy/.npz files referenced by path", where=path)
    loader = LOADER(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check(root, path)
        return loader.construct_document(root)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "nesting depth" in problem:  # libyaml's own limit, where PyYAML is built with one
            raise RecipeError("the YAML is nested too deeply", hint="flatten the structure", where=where) from e
        raise RecipeError(f"malformed YAML: {problem}", hint="fix the YAML syntax at that position", where=where) from e
    except RecursionError as e:
        raise RecipeError("the YAML is nested too deeply", hint="flatten the structure", where=path) from e
    finally:
        loader.dispose()


def read(path: Path) -> str:
    """The file's text, refusing one over MAX_BYTES before reading it whole."""
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise RecipeError(f"{size} bytes, more than the {MAX_BYTES}-byte limit for a YAML file",
                          hint="keep data in .npy/.npz files referenced by path", where=path)
    return path.read_text()

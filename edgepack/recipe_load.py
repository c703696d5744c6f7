"""Recipe loading: YAML (size and alias limits, duplicate keys refused) -> a validated Recipe, with the
line/column of every field kept so each error reads ``recipe.yaml:12:5 targets[1].precision: ... (hint)``.

The models live in edgepack/recipe.py, which re-exports these names (import them from there).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from . import safe_yaml
from .errors import RecipeError
from .recipe_evaluate import METRIC_TAGS, metric_model_for
from .recipe_targets import TARGET_SPECS, TargetType, spec_for

if TYPE_CHECKING:  # edgepack/recipe.py imports this module at its end: import it lazily here
    from .recipe import Recipe


class LoadedRecipe:
    """A validated recipe plus where it came from (for relative paths and error positions)."""

    def __init__(self, recipe: Recipe, path: Path, text: str):
        self.recipe = recipe
        self.path = path
        self.dir = path.parent
        self.text = text

    def resolve(self, rel: str) -> Path:
        p = Path(os.path.expanduser(rel))
        return p if p.is_absolute() else (self.dir / p)

    def where(self, *loc) -> str:
        """'file:line:col' for a field path, for errors raised after validation."""
        positions = self.__dict__.get("_positions")
        if positions is None:  # parsed once per recipe, not once per call (a build asks ~10 times)
            positions = self.__dict__["_positions"] = _positions(self.text)
        return _format_where(self.path, positions, tuple(loc))


def _positions(text: str) -> dict[tuple, tuple[int, int]]:
    """Map each YAML path (keys and indexes) to its 1-based (line, column)."""
    out: dict[tuple, tuple[int, int]] = {}
    try:
        root = yaml.compose(text, Loader=safe_yaml.LOADER)
    except yaml.YAMLError:
        return out

    def walk(node, path):
        out.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = k.value
                out[path + (key,)] = (k.start_mark.line + 1, k.start_mark.column + 1)
                walk_value(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk_value(v, path + (i,))

    def walk_value(v, path):
        if isinstance(v, (yaml.MappingNode, yaml.SequenceNode)):
            if path not in out:
                out[path] = (v.start_mark.line + 1, v.start_mark.column + 1)
            walk(v, path)
        else:
            out.setdefault(path, (v.start_mark.line + 1, v.start_mark.column + 1))

    if root is not None:
        walk(root, ())
    return out


def _format_loc(loc: tuple) -> str:
    s = ""
    for part in loc:
        if isinstance(part, int):
            s += f"[{part}]"
        else:
            s += ("." if s else "") + str(part)
    return s or "(top level)"


def _format_where(path: Path, positions: dict, loc: tuple) -> str:
    probe = loc
    while probe and probe not in positions:
        probe = probe[:-1]
    line, col = positions.get(probe, (1, 1))
    return f"{path}:{line}:{col} {_format_loc(loc)}"


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at ``loc`` (to suggest the nearest valid key)."""
    from .recipe import Recipe

    model: Any = Recipe
    node = data
    ann = None
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if ann is not None:  # a list of a union (optimize passes): the item picks its model
                model = _inner_model(ann, node) or model
            continue
        fields = model.model_fields
        name = "pass_" if part == "pass" else part
        if name not in fields:
            return None
        node = node.get(part) if isinstance(node, dict) else None
        ann = fields[name].annotation
        model = _inner_model(ann, node)
    return model


def _inner_model(ann, node):
    import typing

    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if isinstance(node, dict) and _TARGET_MARK in str(ann):
        return spec_for(node)  # a target: the spec model of its 'type'
    if isinstance(node, dict) and ("type" in node or "fn" in node) and metric_model_for(node) is not None and "FnMetric" in str(ann):
        return metric_model_for(node)
    args = typing.get_args(ann)
    if isinstance(node, dict) and "pass" in node:  # optimize passes: pick the model named by 'pass'
        for a in args:
            if isinstance(a, type) and issubclass(a, BaseModel) and "pass_" in a.model_fields:
                if node["pass"] in typing.get_args(a.model_fields["pass_"].annotation):
                    return a
    for a in args:
        m = _inner_model(a, node)
        if m is not None:
            return m
    return None


_TARGET_MARK = f"{TARGET_SPECS[TargetType.ONNXRUNTIME].__module__}.{TARGET_SPECS[TargetType.ONNXRUNTIME].__qualname__}"
_TARGET_TAGS = {t.value for t in TargetType} | {repr(t) for t in TargetType}


def _clean_loc(loc: tuple) -> tuple:
    """Drop pydantic's union/discriminator tags ('quantize', 'function-after[...]', a target's type after
    targets[i]) from a location."""
    out: list = []
    for part in loc:
        if isinstance(part, str) and (part in ("quantize", "prune", "distill") or part in METRIC_TAGS or "[" in part or part.startswith("function-")):
            continue
        if isinstance(part, str) and part in _TARGET_TAGS and len(out) >= 2 and out[-2] == "targets" and isinstance(out[-1], int):
            continue
        out.append("pass" if part == "pass_" else part)
    return tuple(out)


_FIELD_FIRST = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*): (.+)$", re.S)


def _field_named_first(loc: tuple, msg: str, data: Any) -> tuple[tuple, str]:
    """A validator that checks fields together names one first ("options.io_dtype: only applies ..."):
    the error's position moves to that field when the model at ``loc`` has it."""
    m = _FIELD_FIRST.match(msg)
    if not m:
        return loc, msg
    path = tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", m.group(1)) if p)  # targets[0].options -> targets, 0, options
    owner = _model_at(loc, data)
    if owner is None or path[0] not in owner.model_fields:
        return loc, msg
    return loc + path, m.group(2)


def _tag_error(err: Mapping[str, Any], loc: tuple) -> tuple[tuple, str, str | None]:
    """A target (or pass) whose 'type' names no model: where, message and a did-you-mean hint."""
    node = err.get("input")
    key = err.get("ctx", {}).get("discriminator", "'type'").strip("'")
    key = "pass" if key == "pass_" else key
    bad = node.get(key) if isinstance(node, dict) else None
    if loc and loc[0] == "targets":
        choices = [t.value for t in TargetType]
    else:
        choices = [str(c).strip(" '") for c in err.get("ctx", {}).get("expected_tags", "").split(",") if c.strip()]
    if bad is None:
        return loc, f"'{key}' is required: one of {', '.join(choices)}", None
    close = difflib.get_close_matches(str(bad), choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'?" if close else None
    return loc + (key,), f"'{bad}' is not a {key}: use one of {', '.join(choices)}", hint


def parse_recipe(text: str, path: Path) -> Recipe:
    data = safe_yaml.load(text, path)  # size and alias-expansion limits, duplicate keys refused
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1:1: a recipe is a YAML mapping with at least 'name', 'version' and 'model'")
    try:
        from .recipe import Recipe

        return Recipe.model_validate(data)
    except ValidationError as e:
        positions = _positions(text)
        err = e.errors()[0]
        loc = _clean_loc(tuple(err["loc"]))
        hint = None
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, msg, hint = _tag_error(err, loc)
        elif err["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1], data)
            if owner is not None:
                valid = ["pass" if k == "pass_" else k for k in owner.model_fields]
                close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(valid)}"
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] in ("enum", "literal_error"):
            msg = err["msg"].replace("Input should be", "must be")
            bad = err.get("input")
            if isinstance(bad, str):
                choices = [str(c).strip("'") for c in err.get("ctx", {}).get("expected", "").replace(" or ", ", ").split(", ")]
                close = difflib.get_close_matches(bad, choices, n=1, cutoff=0.5)
                if close:
                    hint = f"did you mean '{close[0]}'?"
        else:
            msg = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            if err["type"] == "value_error":
                loc, msg = _field_named_first(loc, msg, data)
        where = _format_where(path, positions, loc)
        extra = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise RecipeError(f"{msg}{extra}", hint=hint, where=where) from e


def load_recipe(path: str | os.PathLike) -> LoadedRecipe:
    path = Path(path)
    if path.is_dir():  # a recipe folder: its recipe.yaml
        path = path / "recipe.yaml"
    try:
        text = safe_yaml.read(path)
    except FileNotFoundError as e:
        raise RecipeError("recipe file not found", hint="check the path", where=path) from e
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read the recipe ({e.__class__.__name__})", where=path) from e
    lr = LoadedRecipe(parse_recipe(text, path), path, text)
    from .validate_plan import check_evaluation

    check_evaluation(lr.recipe, lr.where, base_dir=lr.dir)
    from .optimize import check_metric_names

    check_metric_names(lr)  # accuracy_aware.metric names an `evaluate:` metric or a builtin
    return lr


def json_schema() -> str:
    from .recipe import Recipe

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
              **Recipe.model_json_schema(by_alias=True)}
    return json.dumps(schema, indent=2)


SCHEMA_ID = "https://edgepack.dev/schema/recipe.json"

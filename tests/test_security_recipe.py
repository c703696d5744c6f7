"""Issue 11 finding 5: a recipe cannot make edgepack hang or blow up, and duplicate keys are errors.

The 9-line alias bomb below expands to 9**9 (387 million) strings; edgepack counts the nodes it would
expand to while composing (shared alias nodes are counted once per use, not built) and stops at
safe_yaml.MAX_NODES. The subprocess timeout only keeps a regression from hanging the suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

from edgepack import safe_yaml
from edgepack.errors import RecipeError
from edgepack.recipe import parse_recipe

BOMB = """name: bomb
version: 1.0.0
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
model: *g
"""


def _one_error_line(res, code=2) -> str:
    assert res.returncode == code, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[0]


def test_alias_bomb_is_refused_at_load(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(BOMB)
    res = run_cli("build", recipe, "-o", tmp_path / "out", timeout=120)
    line = _one_error_line(res)
    assert "expands to more than" in line and "recipe.yaml:" in line
    assert not (tmp_path / "out").exists()


def test_a_few_aliases_are_fine():
    text = "name: x\nversion: 1.0.0\nmodel: &m {format: onnx, path: m.onnx, inputs: [{name: a, shape: [1, 4]}]}\n"
    assert parse_recipe(text, Path("r.yaml")).model.path == "m.onnx"


def test_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match="recursive YAML alias"):
        safe_yaml.load("a: &a [1, *a]\n", Path("r.yaml"))


def test_duplicate_key_names_both_lines(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: one\nversion: 1.0.0\nmodel:\n  format: onnx\n  path: m.onnx\n  format: tflite\n"
                      "  inputs: [{name: a, shape: [1, 4]}]\n")
    line = _one_error_line(run_cli("build", recipe, "-o", tmp_path / "out", timeout=120))
    assert "recipe.yaml:6:3" in line and "duplicate key 'format'" in line and "first at line 4" in line


def test_oversized_recipe_is_refused_before_reading(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    with recipe.open("w") as f:
        f.write("name: big\nversion: 1.0.0\n")
        f.write("# padding\n" * (safe_yaml.MAX_BYTES // 10 + 1))
    line = _one_error_line(run_cli("build", recipe, timeout=120))
    assert "byte limit" in line and str(recipe) in line


def test_deeply_nested_yaml_is_a_recipe_error():
    with pytest.raises(RecipeError, match="nested too deeply|expands to more than"):
        safe_yaml.load("a: " + "[" * 2_000 + "]" * 2_000 + "\n", Path("r.yaml"))


def test_device_profile_gets_the_same_limits(tmp_path):
    profile = tmp_path / "dev.yaml"
    profile.write_text("name: dev\nname: other\nruntimes: [onnxruntime]\n")
    res = run_cli("devices", "check", profile, timeout=120)
    line = _one_error_line(res)
    assert "dev.yaml:2:1" in line and "duplicate key 'name'" in line

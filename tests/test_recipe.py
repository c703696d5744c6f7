"""Recipe loading: typed, frozen, unknown keys rejected, errors at file:line:col with the field path."""

import pytest

from edgepack.errors import RecipeError
from edgepack.recipe import QuantizeMode, TargetType, json_schema, load_recipe, parse_recipe

GOOD = """\
name: tiny
version: 1.0.0
model:
  format: onnx
  path: model.onnx
  inputs:
    - name: input
      shape: [batch, 1, 8, 8]
optimize:
  - pass: quantize
    mode: dynamic
targets:
  - type: onnxruntime
"""


def test_good_recipe_is_typed_and_frozen(tmp_path):
    r = parse_recipe(GOOD, tmp_path / "r.yaml")
    assert r.targets[0].type is TargetType.ONNXRUNTIME
    assert r.optimize[0].mode is QuantizeMode.DYNAMIC
    with pytest.raises(Exception):
        r.name = "other"


def _err(text, tmp_path):
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, tmp_path / "r.yaml")
    return e.value.one_line()


def test_unknown_key_points_at_line_and_suggests(tmp_path):
    msg = _err(GOOD.replace("    mode: dynamic", "    mode: dynamic\n    per_chanel: true"), tmp_path)
    assert "r.yaml:12:5 optimize[0].per_chanel: unknown key" in msg
    assert "did you mean 'per_channel'" in msg


def test_unknown_top_level_key(tmp_path):
    msg = _err(GOOD + "target:\n  - type: onnxruntime\n", tmp_path)
    assert ":14:1 target: unknown key" in msg and "did you mean 'targets'" in msg


def test_wrong_type_and_enum_suggestion(tmp_path):
    msg = _err(GOOD.replace("type: onnxruntime", "type: onnxruntim"), tmp_path)
    assert "targets[0].type" in msg and "did you mean 'onnxruntime'" in msg
    msg = _err(GOOD.replace("[batch, 1, 8, 8]", "[batch, 1, 8, -3]"), tmp_path)
    assert "model.inputs[0].shape" in msg and "must be positive" in msg
    msg = _err(GOOD.replace("version: 1.0.0", "version: [1]"), tmp_path)
    assert ":2:" in msg and "version" in msg


def test_malformed_yaml(tmp_path):
    msg = _err(GOOD.replace("  format: onnx", "  format: [onnx"), tmp_path)
    assert "r.yaml:" in msg and "malformed YAML" in msg


def test_missing_required_and_duplicate_targets(tmp_path):
    assert "model: required field is missing" in _err("name: a\nversion: '1'\n", tmp_path)
    msg = _err(GOOD + "  - type: onnxruntime\n", tmp_path)
    assert "two targets are named 'onnxruntime'" in msg


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_schema_is_json_with_passes_and_targets():
    import json

    schema = json.loads(json_schema())
    assert schema["additionalProperties"] is False
    assert "targets" in schema["properties"] and "optimize" in schema["properties"]

"""Typed targets (edgepack/recipe_targets.py): each type's precision and options checked when the recipe
loads, at the field's line, with did-you-mean; the JSON Schema holds each type's options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepack.errors import RecipeError
from edgepack.recipe import Target, TargetType, json_schema, parse_recipe
from edgepack.recipe_targets import TARGET_SPECS

HEAD = "name: m\nversion: '1'\nmodel: {format: onnx, path: m.onnx, inputs: [{name: input, shape: [1, 1, 8, 8]}]}\ntargets:\n  - type: onnxruntime\n"


def _error(target: dict) -> str:
    with pytest.raises(RecipeError) as e:
        parse_recipe(HEAD + f"  - {json.dumps(target)}\n", Path("recipe.yaml"))
    assert "\n" not in e.value.one_line()
    return e.value.one_line()


@pytest.mark.parametrize("target, expect", [
    ({"type": "tflte"}, "recipe.yaml:6:6 targets[1].type: 'tflte' is not a type: use one of onnxruntime, tflite, openvino, coreml, tensorrt, web"),
    ({"name": "x"}, "targets[1]: 'type' is required: one of onnxruntime"),
    ({"type": "tflite", "precison": "int8"}, "targets[1].precison: unknown key (did you mean 'precision'?)"),
    ({"type": "onnxruntime", "options": {"ort_format": "yes"}}, "targets[1].options.ort_format: must be a valid boolean"),
    ({"type": "onnxruntime", "options": {"ort_optimization": "runtime"}}, "targets[1].options.ort_optimization: only applies with ort_format: true"),
    ({"type": "onnxruntime", "options": {"ort_fromat": True}}, "targets[1].options.ort_fromat: unknown key (did you mean 'ort_format'?)"),
    ({"type": "openvino", "precision": "int8-dynamic"}, "targets[1].precision: must be 'fp32', 'fp16', 'int8' or 'int4'"),
    ({"type": "openvino", "options": {"inference_precision": "fp32"}}, "targets[1].options.inference_precision: must be 'f32', 'bf16' or 'f16'"),
    ({"type": "openvino", "options": {"subset_size": 0}}, "targets[1].options.subset_size: must be greater than 0"),
    ({"type": "tensorrt", "precision": "int4"}, "targets[1].precision: must be 'fp32', 'fp16' or 'int8'"),
    ({"type": "tensorrt", "options": {"workspace": 1}}, "targets[1].options.workspace: unknown key (did you mean 'workspace_mb'?)"),
    ({"type": "tensorrt", "options": {"dla_core": -1}}, "targets[1].options.dla_core: must be greater than or equal to 0"),
    ({"type": "tensorrt", "options": {"profile": {"input": {"min": [4, 1, 8, 8], "opt": [2, 1, 8, 8], "max": [8, 1, 8, 8]}}}},
     "targets[1].options.profile.input: needs min <= opt <= max"),
    ({"type": "tensorrt", "options": {"profile": {"input": {"min": [1, 1, 8, 8], "max": [8, 1, 8, 8]}}}},
     "targets[1].options.profile.input.opt: required field is missing"),
    ({"type": "tensorrt", "options": {"builder_optimization_level": 9}}, "targets[1].options.builder_optimization_level: must be less than or equal to 5"),
    ({"type": "tensorrt", "options": {"timeout_s": 0}}, "targets[1].options.timeout_s: must be greater than 0"),
    ({"type": "tensorrt", "precision": "fp32", "options": {"dla_core": 0}}, "targets[1].options.dla_core: the DLA runs fp16 or int8 only"),
])
def test_bad_target_names_the_field(target, expect):
    assert expect in _error(target)


def test_two_field_check_points_at_the_field():
    line = _error({"type": "tflite", "options": {"io_dtype": "int8"}})
    assert line.startswith("recipe.yaml:6:") and "targets[1].options.io_dtype: only applies to precision int8" in line


def test_every_recipe_target_in_the_repo_loads():
    """Targets written in recipes/, tests/ and docs/ keep loading (their options are typed now)."""
    import re

    import yaml

    root = Path(__file__).resolve().parents[1]
    seen = 0
    for p in [*root.glob("recipes/**/*.yaml"), *root.glob("tests/**/*.yaml")]:
        data = yaml.safe_load(p.read_text())
        for t in (data.get("targets") or []) if isinstance(data, dict) else []:
            Target(**t)
            seen += 1
    for block in re.findall(r"```yaml\n(.*?)```", (root / "docs/recipe.md").read_text(), re.S):
        data = yaml.safe_load(block)
        for t in (data.get("targets") or []) if isinstance(data, dict) and isinstance(data.get("targets"), list) else []:
            if isinstance(t, dict) and "type" in t:
                Target(**t)
                seen += 1
    assert seen >= 5


def test_defaults_and_cache_key_hold_only_given_options():
    t = Target(type=TargetType.TFLITE, precision="int8", options={"io_dtype": "uint8"})
    assert t.options.xnnpack is True and t.options.io_dtype == "uint8"
    assert t.options_set() == {"io_dtype": "uint8"}
    assert Target(type="onnxruntime").options_set() == {}


def test_schema_has_each_types_options():
    schema = json.loads(json_schema())
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["$id"]
    item = schema["properties"]["targets"]["items"]
    assert item["discriminator"]["propertyName"] == "type"
    assert set(item["discriminator"]["mapping"]) == {t.value for t in TARGET_SPECS}
    defs = schema["$defs"]
    assert defs["TFLiteOptions"]["additionalProperties"] is False
    assert defs["TFLiteOptions"]["properties"]["io_dtype"]["description"]
    assert set(defs["TensorRTOptions"]["properties"]) >= {"workspace_mb", "dla_core", "profile", "shapes"}
    for name in ("OnnxRuntimeOptions", "TFLiteOptions", "OpenVINOOptions", "CoreMLOptions", "TensorRTOptions"):
        assert all(p.get("description") for p in defs[name]["properties"].values()), name


def test_schema_is_a_valid_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(json_schema())
    jsonschema.Draft202012Validator.check_schema(schema)
    ok = {"name": "m", "version": "1", "model": {"format": "onnx", "path": "m.onnx", "inputs": [{"name": "x", "shape": [1]}]},
          "targets": [{"type": "tflite", "precision": "int8", "options": {"io_dtype": "uint8"}}]}
    jsonschema.Draft202012Validator(schema).validate(ok)
    bad = {**ok, "targets": [{"type": "tflite", "options": {"io_type": "uint8"}}]}
    assert not jsonschema.Draft202012Validator(schema).is_valid(bad)


def test_every_schema_property_has_a_description():
    schema = json.loads(json_schema())
    props = [(name, p, v) for name, d in schema["$defs"].items() for p, v in (d.get("properties") or {}).items()]
    props += [("Recipe", p, v) for p, v in schema["properties"].items()]
    assert [f"{n}.{p}" for n, p, v in props if not v.get("description")] == []

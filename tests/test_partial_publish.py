"""Partial publish is a choice: a build where a target failed writes and signs its bundle (exit 5) but publishes
the version tag only with `--allow-partial` or `publish.allow_partial: true`."""

from __future__ import annotations

import json

from conftest import TINY_RECIPE, run_cli

# an FP16 model makes ORT's QOperator quantizer raise inside itself: that pass fails, the `input: fp32` target ships
PARTIAL = TINY_RECIPE.replace(
    "optimize:\n  - pass: quantize\n    mode: static\n",
    "optimize:\n  - {pass: quantize, mode: fp16}\n  - {pass: quantize, mode: static, format: qoperator}\n",
).replace("gates:\n", "  - type: onnxruntime\n    name: ort-fp32\n    input: fp32\ngates:\n")


def _tags(registry):
    index = registry / "index.json"
    if not index.exists():
        return []
    return [m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in json.loads(index.read_text())["manifests"]]


def test_partial_build_is_signed_not_published_unless_allowed(tiny_recipe, edgepack_home, tmp_path):
    tiny_recipe.write_text(PARTIAL)
    reg, out = tmp_path / "reg" / "tiny", tmp_path / "out"
    res = run_cli("build", tiny_recipe, "-o", out, "--registry", f"layout:{reg}", cwd=tiny_recipe.parent)
    assert res.returncode == 5, res.stderr[-2000:]
    assert "not published: " in res.stdout and "--allow-partial" in res.stdout and "published: layout" not in res.stdout
    assert "0.1.0" not in _tags(reg)
    pub = tmp_path / "pub.pem"
    pub.write_bytes((edgepack_home / "keys" / "signing-key.pub.pem").read_bytes())
    assert run_cli("verify", out, "--key", pub).returncode == 0  # written and signed all the same

    res = run_cli("build", tiny_recipe, "-o", out, "--registry", f"layout:{reg}", "--allow-partial", "--json", cwd=tiny_recipe.parent)
    assert res.returncode == 5, res.stderr[-2000:]
    doc = json.loads(res.stdout)
    assert doc["status"] == "partial" and doc["published"] and doc["not_published"] is None
    assert "0.1.0" in _tags(reg)


def test_the_publish_decision_and_the_recipe_switch(tiny_recipe):
    from edgepack.pipeline import partial_refusal
    from edgepack.recipe import load_recipe

    tiny_recipe.write_text(PARTIAL + "publish:\n  allow_partial: true\n")
    assert load_recipe(tiny_recipe).recipe.publish.allow_partial is True
    assert partial_refusal(["compile x: failed"], allowed=True) is None
    assert partial_refusal([], allowed=False) is None
    assert "not published" in partial_refusal(["compile x: failed"], allowed=False)

"""report.json's summary block, timings side file, model sizes, model card and HTML escaping (no build needed)."""

import html.parser
import json

import pytest
import yaml

from edgepack import model_card, report_html
from edgepack.artifact import Artifact
from edgepack.report_docs import write_beside
from edgepack.report_summary import finalize, load_timings, samples_for, size_split

EVIL = '<img src=x onerror=alert(1)>&"'


def _dev(p50, metric, status="ok", samples=(1.0, 2.0, 3.0)):
    failures = [] if status == "ok" else [{"message": "slow @ pi: cosine low"}]
    return {"status": status, "latency": {"p50_ms": p50, "p90_ms": p50 * 1.2}, "noisy": False, "samples_ms": list(samples),
            "accuracy": {"metrics": {"acc": {"value": metric, "higher_is_better": True}}},
            "gates": {"passed": status == "ok", "checked": ["min_cosine"], "failures": failures}}


def _report():
    return {
        "schema_version": 1, "name": "m", "version": "1", "source": {"format": "onnx", "sha256": "ab" * 32},
        "evaluate": {"primary": "acc", "declared": True, "reference": {"acc": {"value": 0.9, "higher_is_better": True}}},
        "targets": {
            "fast": {"type": "onnxruntime", "precision": "int8", "status": "ok", "size_bytes": 100,
                     "size": {"model_bytes": 60, "extras_bytes": 40}, "devices": {"pi": _dev(1.0, 0.85), "x86": _dev(3.0, 0.85)}},
            EVIL: {"type": "openvino", "precision": "fp32", "status": "ok", "size_bytes": 300,
                   "devices": {"pi": _dev(2.0, 0.9), "x86": {**_dev(0.5, 0.9), "threads_runs": {"1": {"samples_ms": [9.0]}, "4": {"samples_ms": [4.0]}}}}},
            "slow": {"type": "tflite", "precision": "int8", "status": "gates-failed", "size_bytes": 50,
                     "devices": {"pi": _dev(0.1, 0.1, "gates-failed")}},
            "broken": {"type": "coreml", "status": "failed", "error": "compile broken: no", "devices": {}},
        },
        "gates": {"config": {"min_cosine": 0.9}, "passed": False, "failures": [{"message": "slow @ pi: cosine low"}]},
        "failures": ["compile broken: no"], "stages": [{"name": "convert", "stage": "convert", "cached": False, "seconds": 0.1}],
        "card": {"summary": f"Detects {EVIL}", "license": "apache-2.0", "authors": ["Team A"], "limitations": "Not for | tables"},
        "toolchain": {"onnx": "1"},
    }


def test_summary_first_best_per_device_and_samples_in_their_own_file():
    final, timings = finalize(_report())
    assert list(final)[0] == "summary" and final["timings"] == "timings.json"
    s = final["summary"]
    assert s["primary_metric"] == "acc" and s["fp32_metric"] == 0.9 and s["status"] == "gates-failed"
    # the gates-failed target is fastest on pi but not eligible; the failed one has no devices
    assert s["best_per_device"]["pi"]["target"] == "fast" and s["best_per_device"]["x86"]["target"] == EVIL
    assert s["targets"]["fast"]["model_bytes"] == 60 and s["targets"]["fast"]["extras_bytes"] == 40
    assert s["targets"][EVIL]["model_bytes"] == 300 and s["failed_targets"] == ["slow", "broken"]
    assert s["targets"]["fast"]["devices"]["pi"] == {"status": "ok", "p50_ms": 1.0, "p90_ms": 1.2, "noisy": False, "metric": 0.85}
    assert s["targets"]["slow"]["devices"]["pi"]["reason"] == "slow @ pi: cosine low"  # the gate's message
    assert "samples_ms" not in json.dumps(final)
    assert timings["targets"][EVIL]["x86"] == {"samples_ms": [1.0, 2.0, 3.0], "threads_runs": {"1": [9.0], "4": [4.0]}}
    assert samples_for(final, timings, "fast", "pi") == [1.0, 2.0, 3.0]
    assert samples_for(_report(), None, "fast", "pi") == [1.0, 2.0, 3.0]  # an older report with samples inline


def test_failed_build_files_beside_the_bundle(tmp_path):
    final = write_beside(tmp_path / "out.report.json", _report())
    on_disk = json.loads((tmp_path / "out.report.json").read_text())
    assert on_disk == final and list(on_disk)[0] == "summary" and on_disk["timings"] == "out.timings.json"
    assert load_timings(tmp_path / "out.report.json")["targets"]["fast"]["pi"]["samples_ms"] == [1.0, 2.0, 3.0]
    assert "<svg" in (tmp_path / "out.report.html").read_text()


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.texts = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.texts.append(data)


def test_html_escapes_user_names_and_has_no_script_or_network():
    final, timings = finalize(_report())
    page = report_html.render(final, timings)
    assert EVIL not in page and "<img" not in page and "<script" not in page.lower()
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    p = _Collect()
    p.feed(page)
    assert "img" not in p.tags and p.tags.count("svg") == 2  # latency + Pareto
    assert any(EVIL in t for t in p.texts)  # shown as text, intact
    # a box per (target, device) with samples (x86 of EVIL: one per thread count), a circle per Pareto point
    assert page.count('class="mark"') == 6 + 5 and "(4 thr)" in page


def test_model_card_front_matter_sections_and_annotations():
    final, _ = finalize(_report())
    text = model_card.render(final, {"targets": {"fast": {"runtime": "onnxruntime", "validated_on": ["pi", "x86"]}}})
    _, fm, body = text.split("---\n", 2)
    meta = yaml.safe_load(fm)
    assert meta["name"] == "m" and meta["license"] == "apache-2.0" and meta["source_digest"] == "sha256:" + "ab" * 32
    assert [t["id"] for t in meta["targets"]] == ["fast", EVIL, "slow", "broken"] and meta["targets"][0]["validated_on"] == ["pi", "x86"]
    assert {(m["target"], m["device"]): m["value"] for m in meta["metrics"]}[("fast", "pi")] == 0.85
    assert f"Detects {EVIL}" in body and "## Limitations\n\nNot for | tables" in body and "FAILED" in body
    assert "| fast | onnxruntime | int8 |" in body and "compile" not in meta
    ann = model_card.oci_annotations(final)
    assert ann["org.opencontainers.image.description"] == f"Detects {EVIL}"
    assert ann["org.opencontainers.image.licenses"] == "apache-2.0" and ann["org.opencontainers.image.authors"] == "Team A"
    assert json.loads(ann["dev.edgepack.best-per-device"])["pi"]["target"] == "fast"


def test_generated_card_summary_without_card():
    r = _report()
    del r["card"]
    final, _ = finalize(r)
    assert model_card.card_summary(final).startswith("m 1, built by edgepack: 2 of 4 target(s) built and passed their gates (fast, ") and "license: unknown" in model_card.render(final, {})


@pytest.mark.parametrize("fmt,files,model", [
    ("onnx+ort", {"model.onnx": 10, "model.ort": 7, "model.required_operators.config": 3}, ["model.ort"]),
    ("openvino-ir", {"model.xml": 5, "model.bin": 20}, ["model.bin", "model.xml"]),
    ("tensorrt-onnx", {"model.onnx": 30, "build_spec.json": 2}, ["model.onnx"]),
    ("mlpackage", {"Manifest.json": 1, "Data/weights.bin": 9}, ["Data/weights.bin", "Manifest.json"]),
])
def test_model_size_apart_from_the_folder_extras(tmp_path, fmt, files, model):
    for rel, n in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * n)
    s = size_split(Artifact(tmp_path, fmt))
    assert s["model_files"] == model and s["model_bytes"] == sum(files[f] for f in model)
    assert s["total_bytes"] == sum(files.values()) and s["extras_bytes"] == s["total_bytes"] - s["model_bytes"]


CARD_RECIPE = """\
name: m
version: '1'
model: {format: onnx, path: m.onnx, inputs: [{name: x, shape: [1, 3]}]}
card:
  summary: Reads digits.
  license: mit
  {extra}
"""


def test_recipe_card_is_typed_and_in_the_schema(tmp_path):
    from edgepack.errors import EdgepackError
    from edgepack.recipe import json_schema, parse_recipe

    r = parse_recipe(CARD_RECIPE.replace("{extra}", "intended_use: Sorting mail."), tmp_path / "recipe.yaml")
    assert r.card.license == "mit" and r.card.intended_use == "Sorting mail." and r.card.limitations is None
    with pytest.raises(EdgepackError, match=r"recipe.yaml:7:3 card.licence"):
        parse_recipe(CARD_RECIPE.replace("{extra}", "licence: typo"), tmp_path / "recipe.yaml")
    card = json.loads(json_schema())["$defs"]["Card"]
    assert card["additionalProperties"] is False and {"intended_use", "limitations", "training_data", "license"} <= set(card["properties"])

"""The openvino target for text-generation ships openvino-genai's folder (issue 15 item 2): a stateful IR (the
cache as state, a beam_idx input), the tokenizer and detokenizer as OpenVINO IR and the config files; the
validation runs it with openvino-genai's own LLMPipeline (CPU, greedy), whose tokens equal PyTorch FP32's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hfmodels

pytest.importorskip("openvino_genai", reason="openvino-genai is in the openvino extra (pip install -e '.[test]')")

RECIPE = """\
name: tiny-llama-ov
version: 0.1.0
model:
  format: hf
  path: {folder}
  task: text-generation
generation:
  prompts: prompts.txt
  prompt_lengths: [16, 48]
  new_tokens: 8
  runs: 1
targets:
  - {{type: openvino, name: ov-fp32, precision: fp32}}
  - {{type: openvino, name: ov-int4, precision: int4}}
evaluate:
  - type: token_agreement
  - type: greedy_match
gates:
  metrics:
    token_agreement: {{min: 0.2}}
devices: [local]
"""
GENAI_FILES = {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_tokenizer.bin",
               "openvino_detokenizer.xml", "openvino_detokenizer.bin", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "genai_config.json"}


@pytest.fixture(scope="module")
def llama() -> Path:
    return hfmodels.llama_folder()  # built once into the tests' cache (read-only)


@pytest.fixture(scope="module")
def built(llama, tmp_path_factory):
    """One build: the openvino target at fp32 and int4, validated on the local device (LLMPipeline)."""
    from conftest import run_cli

    d = tmp_path_factory.mktemp("ovgenai")
    hfmodels.write_texts(d)
    (d / "recipe.yaml").write_text(RECIPE.format(folder=llama))
    out = d / "bundle"
    r = run_cli("build", d / "recipe.yaml", "--output", out, "--no-publish", env={"EDGEPACK_HOME": str(d / "home")})  # its own cache
    assert r.returncode == 0, r.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text())


def test_the_bundle_has_openvino_genai_layout_with_a_stateful_model(built):
    import openvino as ov

    out, report = built
    for tid in ("ov-fp32", "ov-int4"):
        folder = out / "targets" / tid / "openvino"
        assert GENAI_FILES <= {p.name for p in folder.iterdir()}, sorted(p.name for p in folder.iterdir())
        model = ov.Core().read_model(str(folder / "openvino_model.xml"))
        assert {p.get_any_name() for p in model.inputs} == {"input_ids", "attention_mask", "position_ids", "beam_idx"}
        assert [o.get_any_name() for o in model.outputs] == ["logits"]
        reads = [op for op in model.get_ops() if op.get_type_name() == "ReadValue"]
        assert len(reads) == 4 and len(model.get_sinks()) == 4  # 2 layers x (key, value) as state
        assert list(reads[0].get_input_partial_shape(0))[1:] == [ov.Dimension(2), ov.Dimension(0), ov.Dimension(16)]
        compile_rec = report["targets"][tid]["compile"]
        assert compile_rec["stateful"] and compile_rec["tokenizer"]["matches_hf"]
        gen = json.loads((folder / "generation_config.json").read_text())
        assert gen["eos_token_id"] == 2 and json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
    assert report["targets"]["ov-int4"]["compile"]["nncf"] == {"compress_weights": "int4_sym", "group_size": 32, "ratio": 1.0, "all_layers": True,
                                                                "algorithm": "rtn", "data_aware": False}
    assert report["targets"]["ov-int4"]["size_bytes"] < report["targets"]["ov-fp32"]["size_bytes"] / 2


def test_llm_pipeline_validates_fp32_with_pytorch_tokens_and_int4_is_reported(built):
    _, report = built
    fp32, int4 = (report["targets"][t]["devices"]["local"] for t in ("ov-fp32", "ov-int4"))
    assert fp32["runtime"] == int4["runtime"] == "openvino-genai"
    m32, m4 = fp32["accuracy"]["metrics"], int4["accuracy"]["metrics"]
    assert m32["token_agreement"]["value"] >= 0.99, m32  # edgepack's loop on the stateful IR, teacher-forced
    assert m32["greedy_match"]["value"] == 1.0, m32  # LLMPipeline's greedy continuations = PyTorch FP32's
    assert 0 <= m4["token_agreement"]["value"] <= 1 and "metrics.token_agreement" in int4["gates"]["checked"]
    for rec in (fp32, int4):  # TTFT and decode tokens/s per prompt length, measured by LLMPipeline
        lengths = rec["generation"]["lengths"]
        assert sorted(lengths, key=int) == ["16", "48"]
        assert all(v["prompt_tokens"] == int(k) and v["new_tokens"] == 8 and v["ttft_ms"]["p50"] > 0 and v["decode_tokens_per_s"] > 0
                   for k, v in lengths.items())


def test_the_folder_runs_from_text_in_openvino_genai(built, llama):
    """The folder alone (tokenizer IRs included) serves LLMPipeline from text; its tokens are edgepack's loop's on the
    same IR (which the build found equal to PyTorch's: greedy_match 1.0)."""
    import openvino_genai as og
    from tokenizers import Tokenizer

    from edgepack.devices.genrunner import OvDecoder, OvGenaiDecoder, greedy

    folder = str(built[0] / "targets" / "ov-fp32" / "openvino")
    text = hfmodels.sentences(1, seed=7)[0]
    hf_ids = Tokenizer.from_file(str(llama / "tokenizer.json")).encode(text).ids
    tok = og.Tokenizer(folder)
    assert tok.encode(text).input_ids.data.tolist()[0] == hf_ids and hf_ids[0] == 1  # <s> added, as the HF tokenizer does
    pipe = og.LLMPipeline(folder, "CPU", ATTENTION_BACKEND="SDPA", INFERENCE_PRECISION_HINT="f32", KV_CACHE_PRECISION="f32")
    res = pipe.generate([text], og.GenerationConfig(max_new_tokens=6, do_sample=False, ignore_eos=True))
    want = greedy(OvDecoder(folder), hf_ids, 6)[0]
    assert res.texts[0] == tok.decode(want) and res.texts[0].strip()
    assert OvGenaiDecoder(folder).generate(hf_ids, 6)[0] == want


@pytest.fixture(scope="module")
def onnx_decoder(llama, tmp_path_factory) -> Path:
    """The KV-cache ONNX decoder the build compiles, exported once for the in-process compiles below."""
    from edgepack.ingest.hf_decoder import export, load_causal_lm

    path = tmp_path_factory.mktemp("onnxdec") / "model.onnx"
    model, config = load_causal_lm(llama, "test")
    export(model, config, path, 18)
    return path


def _agreement(folder: str, fp32: str) -> float:
    """Teacher-forced next-token agreement of the IR in ``folder`` with the FP32 IR on 3 random 12-token prompts."""
    from edgepack.devices.genrunner import OvDecoder, teacher_forced

    prompts = [list(map(int, np.random.default_rng(i).integers(3, 300, 12))) for i in range(3)]
    q, f = OvDecoder(folder), OvDecoder(fp32)
    same = [a == b for p in prompts for a, b in zip(teacher_forced(q, p)[0], teacher_forced(f, p)[0])]
    return sum(same) / len(same)


def test_int8_weight_compression_in_the_genai_layout(built, llama, onnx_decoder, tmp_path):
    """int8 (NNCF INT8_ASYM, which takes no all_layers option): compiled in-process from the same ONNX decoder; it
    stays close to the FP32 IR and LLMPipeline runs it."""
    from types import SimpleNamespace

    from edgepack.artifact import Artifact
    from edgepack.devices.genrunner import OvDecoder, OvGenaiDecoder, greedy
    from edgepack.targets.openvino_decoder import compile_decoder

    res = compile_decoder(SimpleNamespace(precision="int8"), Artifact(onnx_decoder, "onnx"), Artifact(llama, "hf"), tmp_path)
    assert res.record["nncf"] == {"compress_weights": "int8_asym"} and res.record["stateful"]
    folder, fp32 = str(tmp_path / "openvino"), str(built[0] / "targets" / "ov-fp32" / "openvino")
    assert _agreement(folder, fp32) >= 0.9
    prompt = list(map(int, np.random.default_rng(0).integers(3, 300, 12)))
    assert OvGenaiDecoder(folder).generate(prompt, 4)[0] == greedy(OvDecoder(folder), prompt, 4)[0]


def test_int4_awq_calibrates_on_the_builds_tokens(built, llama, onnx_decoder, tmp_path):
    """int4 with options.weight_compression.algorithm awq (+ scale estimation): NNCF's data-aware compression on the
    build's calibration tokens (its frozen tokens file: the prompts), in-process; the record names the method, the
    weights differ from the build's rtn IR, and both IRs' agreement with FP32 is measured."""
    from types import SimpleNamespace

    from edgepack.artifact import Artifact
    from edgepack.recipe_targets import WeightCompression
    from edgepack.targets.openvino_decoder import compile_decoder

    out = built[0]
    tokens = sorted((out.parent / "home").rglob("tokens-*.json"))
    assert len(tokens) == 1, tokens
    calib = json.loads(tokens[0].read_text())["calibration"]
    stage = SimpleNamespace(precision="int4", weight_compression=WeightCompression(algorithm="awq", scale_estimation=True))
    res = compile_decoder(stage, Artifact(onnx_decoder, "onnx"), Artifact(llama, "hf"), tmp_path, Artifact(tokens[0], "tokens"))
    nncf = res.record["nncf"]
    assert nncf["algorithm"] == "awq" and nncf["data_aware"] and nncf["awq"] and nncf["scale_estimation"], nncf
    assert nncf["calibration_samples"] == min(32, len(calib)) > 0 and nncf["calibration_tokens"] == sum(map(len, calib[:32]))
    rtn = out / "targets" / "ov-int4" / "openvino"
    assert (tmp_path / "openvino" / "openvino_model.bin").read_bytes() != (rtn / "openvino_model.bin").read_bytes()
    assert res.record["ops"] == json.loads((out / "report.json").read_text())["targets"]["ov-int4"]["compile"]["ops"]  # same graph, other weights
    fp32 = str(out / "targets" / "ov-fp32" / "openvino")
    agree = {"awq": _agreement(str(tmp_path / "openvino"), fp32), "rtn": _agreement(str(rtn), fp32)}
    print(f"int4 teacher-forced agreement with FP32: {agree}")
    assert agree["awq"] >= 0.5, agree


def test_weight_compression_is_for_int4_text_generation_only(tmp_path):
    """One line at the field: weight_compression on another precision, on a tensor model, or a typo'd algorithm."""
    from edgepack.errors import RecipeError
    from edgepack.recipe import parse_recipe

    base = "name: t\nversion: '1'\nmodel: {format: hf, path: m, task: text-generation}\ngeneration: {prompts: p.txt}\ntargets:\n"
    ok = parse_recipe(base + "  - {type: openvino, precision: int4, options: {weight_compression: {algorithm: awq}}}\n", tmp_path / "r.yaml")
    assert ok.targets[0].options.weight_compression.algorithm == "awq"
    from edgepack.targets import TargetContext, make_target

    stage = make_target(ok.targets[0], TargetContext("r.yaml:6:5 targets[0]", tmp_path, ok.model))
    assert stage.uses == ("model", "source", "tokens") and stage.config()["options"] == {"weight_compression": {"algorithm": "awq"}}
    with pytest.raises(RecipeError, match=r"r.yaml:6:\d+ targets\[0\].options.weight_compression: only applies to precision int4"):
        parse_recipe(base + "  - {type: openvino, precision: int8, options: {weight_compression: {algorithm: awq}}}\n", tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"r.yaml:6:\d+ targets\[0\].options.weight_compression.algorithm: must be 'rtn' or 'awq'"):
        parse_recipe(base + "  - {type: openvino, precision: int4, options: {weight_compression: {algorithm: gptq}}}\n", tmp_path / "r.yaml")
    with pytest.raises(RecipeError, match=r"weight_compression.scale_estimation: only applies with algorithm: awq"):
        parse_recipe(base + "  - {type: openvino, precision: int4, options: {weight_compression: {scale_estimation: true}}}\n", tmp_path / "r.yaml")
    tensor = "name: t\nversion: '1'\nmodel: {format: hf, path: m, task: feature-extraction}\ntargets:\n"
    with pytest.raises(RecipeError, match=r"r.yaml:5:\d+ targets\[0\].options.weight_compression: applies to text-generation models only"):
        parse_recipe(tensor + "  - {type: openvino, precision: int4, options: {weight_compression: {algorithm: rtn}}}\n", tmp_path / "r.yaml")

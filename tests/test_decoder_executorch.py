"""ExecuTorch for text-generation (issue 15 item 2): the tiny random Llama-style decoder from a local Hugging Face
folder -> a static-KV-cache torch.export program (build env) -> `.pte` with XNNPACK in the executorch toolchain,
fp32 and int4 (torchao 8da4w), generated greedily by the device runner (devices/genrunner.py EtDecoder) through
the ExecuTorch runtime, token metrics against the FP32 PyTorch model, gated. One build per module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import testenvs  # noqa: E402
from hfmodels import llama_folder, write_texts  # noqa: E402

pytestmark = pytest.mark.slow

RECIPE = """\
name: tiny-llama-et
version: 0.1.0
model:
  format: hf
  path: {folder}
  task: text-generation
generation:
  prompts: prompts.txt
  perplexity: wiki.txt
  prompt_lengths: [16, 64]
  new_tokens: 8
  runs: 2
targets:
  - {{type: executorch, name: et-fp32}}
  - {{type: executorch, name: et-int4, precision: int4}}
evaluate:
  - type: token_agreement
  - type: greedy_match
  - type: perplexity
gates:
  metrics:
    token_agreement: {{min: {min_agreement}}}
devices: [local]
"""


def _cli(home: Path, *args):
    """The real `edgepack build` with one EDGEPACK_HOME for the module (its stage cache: the rebuild is all hits)."""
    from conftest import REPO, run_cli

    return run_cli(*args, env={"EDGEPACK_HOME": str(home), "PYTHONPATH": str(REPO), "EDGEPACK_TOOLCHAINS_DIR": str(testenvs.TOOLCHAINS_DIR)})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if testenvs.ensure_toolchain("executorch") is None:
        pytest.skip("no Python the executorch lock allows")
    tmp = tmp_path_factory.mktemp("et-decoder")
    folder = llama_folder(layers=1)  # one decoder layer: XNNPACK lowers each delegate separately (most of the test's time)
    d = tmp / "r"
    write_texts(d)
    recipe = d / "recipe.yaml"
    recipe.write_text(RECIPE.format(folder=folder, min_agreement=0.2))
    out = tmp / "bundle"
    r = _cli(tmp / "home", "build", recipe, "--output", out, "--no-publish", "--jobs", "2")  # the two compiles side by side
    assert r.returncode == 0, r.stderr[-3000:]
    return {"recipe": recipe, "out": out, "tmp": tmp, "folder": folder,
            "report": json.loads((out / "report.json").read_text())}


def test_fp32_pte_agrees_with_pytorch_and_reports_timing(built):
    report, out = built["report"], built["out"]
    conv = report["conversion"]["record"]["torch_program"]
    assert conv["layout"] == "static-kv-mutable-buffers" and conv["max_context"] == 256
    assert max(conv["max_abs_diff"].values()) < 1e-4  # the exported program vs the Hugging Face model, prefill + decode
    t = report["targets"]["et-fp32"]
    comp = t["compile"]
    assert comp["lowering"] == "xnnpack" and comp["delegation"]["delegated_fraction"] > 0.5, comp["delegation"]
    assert comp["sample_check"]["max_abs_diff"] < 1e-4 and comp["sample_check"]["argmax_agreement"] == 1.0
    dev = t["devices"]["local"]
    assert dev["runtime"] == "executorch"
    m = dev["accuracy"]["metrics"]
    assert m["token_agreement"]["value"] >= 0.99, m  # the .pte vs PyTorch FP32, teacher-forced
    assert m["greedy_match"]["value"] >= 0.8, m
    assert m["perplexity"]["value"] == pytest.approx(m["perplexity"]["reference"], rel=1e-3)
    for name in ("et-fp32", "et-int4"):  # TTFT and decode tokens/s per prompt length
        rec = report["targets"][name]["devices"]["local"]
        lengths = rec["generation"]["lengths"]
        assert sorted(lengths, key=int) == ["16", "64"]
        assert all(v["prompt_tokens"] == int(k) and v["new_tokens"] == 8 and v["ttft_ms"]["p50"] > 0 and v["decode_tokens_per_s"] > 0
                   for k, v in lengths.items())
        assert rec["memory"]["peak_rss_mb"] > 0
    folder = out / "targets" / "et-fp32" / "executorch"
    cfg = json.loads((folder / "decoder.json").read_text())
    assert cfg["max_context"] == 256 and cfg["num_hidden_layers"] == 1 and cfg["eos_token_id"] == 2
    assert (folder / "model.pte").is_file() and (folder / "tokenizer.json").is_file()


def test_int4_is_quantized_reported_and_gated(built):
    report = built["report"]
    t = report["targets"]["et-int4"]
    q = t["compile"]["quantization"]
    assert q["weights"] == "int4" and q["quantized_layers"] == q["linear_layers"] == 8  # 1 layer x 7 + lm_head
    assert t["compile"]["delegation"]["delegated_fraction"] > 0.5
    sizes = {n: (built["out"] / "targets" / n / "executorch" / "model.pte").stat().st_size for n in ("et-fp32", "et-int4")}
    assert sizes["et-int4"] < 0.6 * sizes["et-fp32"], sizes  # embeddings stay float; the linears shrink ~6x
    dev = t["devices"]["local"]
    a4 = dev["accuracy"]["metrics"]["token_agreement"]["value"]
    a32 = report["targets"]["et-fp32"]["devices"]["local"]["accuracy"]["metrics"]["token_agreement"]["value"]
    assert 0 <= a4 <= 1 and "metrics.token_agreement" in dev["gates"]["checked"]
    # a gate int4 cannot meet: exit 3, the line names the int4 target (every stage is a cache hit)
    strict = (a4 + a32) / 2 if a4 < a32 else 1.01
    recipe = built["recipe"]
    recipe.write_text(recipe.read_text().replace("{min: 0.2}", f"{{min: {strict:.6f}}}"))
    r = _cli(built["tmp"] / "home", "build", recipe, "--output", built["tmp"] / "strict", "--no-publish")
    assert r.returncode == 3, r.stderr[-2000:]
    assert "et-int4" in r.stderr and "token_agreement" in r.stderr


def test_runner_loop_reuses_the_cache_across_prompts(built):
    """The program's cache is its own state: a second prompt at input_pos 0 gives the same logits as a fresh load
    (the positions after it are masked), and a decode step equals the prefill of the longer sequence."""
    import subprocess

    py = testenvs.ensure_toolchain("executorch") / "bin" / "python"
    folder = built["out"] / "targets" / "et-fp32" / "executorch"
    code = (
        "import sys, json, numpy as np; sys.path.insert(0, sys.argv[2]);"
        "from edgepack.devices.runtimes import _import_et_runtime; _import_et_runtime();"
        "from edgepack.devices.genrunner import EtDecoder;"
        "d = EtDecoder(sys.argv[1]); ids = np.arange(3, 15, dtype=np.int64)[None];"
        "a = d.forward(ids, None, 0)[0]; d.forward(ids[:, ::-1].copy(), None, 0); b = d.forward(ids, None, 0)[0];"
        "d.forward(ids[:, :11], None, 0); c = d.forward(ids[:, 11:], None, 11)[0];"
        "print(json.dumps([float(np.abs(a - b).max()), float(np.abs(c[0, -1] - a[0, -1]).max())]))"
    )
    r = subprocess.run([str(py), "-c", code, str(folder), str(Path(__file__).parent.parent)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    again, step = json.loads(r.stdout.strip().splitlines()[-1])
    assert again < 1e-5 and step < 1e-4


def test_int4_is_refused_for_other_models(tmp_path):
    """precision int4 is the decoder's torchao 8da4w: on any other model the recipe is refused at its field."""
    from edgepack.errors import RecipeError
    from edgepack.recipe import parse_recipe

    text = ("name: t\nversion: '1'\nmodel: {format: pytorch, entrypoint: 'nets:tiny', weights: w.pt, inputs: [{name: x, shape: [1, 3]}]}\n"
            "targets: [{type: executorch, precision: int4}]\n")
    with pytest.raises(RecipeError, match=r"targets\[0\]\.precision: int4 .* is for text-generation models"):
        parse_recipe(text, tmp_path / "r.yaml")
    assert parse_recipe(text.replace("int4", "int8"), tmp_path / "r.yaml").targets[0].precision == "int8"

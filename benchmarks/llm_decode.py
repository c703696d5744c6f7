"""Decoder generation speed: TTFT and decode tokens/s per runtime and prompt length, fp32 vs int4.

    python benchmarks/llm_decode.py [--hidden 256] [--layers 4] [--lengths 16,128] [--new-tokens 32] [--runs 5]
                                    [--runtimes onnxruntime,onnxruntime-genai,openvino-genai,executorch] [--threads 1]

Writes a random Llama-style Hugging Face folder (tests/hfmodels.py, nothing downloaded), then runs the real
`edgepack build` once per runtime (targets fp32 and int4: for ONNX Runtime MatMulNBits RTN, block 32; for
openvino-genai the openvino target, NNCF INT4_SYM group 32, run by its LLMPipeline; for executorch the executorch
target, an XNNPACK .pte with torchao 8da4w, group 32, run through the ExecuTorch runtime) with greedy generation on the
local device, and prints per runtime and length: TTFT p50/p90, decode tokens/s, the
int4/fp32 ratios, token agreement of int4 with PyTorch and peak RSS (all from report.json).
onnxruntime-genai needs its toolchain (`edgepack toolchains install genai`); a runtime whose environment is
missing is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

RECIPE = """\
name: llm-decode
version: 0.1.0
model: {{format: hf, path: {folder}, task: text-generation}}
generation:
  prompts: prompts.txt
  prompt_lengths: [{lengths}]
  new_tokens: {new_tokens}
  runs: {runs}
  runtime: {runtime}
optimize: [{optimize}]
targets:
{targets}
evaluate:
  - type: token_agreement
devices: [{device}]
"""

DEVICE = """\
name: bench-local
transport: {{type: local}}
runtimes: [onnxruntime, openvino, executorch]
benchmark: {{threads: {threads}}}
"""


# runtime -> (generation.runtime, fp32 target, int4 target); ONNX Runtime's int4 is the quantize pass's model
TARGETS = {"onnxruntime": ("onnxruntime", "{type: onnxruntime, name: fp32, input: fp32}", "{type: onnxruntime, name: int4}"),
           "onnxruntime-genai": ("onnxruntime-genai", "{type: onnxruntime, name: fp32, input: fp32}", "{type: onnxruntime, name: int4}"),
           "openvino-genai": ("onnxruntime", "{type: openvino, name: fp32}", "{type: openvino, name: int4, precision: int4}"),
           "executorch": ("onnxruntime", "{type: executorch, name: fp32}", "{type: executorch, name: int4, precision: int4}")}


def build(d: Path, folder: Path, runtime: str, a) -> dict | str:
    d.mkdir(parents=True)
    import hfmodels

    hfmodels.write_texts(d, prompts=4)
    (d / "device.yaml").write_text(DEVICE.format(threads=a.threads))
    (d / "recipe.yaml").write_text(RECIPE.format(folder=folder, lengths=a.lengths, new_tokens=a.new_tokens, runs=a.runs,
                                                 runtime=TARGETS[runtime][0], device="device.yaml",
                                                 optimize="" if runtime.startswith("openvino") or runtime == "executorch"
                                                 else "{pass: quantize, mode: int4, algorithm: rtn, block_size: 32}",
                                                 targets="".join(f"  - {t}\n" for t in TARGETS[runtime][1:]).rstrip("\n")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "edgepack.cli", "build", str(d / "recipe.yaml"), "--output", str(d / "out"),
                        "--no-publish", "--jobs", "1"], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["failed"])[-1]
    return json.loads((d / "out" / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lengths", default="16,128")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runtimes", default=",".join(TARGETS))
    a = p.parse_args()
    import hfmodels

    with tempfile.TemporaryDirectory(prefix="llm-decode-") as tmp:
        tmp = Path(tmp)
        folder = hfmodels.make_llama(tmp / "model", vocab=1000, layers=a.layers, hidden=a.hidden)
        print(f"model: random Llama, hidden {a.hidden}, {a.layers} layers; new tokens {a.new_tokens}, {a.runs} runs, {a.threads} thread(s)")
        print(f"{'runtime':<18} {'target':<9} {'len':>4} {'ttft p50':>9} {'ttft p90':>9} {'tok/s':>8} {'agree':>6} {'rss MB':>7}")
        for runtime in a.runtimes.split(","):
            rep = build(tmp / runtime, folder, runtime, a)
            if isinstance(rep, str):
                print(f"{runtime:<18} not run: {rep}")
                continue
            recs = {t: rep["targets"][t]["devices"]["bench-local"] for t in ("fp32", "int4")}
            for t, rec in recs.items():
                agree = rec["accuracy"]["metrics"]["token_agreement"]["value"]
                for n, v in sorted(rec["generation"]["lengths"].items(), key=lambda kv: int(kv[0])):
                    print(f"{runtime:<18} {t:<9} {n:>4} {v['ttft_ms']['p50']:>8.2f}ms {v['ttft_ms']['p90']:>7.2f}ms "
                          f"{v['decode_tokens_per_s']:>8.1f} {agree:>6.3f} {rec['memory']['peak_rss_mb']:>7.1f}")
            for n in recs["fp32"]["generation"]["lengths"]:
                f, q = recs["fp32"]["generation"]["lengths"][n], recs["int4"]["generation"]["lengths"][n]
                print(f"{runtime:<18} int4/fp32 at {n}: ttft {q['ttft_ms']['p50'] / f['ttft_ms']['p50']:.2f}x, "
                      f"tokens/s {q['decode_tokens_per_s'] / f['decode_tokens_per_s']:.2f}x; sizes "
                      f"{rep['targets']['int4']['size_bytes'] / rep['targets']['fp32']['size_bytes']:.2f}x")


if __name__ == "__main__":
    main()

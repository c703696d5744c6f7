"""ExecuTorch for text-generation models: the static-KV-cache decoder program -> ``.pte`` (XNNPACK).

The source is the convert's ``decoder_program/`` (ingest/hf_decoder_et.py: program.pt2, decoder.json,
tokenizer/), loaded in the executorch toolchain's interpreter. Precisions (as ExecuTorch's own LLM export):

    fp32   lowered as exported
    int8   8da8w: int8 weights per output channel; activations quantized to int8 per token at run time
    int4   8da4w: int4 weights in groups of ``group_size`` along the input; activations as int8

Weights are quantized by torchao (``Int8DynamicActivationIntxWeightConfig``) on the program's linear layers
(its ``aten.linear`` calls are put back as ``nn.Linear`` modules, quantized, and the module is exported again
with the same dynamic sequence length); XNNPACK runs them as its dynamically quantized fully connected
kernels. The embedding stays float. The cache update (``index_put`` on the mutable buffers) runs on the
portable kernels. Checked after lowering: the ``.pte`` through the ExecuTorch runtime against the FP32
program on a prefill and a decode step (fp32 within the model's tolerance; quantized: recorded).

The folder (``executorch/``): model.pte, decoder.json (the layout the device runner reads), tokenizer files.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import StageResult
from ..errors import StageError

DECODER_PRECISIONS = ("fp32", "int8", "int4")
EXAMPLE_SEQ = 3


def compile_decoder(stage, source: Artifact, workdir: Path) -> StageResult:
    import torch

    from . import executorch_lower as et

    src = Path(source.path)
    cfg = json.loads((src / "decoder.json").read_text())
    fp32 = torch.export.load(str(src / "program.pt2"))
    precision = stage.precision
    record: dict = {"precision": precision, "exporter": "torch.export (static KV cache in mutable buffers)", "layout": cfg["layout"]}
    ep = fp32
    if precision in ("int8", "int4"):
        ep, record["quantization"] = quantize_weights(fp32, cfg, 4 if precision == "int4" else 8, stage.opts["group_size"])
    program, lowering = et.lower(ep, use_xnnpack=stage.opts["partitioner"] == "xnnpack")
    record.update(lowering)
    folder = workdir / "executorch"
    folder.mkdir()
    pte = folder / "model.pte"
    record["operators"] = et.write_program(program, pte, hint="use precision fp32, or drop this target")
    record["sample_check"] = sample_check(pte, fp32, cfg, precision, stage.ctx.model.tolerance)
    (folder / "decoder.json").write_text(json.dumps({**cfg, "precision": precision, "file": "model.pte",
                                                     **({"quantization": record["quantization"]} if "quantization" in record else {})},
                                                    indent=2, sort_keys=True) + "\n")
    for f in sorted((src / "tokenizer").iterdir()):
        shutil.copyfile(f, folder / f.name)
    record["size_bytes"] = pte.stat().st_size
    meta = {"runtime": "executorch", "precision": precision, "layout": "executorch-decoder",
            "delegated_fraction": lowering["delegation"]["delegated_fraction"], "files": sorted(p.name for p in folder.iterdir())}
    return StageResult({"artifact": Artifact(folder, "executorch-decoder", meta=meta)}, record)


def _example(cfg: dict):
    import torch

    seq = torch.export.Dim("seq", min=1, max=int(cfg["max_seq"]))
    return (torch.zeros((1, EXAMPLE_SEQ), dtype=torch.int64), torch.tensor([0], dtype=torch.int64)), ({1: seq}, None)


def quantize_weights(ep, cfg: dict, bits: int, group_size: int):
    """torchao 8da{bits}w on the program's linear layers: (the program exported again, record)."""
    import torch
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig, quantize_

    gm = ep.module()
    linears = linears_to_modules(gm)
    granularity = PerGroup(group_size) if bits == 4 else PerAxis(0)
    fits = [name for name, lin in linears.items() if bits == 8 or lin.in_features % group_size == 0]
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4 if bits == 4 else torch.int8, weight_granularity=granularity)
    quantize_(gm, config, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn in fits)
    example, dynamic = _example(cfg)
    try:
        with torch.no_grad():
            out = torch.export.export(gm, example, dynamic_shapes=dynamic, strict=False)
    except Exception as e:
        raise StageError(f"torch.export of the int{bits} decoder failed: {e.__class__.__name__}: {str(e).splitlines()[0][:240] if str(e) else ''}",
                         hint="use precision fp32, or rerun with --verbose") from e
    rec = {"method": "torchao Int8DynamicActivationIntxWeightConfig (ExecuTorch's 8da%dw)" % bits, "weights": f"int{bits}",
           "granularity": f"per group of {group_size}" if bits == 4 else "per output channel", "activations": "int8, dynamic per token",
           "linear_layers": len(linears), "quantized_layers": len(fits), "skipped": sorted(set(linears) - set(fits))}
    return out, rec


def linears_to_modules(gm) -> dict:
    """Put each ``aten.linear(x, weight[, bias])`` of an unlifted program back as an ``nn.Linear`` submodule
    (what torchao's ``quantize_`` works on); returns {submodule name: module}."""
    import torch

    modules: dict = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.linear.default:
            continue
        x, w, b = node.args[0], node.args[1], (node.args[2] if len(node.args) > 2 else None)
        if getattr(w, "op", None) != "get_attr" or (b is not None and getattr(b, "op", None) != "get_attr"):
            continue
        weight = _attr(gm, w.target)
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=b is not None)
        lin.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)
        if b is not None:
            lin.bias = torch.nn.Parameter(_attr(gm, b.target).detach().clone(), requires_grad=False)
        name = "edgepack_linear_%d" % len(modules)
        gm.add_submodule(name, lin)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, (x,))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        modules[name] = lin
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return modules


def _attr(gm, target: str):
    return functools.reduce(getattr, target.split("."), gm)


def run_steps(forward, ids: np.ndarray, split: int) -> np.ndarray:
    """Logits of a prefill of ids[:, :split] then one decode step per remaining token, concatenated."""
    got = [forward(ids[:, :split], 0)]
    for i in range(split, ids.shape[1]):
        got.append(forward(ids[:, i:i + 1], i))
    return np.concatenate([g[0] for g in got])


def sample_check(pte: Path, fp32, cfg: dict, precision: str, tolerance: float) -> dict:
    """The .pte in the ExecuTorch runtime vs the FP32 program: a prefill of 6 tokens and 2 decode steps."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method(cfg["method"])
    ids = np.random.default_rng(2).integers(0, cfg["vocab_size"], (1, 8)).astype(np.int64)
    ref_mod = fp32.module()
    with torch.no_grad():
        ref = run_steps(lambda t, p: ref_mod(torch.from_numpy(t), torch.tensor([p])).numpy(), ids, 6)
    got = run_steps(lambda t, p: method.execute([torch.from_numpy(np.ascontiguousarray(t)), torch.tensor([p])])[0].numpy(), ids, 6)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    if precision == "fp32" and diff > tolerance:
        raise StageError(f"the ExecuTorch decoder's logits differ from the PyTorch program by {diff:.3g} (tolerance {tolerance:g})",
                         hint="set options.partitioner: none to rule out the XNNPACK delegate, or raise model.tolerance")
    return {"vs": "the FP32 program: prefill 6 tokens + 2 decode steps", "max_abs_diff": diff, "argmax_agreement": agree}

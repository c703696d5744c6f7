"""The plan nodes of a text-generation recipe that differ from a tensor model's (edgepack/build_nodes.py).

    data            + "tokens": generation.prompts / perplexity / calibration tokenized, bench prompts per length
    reference fp32  the FP32 PyTorch model's tokens (validate/generation.py GenerationReferenceStage)
    validate T @ D  greedy generation on the device (GenerateStage), token metrics against the reference
"""

from __future__ import annotations

from .plan import NodeResult, Work


def is_decoder(recipe) -> bool:
    return getattr(recipe, "generation", None) is not None


def tokens(rb):
    """The token sets of the recipe's generation: section, frozen in the cache's data folder."""
    import json
    from pathlib import Path

    from .validate.generation import freeze_tokens, token_sets

    lr = rb.lr
    folder = lr.resolve(lr.recipe.model.path)
    try:
        context = int(json.loads((Path(folder) / "config.json").read_text()).get("max_position_embeddings") or 2048)
    except (OSError, ValueError):
        context = 2048  # the convert stage reports an unreadable folder with its own line
    return freeze_tokens(token_sets(lr, lr.recipe.generation, Path(folder), context), rb.cache.root / "data")


def reference_work(rb, res) -> Work:
    from .build_nodes import source
    from .validate.generation import GenerationReferenceStage

    lr = rb.lr
    inputs = {"source": source(rb), "tokens": res[rb.node_id("data")].outputs["tokens"]}
    return Work("reference fp32", GenerationReferenceStage(lr.recipe.generation.new_tokens, lr.where("model")), inputs)


def reference_done(rb, out: NodeResult, res) -> NodeResult:
    from .validate.generation import reference_evaluation

    out.value = reference_evaluation(rb.lr.recipe.evaluate, out.outputs["tokens"])
    return out


def validate_work(rb, res, tid, dev, n, vname) -> Work | NodeResult:
    from .validate.generation import GenerateStage

    r = rb.lr.recipe
    art = res[rb.node_id(f"compile {tid}")].outputs["artifact"]
    if art.meta.get("runtime") not in dev.runtimes:
        return NodeResult("skipped", value={"status": "skipped", "reason": f"device has no {art.meta.get('runtime')} runtime"})
    ref = res.get(rb.node_id("reference fp32"))
    if ref is None or not ref.ok:
        return NodeResult("skipped", value={"status": "skipped", "reason": "no FP32 reference tokens"})
    inputs = {"artifact": art, "tokens": res[rb.node_id("data")].outputs["tokens"], "reference": ref.outputs["tokens"]}
    stage = GenerateStage(dev.at_threads(n), r.generation, list(r.evaluate), r.benchmark.threads)
    return Work(vname, stage, inputs, deadline_s=dev.transport.run_timeout_s)

"""Structured channel pruning with torch-pruning's dependency graph, then optional fine-tuning.

Coupled layers (a conv and the next layer's input channels, batch norms, residual adds) are cut
together, so the exported ONNX model really has fewer parameters and MACs. Layers that produce the
model's outputs are never pruned (their width is the output's width); ``exclude`` names more.
Importance: L2 magnitude of the grouped weights. Runs in a worker process (isolated stage).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError, StageError
from .torch_model import export, load_for_pass, param_count, save_state
from .training import fit, seed_everything


def _output_layers(module, example, names) -> list[str]:
    """Names of the Linear/Conv layers whose output width is the model's output width."""
    import torch

    with torch.no_grad():
        y = module(*[torch.from_numpy(example[n]) for n in names])
    y = y[0] if isinstance(y, (tuple, list)) else y
    width = y.shape[1] if y.ndim > 1 else None
    last = [(n, m) for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    out = [n for n, m in last if width is not None and getattr(m, "out_features", getattr(m, "out_channels", None)) == width]
    return out or ([last[-1][0]] if last else [])


def prune_channels(cfg, ctx, inputs, workdir: Path, record: dict):
    import torch
    import torch_pruning as tp

    from ..data import read_npz

    where = ctx.where
    seed_everything(cfg.finetune.seed if cfg.finetune else 0)
    module, entrypoint = load_for_pass(inputs, ctx, where)
    names = [t.name for t in inputs["model"].inputs]
    sample_src = inputs.get("validation") or inputs.get("training")
    if sample_src is None:
        raise BadInputError("channel pruning needs data.validation or data.training for an example input", where=where)
    arrays, _ = read_npz(sample_src.path)
    example = {n: np.ascontiguousarray(arrays[n][:1]) for n in names}
    mods = dict(module.named_modules())
    unknown = [n for n in cfg.exclude if n not in mods]
    if unknown:
        raise BadInputError(f"{where}.exclude: no module named {unknown}", hint=f"module names: {', '.join(n for n in mods if n)[:300]}")
    protected = _output_layers(module, example, names)
    ignored_names = sorted(set(protected) | set(cfg.exclude))
    record["ignored_layers"] = {n: ("produces the model output" if n in protected else "listed in exclude") for n in ignored_names}
    params_before = param_count(module)
    ex = tuple(torch.from_numpy(example[n]) for n in names)
    try:
        pruner = tp.pruner.MetaPruner(
            module, ex if len(ex) > 1 else ex[0], importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=cfg.sparsity, global_pruning=cfg.scope == "global", ignored_layers=[mods[n] for n in ignored_names],
        )
        pruner.step()
    except Exception as e:
        raise StageError(f"torch-pruning failed: {e.__class__.__name__}: {str(e)[:300]}", where=where) from e
    params_after = param_count(module)
    record["torch_params"] = {"before": params_before, "after": params_after, "reduction": round(1 - params_after / params_before, 4)}
    record["layers"] = {n: list(m.weight.shape) for n, m in module.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))}
    if cfg.finetune is not None:
        train = read_npz(inputs["training"].path)
        train = ({n: train[0][n] for n in names}, train[1])
        val = read_npz(inputs["validation"].path) if "validation" in inputs else None
        val = ({n: val[0][n] for n in names}, val[1]) if val is not None else None
        record["finetune"] = fit(module, train, val, names, cfg.finetune, f"{where}.finetune")
    else:
        record["finetune"] = "not requested (add finetune: to recover accuracy)"
    path = export(module, inputs["model"], ctx.model, example, workdir, record)
    return path, save_state(module, workdir, entrypoint, ctx.recipe_dir)

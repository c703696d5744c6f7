"""Optimization passes: ONNX model (+ data) -> ONNX model.

One static table maps each recipe ``pass:`` name to its stage class; a new pass is a new module and
one line here. Every pass records what it changed, and why when it changed nothing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..engine import Stage

if TYPE_CHECKING:
    from ..recipe import Gates, ModelSection

# pass name -> "module:Class". Imported lazily: nothing registers itself on import.
PASSES: dict[str, str] = {
    "quantize": "edgepack.optimize.quantize:QuantizeStage",
    "prune": "edgepack.optimize.prune:PruneStage",
    "distill": "edgepack.optimize.distill:DistillStage",
}


def make_pass(cfg, ctx) -> Stage:
    """Build the stage for one recipe pass. ``ctx`` is the build's PassContext."""
    name = cfg.pass_
    module, _, cls = PASSES[name].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg, ctx)


@dataclass(frozen=True)
class PassContext:
    """What a pass may know about the build besides its own config and input artifacts."""

    index: int  # position in the recipe's optimize list (for error messages)
    where: str  # 'recipe.yaml:14:5 optimize[0]'
    recipe_dir: Path
    model: ModelSection
    gates: Gates | None
    evaluate: tuple = ()  # recipe `evaluate:` metrics: the named numbers a pass's budget and search use


def check_metric_names(lr) -> None:
    """Load time: every `accuracy_aware.metric` names an `evaluate:` metric (or a user function's) or a builtin."""
    from ..errors import RecipeError
    from .accuracy_aware import BUILTINS

    r = lr.recipe
    names = [m.id for m in r.evaluate]
    has_fn = any(getattr(m, "fn", None) for m in r.evaluate)
    for i, p in enumerate(r.optimize):
        aa = getattr(p, "accuracy_aware", None)
        if aa is None or aa.metric in names or aa.metric in BUILTINS or has_fn:
            continue
        raise RecipeError(
            f"'{aa.metric}' is not a metric of evaluate: "
            f"({', '.join(names) or 'none listed'}) nor a builtin ({', '.join(BUILTINS)})",
            hint="name a metric listed under evaluate:, or add it there", where=lr.where('optimize', i, 'accuracy_aware', 'metric')
        )


def count_ops(path: Path) -> dict[str, int]:
    import onnx

    hist: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    return dict(sorted(hist.items()))

"""Compile targets: ONNX model -> the artifact one runtime loads.

One static table maps each target type to its stage class and pip extra. A target module imports
its heavy backend only inside ``run``; a missing backend fails that target alone, naming the extra.
The artifact's ``meta['runtime']`` names the runner adapter (edgepack/devices/runner.py) that loads it,
``meta['runner']`` is its RunnerContract (edgepack/contract.py): how the runner feeds it and reads its outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..engine import Stage
from ..recipe_targets import TARGET_SPECS, TargetBase, TargetType

if TYPE_CHECKING:
    from ..recipe import ModelSection

# type -> ("module:Class", pip extra or None), from the recipe's table (edgepack/recipe_targets.py)
TARGETS: dict[TargetType, tuple[str, str | None]] = {t: (spec.stage, spec.extra) for t, spec in TARGET_SPECS.items()}


@dataclass(frozen=True)
class TargetContext:
    where: str  # 'recipe.yaml:20:5 targets[0]'
    recipe_dir: Path
    model: ModelSection


class TargetStage(Stage):
    runtime: ClassVar[str] = ""
    extra: ClassVar[str | None] = None
    uses: tuple[str, ...] | None = ("model", "calibration")

    def __init__(self, target: TargetBase, ctx: TargetContext):
        self.target = target
        self.ctx = ctx

    def config(self) -> dict:
        from ..contract import model_config

        # the runner contract the artifact carries depends on the recipe's inputs (batch axes, constants, state)
        # the options the recipe gave (not the defaults): the keys of recipes that give none stay as they were
        return {**self.target.model_dump(mode="json", exclude={"name"}), "options": self.target.options_set(),
                "io": model_config(self.ctx.model)}

    def contract(self, onnx_path: Path, **mapping):
        """The artifact's RunnerContract (edgepack/contract.py) as JSON, for ``meta["runner"]``."""
        from ..contract import make_contract
        from .common import onnx_io, source_names

        ins, outs = onnx_io(onnx_path)
        sources = source_names(ins, None, [i.name for i in getattr(self.ctx.model, "inputs", None) or []])
        return make_contract(self.ctx.model, self.ctx.recipe_dir, ins, sources, outs, **mapping).to_json()

    def prerequisites(self) -> dict[str, Stage]:
        """Shared stages this compile reads, by the input name their single output gets (e.g. TFLite's
        SavedModel): the build plan makes each its own node (edgepack/build_nodes.py), one per model and
        prerequisite config, which every target needing it depends on."""
        return {}


def make_target(target: TargetBase, ctx: TargetContext) -> TargetStage:
    if target.type not in TARGETS:
        from ..errors import BadInputError

        raise BadInputError(f"{ctx.where}.type: target '{target.type.value}' is not available in this version of edgepack")
    spec, extra = TARGETS[target.type]
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)(target, ctx)

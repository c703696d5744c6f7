"""Compile targets: ONNX model -> the artifact one runtime loads.

One static table maps each target type to its stage class and pip extra. A target module imports
its heavy backend only inside ``run``; a missing backend fails that target alone, naming the extra.
The artifact's ``meta['runtime']`` names the runner adapter (edgepack/devices/runner.py) that loads it,
``meta['runner']`` is its RunnerContract (edgepack/contract.py): how the runner feeds it and reads its outputs.
"""

from __future__ import annotations

import importlib
import threading
import weakref
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
        SavedModel): ``run_compile`` runs each through the engine first. Keys do not depend on the
        target, so several targets share one run (the others are cache hits)."""
        return {}


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # engine -> {key: result or error}: one run per build
_SHARED_LOCK = threading.Lock()


def run_compile(engine, name: str, stage: TargetStage, inputs: dict):
    """``engine.run(name, stage, inputs)`` after the stage's prerequisites. Within one engine (one build)
    a prerequisite runs at most once per cache key, also with the cache disabled and when it failed
    (the failure is re-raised for every target that needs it, its log copied to each compile's log)."""
    from ..errors import EdgepackError

    pres = stage.prerequisites()
    if pres:
        try:  # the compile's own input contract first: no conversion for a target that cannot compile
            stage.check_inputs({k: a for k, a in inputs.items() if stage.uses is None or k in stage.uses})
        except EdgepackError as e:
            raise e.prefixed(name) from e
    inputs = dict(inputs)
    for out_name, pre in pres.items():
        inputs[out_name] = _shared_run(engine, f"{name} [{out_name}]", pre, inputs, name).outputs[out_name]
    return engine.run(name, stage, inputs)


def _shared_run(engine, pre_name: str, pre: Stage, inputs: dict, compile_name: str):
    import shutil

    key = engine.key_for(pre, {k: a for k, a in inputs.items() if pre.uses is None or k in pre.uses})
    with _SHARED_LOCK:
        memo = _SHARED.setdefault(engine, {})
        slot = memo.setdefault(key, [threading.Lock(), None])
    with slot[0]:  # a parallel executor: the second target waits for the first's conversion
        if slot[1] is None:
            try:
                slot[1] = engine.run(pre_name, pre, inputs)
            except Exception as e:  # noqa: BLE001 - remembered, re-raised below
                slot[1] = (e, engine.log_path(pre_name))
    if isinstance(slot[1], tuple):
        error, log = slot[1]
        dest = engine.log_path(compile_name)
        if log is not None and dest is not None and log.exists() and log != dest:
            shutil.copyfile(log, dest)  # the build attaches the compile's log to the failed target
        raise error
    return slot[1]


def make_target(target: TargetBase, ctx: TargetContext) -> TargetStage:
    if target.type not in TARGETS:
        from ..errors import BadInputError

        raise BadInputError(f"{ctx.where}.type: target '{target.type.value}' is not available in this version of edgepack")
    spec, extra = TARGETS[target.type]
    module, _, cls = spec.partition(":")
    return getattr(importlib.import_module(module), cls)(target, ctx)

"""Pruning: unstructured magnitude and 2:4 semi-structured (ONNX weights), structured channels (PyTorch).

- ``magnitude``: zero the smallest |w| of Conv/Gemm/MatMul weights, one threshold per layer
  (``scope: layer``) or one for all (``scope: global``). The ONNX file stays dense: zeros shrink
  the compressed size, not the file or ORT CPU latency (the record says so).
- ``2:4``: in every group of 4 consecutive weights along the reduction axis (input channels), zero
  the 2 smallest. Layers whose reduction size is not a multiple of 4 are left alone, with the reason.
- ``channel``: torch-pruning's dependency graph removes whole channels so that coupled layers are cut
  together; optional fine-tuning on data.training (edgepack/optimize/prune_channel.py).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..engine import Stage, StageResult, package_versions
from ..errors import BadInputError
from ..recipe import PrunePass
from . import PassContext
from .effect import budget_check, measure


class PruneStage(Stage):
    kind = "optimize.prune"
    version = "1"
    timeout = 3600.0
    uses: tuple[str, ...] | None = ("model", "source", "training", "validation")

    def __init__(self, cfg: PrunePass, ctx: PassContext):
        self.cfg = cfg
        self.ctx = ctx
        self.isolated = cfg.method == "channel"  # torch training runs in a spawned worker
        if cfg.method != "channel":  # ONNX-level pruning reads neither the source nor the training data
            self.uses = ("model", "validation")

    def config(self) -> dict:
        g = self.ctx.gates
        return {"pass": self.cfg.model_dump(mode="json", by_alias=True), "gates": g.model_dump(mode="json") if g is not None else None,
                "model": self.ctx.model.model_dump(mode="json") if self.cfg.method == "channel" else None,
                "evaluate": [m.model_dump(mode="json") for m in self.ctx.evaluate]}

    def toolchain(self) -> dict[str, str]:
        names = ("onnx", "onnxruntime") + (("torch", "torch-pruning", "onnxscript") if self.cfg.method == "channel" else ())
        return package_versions(*names)

    def check_inputs(self, inputs):
        if self.cfg.method == "channel":
            from .torch_model import check_torch_input

            check_torch_input(inputs["model"], self.ctx, self.ctx.where)
        if self.cfg.finetune is not None and "training" not in inputs:
            raise BadInputError(f"{self.ctx.where}.finetune: needs training data", hint="add data.training to the recipe")

    def run(self, inputs: dict[str, Artifact], workdir: Path) -> StageResult:
        src = inputs["model"]
        validation = inputs["validation"].path if "validation" in inputs else None
        before, reference = measure(src.path, validation, specs=self.ctx.evaluate, base_dir=self.ctx.recipe_dir, model=self.ctx.model)
        record: dict = {"method": self.cfg.method}
        meta = {k: v for k, v in src.meta.items() if k != "torch"}
        meta["passes"] = [*src.meta.get("passes", []), f"prune:{self.cfg.method}"]
        if self.cfg.method == "channel":
            from .prune_channel import prune_channels

            out, torch_meta = prune_channels(self.cfg, self.ctx, inputs, workdir, record)
            meta["torch"] = torch_meta
        else:
            out = workdir / "model.onnx"
            prune_onnx(src.path, out, self.cfg, record)
        after, _ = measure(out, validation, reference, specs=self.ctx.evaluate, base_dir=self.ctx.recipe_dir, model=self.ctx.model)
        for r in (before, after):
            r["compressed_bytes"] = len(zlib.compress(Path(src.path if r is before else out).read_bytes(), 6))
        record["before"], record["after"] = before, after
        if self.cfg.method != "channel":
            record["note"] = "dense ONNX storage: zeroed weights shrink the compressed size, not the file or ONNX Runtime CPU latency"
        if not record.get("layers_pruned", True):
            record["unchanged"] = "no weight matched the pass's op_types/exclude and shape rules"
        record["accuracy_budget"] = budget_check(before, after, self.ctx.gates, self.ctx.where)
        return StageResult({"model": Artifact(out, "onnx", inputs=src.inputs, outputs=src.outputs, meta=meta)}, record)


def _weights(model, op_types: list[str], exclude: list[str]):
    """(node, initializer, reduction axis) for each prunable weight."""
    inits = {i.name: i for i in model.graph.initializer}
    seen = set()
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in exclude or len(node.input) < 2:
            continue
        w = node.input[1]
        if w not in inits or w in seen or len(inits[w].dims) < 2:
            continue
        seen.add(w)
        if node.op_type in ("Conv", "ConvTranspose"):
            axis = 1  # input channels (kernel positions kept apart)
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            axis = 1 if trans_b else 0
        else:  # MatMul: [K, N]
            axis = len(inits[w].dims) - 2
        yield node, inits[w], axis


def two_four_mask(w: np.ndarray, axis: int) -> np.ndarray | None:
    """Mask keeping the 2 largest |w| in every group of 4 along ``axis``; None when not divisible by 4."""
    if w.shape[axis] % 4:
        return None
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(-1, 4)
    order = np.argsort(groups, axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, 2:], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def prune_onnx(src: Path, out: Path, cfg: PrunePass, record: dict) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    items = list(_weights(model, cfg.op_types, cfg.exclude))
    arrays = {init.name: numpy_helper.to_array(init) for _, init, _ in items}
    layers, skipped = [], []
    threshold = None
    if cfg.method == "magnitude" and cfg.scope == "global" and arrays:
        allw = np.concatenate([np.abs(a).ravel() for a in arrays.values()])
        threshold = float(np.quantile(allw, cfg.sparsity))
        record["global_threshold"] = threshold
    for node, init, axis in items:
        w = arrays[init.name]
        if cfg.method == "2:4":
            keep = two_four_mask(w, axis)
            if keep is None:
                skipped.append({"node": node.name, "reason": f"reduction axis {axis} has size {w.shape[axis]}, not a multiple of 4"})
                continue
        else:
            t = threshold if threshold is not None else float(np.quantile(np.abs(w), cfg.sparsity))
            keep = np.abs(w) > t
        pruned = (w * keep).astype(w.dtype)
        init.CopyFrom(numpy_helper.from_array(pruned, init.name))
        layers.append({"node": node.name, "weight": init.name, "shape": list(w.shape), "sparsity": round(float(np.mean(pruned == 0)), 4)})
    record["layers"] = layers
    record["layers_pruned"] = len(layers)
    if skipped:
        record["skipped_layers"] = skipped
    if cfg.method == "2:4":
        record["note_sparsity"] = "2:4 fixes sparsity at 50% of each pruned layer; the 'sparsity' field is not used"
    total = sum(int(np.prod(entry["shape"])) for entry in layers)
    zeros = sum(entry["sparsity"] * int(np.prod(entry["shape"])) for entry in layers)
    record["sparsity"] = round(zeros / total, 4) if total else 0.0
    tmp = out.with_suffix(".onnx.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)

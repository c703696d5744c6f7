"""PyTorch modules for the training passes (structured pruning, distillation): load, save, export.

A pass that changes the PyTorch model hands the next pass an ONNX model whose artifact meta carries
``torch``: the entrypoint, the recipe directory and a state dict saved next to the ONNX file. A
later torch pass rebuilds the module from the entrypoint and resizes its layers to the saved
tensors (pruned layers have fewer channels), so checkpoints stay loadable with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..errors import BadInputError, StageError
from ..ingest.torch import build_module  # noqa: F401  (re-exported for the torch passes)

STATE_FILE = "torch_state.pt"


def resize_to(module, state: dict) -> None:
    """Give ``module``'s layers the shapes of ``state`` (channel-pruned layers), then load it."""
    import torch

    mods = dict(module.named_modules())
    for key, tensor in state.items():
        owner, _, attr = key.rpartition(".")
        m = mods.get(owner)
        cur = getattr(m, attr, None) if m is not None else None
        if not isinstance(cur, torch.Tensor) or tuple(cur.shape) == tuple(tensor.shape):
            continue
        assert m is not None  # cur is a tensor attribute of m
        if isinstance(cur, torch.nn.Parameter):
            setattr(m, attr, torch.nn.Parameter(torch.empty_like(tensor), requires_grad=cur.requires_grad))
        else:
            m.register_buffer(attr, torch.empty_like(tensor))
    for m in module.modules():
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            depthwise = m.groups > 1 and m.groups == m.in_channels
            m.out_channels = m.weight.shape[0]
            m.groups = m.out_channels if depthwise else m.groups
            m.in_channels = m.weight.shape[1] * m.groups
        elif isinstance(m, torch.nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.num_features = m.running_mean.shape[0] if m.running_mean is not None else m.weight.shape[0]
    try:
        module.load_state_dict(state)
    except Exception as e:
        raise StageError(f"cannot restore the pruned PyTorch model: {str(e).splitlines()[0][:200]}",
                         hint="a layer type whose shape torch-pruning changed is not supported for chaining; put this pass first") from e


def check_torch_input(model: Artifact, ctx, where: str) -> None:
    """Fail early (before a worker starts) when no PyTorch model stands behind the pass's input."""
    from ..recipe import ModelFormat

    if model.meta.get("torch"):
        return
    passes = model.meta.get("passes")
    if passes:
        raise BadInputError(
            f"this pass trains the PyTorch model, but the model entering it was changed by ONNX-level passes ({', '.join(passes)})",
            hint="put prune (method: channel) and distill before quantize and magnitude/2:4 pruning", where=where
        )
    if ctx.model.format is not ModelFormat.PYTORCH:
        raise BadInputError(
            f"needs a PyTorch source (model.format: pytorch with an entrypoint), got '{ctx.model.format.value}'",
            hint="use method: magnitude or 2:4 for other sources", where=where
        )


def load_for_pass(inputs: dict[str, Artifact], ctx, where: str):
    """The PyTorch module behind the model entering the pass: a previous torch pass's, or the source's."""
    import torch

    model = inputs["model"]
    info = model.meta.get("torch")
    if info:
        module = build_module(info["entrypoint"], Path(info["recipe_dir"]), f"{where} (entrypoint of an earlier pass)")
        state = torch.load(Path(model.path).parent / info["state"], map_location="cpu", weights_only=True)
        resize_to(module, state)
        return module.eval(), info["entrypoint"]
    check_torch_input(model, ctx, where)
    from ..ingest import ConvertContext
    from ..ingest.torch import _load_module

    cctx = ConvertContext(ctx.model, Path(ctx.recipe_dir), f"{where} model", [], Path("."), [], inputs["source"])
    return _load_module(cctx), ctx.model.entrypoint


def param_count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def save_state(module, workdir: Path, entrypoint: str, recipe_dir: Path) -> dict:
    import torch

    tmp = workdir / (STATE_FILE + ".tmp")
    torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, tmp)
    tmp.replace(workdir / STATE_FILE)
    return {"entrypoint": entrypoint, "recipe_dir": str(Path(recipe_dir).resolve()), "state": STATE_FILE}


def export(module, src: Artifact, model_section, example: dict[str, np.ndarray], workdir: Path, record: dict) -> Path:
    """Export to ONNX with the convert stage's input/output names and dynamic axes; check it numerically."""
    import torch

    from ..ingest.torch import EXPORTERS, ExportSpec, _run_source, dynamic_axes, export_checked

    module = module.eval()
    names = [t.name for t in src.inputs]
    out_names = [t.name for t in src.outputs]
    dyn = dynamic_axes(model_section.inputs)
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n in names)
    sample = [{n: example[n] for n in names}]
    path, record["export"] = export_checked(module, EXPORTERS, args, ExportSpec(names, out_names, dyn, model_section.opset), workdir,
                                            sample, _run_source(module, sample, names), model_section.tolerance)
    return path

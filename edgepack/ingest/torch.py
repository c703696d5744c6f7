"""PyTorch sources -> ONNX: nn.Module entrypoint + state dict, TorchScript file, ExportedProgram (.pt2).

The torch.export-based exporter (dynamo) is tried first; if it fails, the TorchScript exporter is
tried and the report records why the first one failed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..entrypoints import resolve
from ..errors import BadInputError, StageError
from ..recipe import ModelFormat
from . import ConvertContext, Converted


def build_module(entrypoint: str, recipe_dir: Path, where: str):
    """Call a 'module:function' entrypoint and check it returns a torch.nn.Module."""
    import torch

    fn = resolve(entrypoint, recipe_dir, where)
    try:
        module = fn()
    except Exception as e:
        raise BadInputError(f"{where}: '{entrypoint}' raised {e.__class__.__name__}: {e}") from e
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"{where}: '{entrypoint}' returned {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_module(ctx: ConvertContext):
    import torch

    m = ctx.model
    if m.format is ModelFormat.PYTORCH:
        module = build_module(m.entrypoint, ctx.recipe_dir, f"{ctx.source_where}.entrypoint")
        if m.weights:
            weights = Path(ctx.source.meta.get("weights") or ctx.source.path)
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
            except Exception as e:
                raise BadInputError(
                    f"{weights} (model.weights): cannot load a state dict with weights_only=True ({e.__class__.__name__}: {str(e)[:160]})",
                    hint="save it with torch.save(model.state_dict(), path)",
                ) from e
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                module.load_state_dict(state)
            except Exception as e:
                raise BadInputError(f"{weights} (model.weights): does not match the module: {str(e).splitlines()[0][:200]}") from e
        return module.eval()
    path = Path(ctx.source.path)
    try:
        if m.format is ModelFormat.TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu").eval()
        ep = torch.export.load(str(path))
        return ep
    except Exception as e:
        raise BadInputError(f"{path} (model.path): cannot load as {m.format.value} ({e.__class__.__name__}: {str(e)[:160]})") from e


def _run_source(module, samples, names) -> list[list[np.ndarray]]:
    import torch

    outs = []
    with torch.no_grad():
        for s in samples:
            args = tuple(torch.from_numpy(np.ascontiguousarray(s[n])) for n in names)
            y = module(*args)
            if isinstance(y, torch.Tensor):
                y = [y]
            elif isinstance(y, dict):
                y = list(y.values())
            outs.append([t.detach().cpu().numpy() for t in y])
    return outs


def convert(ctx: ConvertContext) -> Converted:
    import torch

    m = ctx.model
    names = [i.name for i in m.inputs]
    module = _load_module(ctx)
    ep = module if m.format is ModelFormat.EXPORTED_PROGRAM else None
    runnable = ep.module() if ep is not None else module
    try:
        source_outputs = _run_source(runnable, ctx.samples, names)
    except Exception as e:
        shapes = {n: list(ctx.samples[0][n].shape) for n in names}
        raise BadInputError(
            f"{ctx.source_where}.inputs: the model rejected inputs of shape {shapes}: {e.__class__.__name__}: {str(e).splitlines()[0][:200]}",
            hint="fix model.inputs[].shape / dtype to what the model expects",
        ) from e
    n_out = len(source_outputs[0])
    out_names = list(ctx.output_names) or [f"output_{i}" for i in range(n_out)]
    if len(out_names) != n_out:
        raise BadInputError(f"{ctx.source_where}.outputs: {len(out_names)} names given but the model returns {n_out} outputs")
    example = tuple(torch.from_numpy(np.ascontiguousarray(ctx.samples[0][n])) for n in names)
    dyn = {}
    for spec in m.inputs:
        axes = {i: str(d) for i, d in enumerate(spec.shape) if isinstance(d, str)}
        axes.update({int(k): v for k, v in spec.dynamic_axes.items()})
        dyn[spec.name] = axes
    out = ctx.workdir / "exported.onnx"
    record: dict = {"exporter": None, "fallbacks": []}
    attempts = [("torch.export (dynamo)", _export_dynamo), ("torchscript", _export_torchscript)]
    if ep is not None:
        attempts = attempts[:1]
    errors = []
    for label, fn in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(ep if ep is not None else module, example, names, out_names, dyn, m.opset, out)
            record["exporter"] = label
            break
        except Exception as e:
            reason = f"{e.__class__.__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            errors.append(f"{label}: {reason}")
            record["fallbacks"].append({"exporter": label, "failed_because": reason})
    if record["exporter"] is None:
        raise StageError("every ONNX exporter failed: " + " | ".join(errors))
    return Converted(out, source_outputs, record)


def _export_dynamo(module, example, names, out_names, dyn, opset, out: Path):
    import torch

    dims = {}
    shapes = []
    for n in names:
        axes = {}
        for ax, sym in dyn.get(n, {}).items():
            dims.setdefault(sym, torch.export.Dim.AUTO)
            axes[ax] = dims[sym]
        shapes.append(axes or None)
    kwargs = dict(input_names=names, output_names=out_names, opset_version=opset, dynamo=True, external_data=False)
    if any(shapes) and not isinstance(module, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = tuple(shapes)
    prog = torch.onnx.export(module, example, **kwargs)
    prog.save(str(out))
    _rename_dims(out, names, dyn)


def _rename_dims(path: Path, names, dyn) -> None:
    """torch.export names dynamic dims itself ('s77'); give them the recipe's names ('batch') everywhere."""
    import onnx

    m = onnx.load(str(path))
    inputs = {i.name: i for i in m.graph.input}
    rename = {}
    for n in names:
        for ax, sym in dyn.get(n, {}).items():
            dims = inputs[n].type.tensor_type.shape.dim if n in inputs else []
            if ax < len(dims) and dims[ax].dim_param and dims[ax].dim_param != sym:
                rename[dims[ax].dim_param] = sym
    if not rename:
        return
    for v in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]
    onnx.save(m, str(path))


def _export_torchscript(module, example, names, out_names, dyn, opset, out: Path):
    import torch

    axes = {n: dict(a) for n, a in dyn.items() if a}
    torch.onnx.export(
        module, example, str(out), input_names=names, output_names=out_names, opset_version=opset,
        dynamic_axes=axes or None, dynamo=False,
    )

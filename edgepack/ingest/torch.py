"""PyTorch sources -> ONNX: nn.Module entrypoint + state dict, TorchScript file, ExportedProgram (.pt2).

The torch.export-based exporter (dynamo) is tried first; if it fails, or its ONNX fails the ONNX
checker or the numeric check against the source, the TorchScript exporter is tried, and the record
says which exporter failed which check and why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..entrypoints import resolve
from ..errors import BadInputError, StageError
from ..recipe import ModelFormat
from . import ConvertContext, Converted, ExportCheckError, verify_export


def build_module(entrypoint: str, recipe_dir: Path, where: str):
    """Call a 'module:function' entrypoint and check it returns a torch.nn.Module."""
    import torch

    fn = resolve(entrypoint, recipe_dir, where)
    try:
        module = fn()
    except Exception as e:
        raise BadInputError(f"'{entrypoint}' raised {e.__class__.__name__}: {e}", where=where) from e
    if not isinstance(module, torch.nn.Module):
        raise BadInputError(f"'{entrypoint}' returned {type(module).__name__}, not a torch.nn.Module", where=where)
    return module


def _load_module(ctx: ConvertContext):
    import torch

    m = ctx.model
    if m.format is ModelFormat.PYTORCH:
        assert m.entrypoint is not None  # ModelSection requires it for format pytorch
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
    dyn = dynamic_axes(m.inputs)
    attempts = list(EXPORTERS)
    if ep is not None:
        attempts = attempts[:1]
    path, record = export_checked(ep if ep is not None else module, attempts, example, ExportSpec(names, out_names, dyn, m.opset),
                                  ctx.workdir, ctx.samples, source_outputs, m.tolerance)
    return Converted(path, source_outputs, record, checked=True)


def dynamic_axes(inputs) -> dict[str, dict[int, str]]:
    """Per recipe input, axis -> symbolic name: the string dims of its shape, plus its dynamic_axes."""
    dyn = {}
    for spec in inputs:
        axes = {i: str(d) for i, d in enumerate(spec.shape) if isinstance(d, str)}
        axes.update({int(k): v for k, v in spec.dynamic_axes.items()})
        dyn[spec.name] = axes
    return dyn


@dataclass(frozen=True)
class ExportSpec:
    names: list[str]
    out_names: list[str]
    dyn: dict[str, dict[int, str]]
    opset: int


def export_checked(module, attempts, example, spec: ExportSpec, workdir: Path, samples, source_outputs, tolerance: float) -> tuple[Path, dict]:
    """Export with each exporter in turn until one's ONNX passes verify_export (checker, ONNX Runtime,
    numeric check against ``source_outputs``). The record names the exporter used and, per exporter
    that failed, the check it failed and why. When all fail: a build error naming each exporter and check."""
    record: dict = {"exporter": None, "fallbacks": []}
    errors = []
    for label, fn in attempts:
        out = workdir / "exported.onnx"
        check = "export"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(module, example, spec.names, spec.out_names, spec.dyn, spec.opset, out)
            path, checks = verify_export(out, samples, source_outputs, tolerance)
        except BadInputError:
            raise
        except ExportCheckError as e:
            check, reason, hint = e.check, e.text(), e.hint
        except Exception as e:
            text = str(e).strip()
            reason, hint = f"{e.__class__.__name__}: {text.splitlines()[0][:300] if text else ''}", None
        else:
            record["exporter"] = label
            record.update(checks)
            return path, record
        errors.append(f"{label} failed the {check}: {reason}")
        record["fallbacks"].append({"exporter": label, "check": check, "failed_because": reason})
    raise StageError("every ONNX exporter failed: " + " | ".join(errors),
                     hint=hint or "change the model so one exporter can trace it; --verbose shows the exporters' messages")


def _export_dynamo(module, example, names, out_names, dyn, opset, out: Path):
    import torch

    dims: dict = {}
    shapes = []
    for n in names:
        axes = {}
        for ax, sym in dyn.get(n, {}).items():
            dims.setdefault(sym, torch.export.Dim.AUTO)
            axes[ax] = dims[sym]
        shapes.append(axes or None)
    # no output_names here: torch.export would give them to the graph's outputs even when an inner
    # tensor already has that name (the embedding lookup is 'embedding'); name_outputs does it safely
    kwargs = dict(input_names=names, opset_version=opset, dynamo=True, external_data=False)
    if any(shapes) and not isinstance(module, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = tuple(shapes)
    prog = torch.onnx.export(module, example, **kwargs)
    prog.save(str(out))
    _finish(out, names, out_names, dyn)


def _finish(path: Path, names, out_names, dyn) -> None:
    """Name the outputs without breaking SSA form, and give dynamic dims the recipe's names."""
    import onnx

    from .onnx import name_outputs

    m = onnx.load(str(path))
    name_outputs(m, list(out_names), "model")
    _rename_dims(m, names, dyn)
    onnx.save(m, str(path))


def _rename_dims(m, names, dyn) -> None:
    """torch.export names dynamic dims itself ('s77'); give them the recipe's names ('batch') everywhere."""
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


def _export_torchscript(module, example, names, out_names, dyn, opset, out: Path):
    import torch

    axes = {n: dict(a) for n, a in dyn.items() if a}
    torch.onnx.export(
        module, example, str(out), input_names=names, opset_version=opset, dynamic_axes=axes or None, dynamo=False,
    )
    _finish(out, names, out_names, {})


EXPORTERS = (("torch.export (dynamo)", _export_dynamo), ("torchscript", _export_torchscript))

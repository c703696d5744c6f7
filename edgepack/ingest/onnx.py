"""ONNX sources (checked, shape-inferred, copied: no exporter, so no source comparison), and the
graph-naming helpers the exporters share (outputs named without breaking SSA form)."""

from __future__ import annotations

import shutil

from ..errors import BadInputError
from . import ConvertContext, Converted, check_onnx


def convert(ctx: ConvertContext) -> Converted:
    import onnx

    src = ctx.source.path
    check_onnx(src, f"{src} (model.path)")
    m = onnx.load(str(src), load_external_data=False)
    graph_inputs = {i.name for i in m.graph.input} - {i.name for i in m.graph.initializer}
    for spec in ctx.model.inputs:
        if spec.name not in graph_inputs:
            raise BadInputError(
                f"{ctx.source_where}.inputs: '{spec.name}' is not an input of {src.name}",
                hint=f"the model's inputs are {sorted(graph_inputs)}",
            )
    out = ctx.workdir / "source.onnx"
    shutil.copyfile(src, out)
    return Converted(out, None, {"exporter": "none (ONNX source)"})


def graph_names(graph, found: set[str] | None = None) -> set[str]:
    """Every tensor name used in ``graph`` and its subgraphs (inputs, initializers, node inputs and outputs)."""
    found = set() if found is None else found
    found.update(v.name for v in graph.input)
    found.update(i.name for i in graph.initializer)
    for node in graph.node:
        found.update(node.input)
        found.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                graph_names(sub, found)
    found.discard("")
    return found


def rename_everywhere(graph, mapping: dict[str, str]) -> None:
    """Rename tensors in ``graph`` and its subgraphs (outer-scope references included)."""
    if not mapping:
        return
    for node in graph.node:
        node.input[:] = [mapping.get(x, x) for x in node.input]
        node.output[:] = [mapping.get(x, x) for x in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                rename_everywhere(sub, mapping)
    for v in list(graph.input) + list(graph.output) + list(graph.value_info):
        v.name = mapping.get(v.name, v.name)
    for init in graph.initializer:
        init.name = mapping.get(init.name, init.name)


def _fresh(name: str, used: set[str]) -> str:
    k = 1
    while f"{name}__{k}" in used:
        k += 1
    used.add(f"{name}__{k}")
    return f"{name}__{k}"


def name_outputs(proto, names: list[str], where: str) -> dict:
    """Give the graph outputs ``names`` (in order) and keep the graph in SSA form.

    An inner tensor that already carries a wanted name (torch.export names the embedding lookup
    'embedding') is renamed first; an output that is a graph input, an initializer or an earlier output
    gets an Identity node. Returns what was changed, for the convert record.
    """
    from onnx import helper

    g = proto.graph
    outs = [o.name for o in g.output]
    if len(names) != len(outs):
        raise BadInputError(f"{where}.outputs: {len(names)} names given but the exported graph has {len(outs)} outputs")
    if len(set(names)) != len(names):
        raise BadInputError(f"{where}.outputs: names must be distinct, got {names}")
    inputs = {v.name for v in g.input}
    clash = [n for n, cur in zip(names, outs) if n != cur and n in inputs]
    if clash:
        raise BadInputError(f"{where}.outputs: {clash} is also the name of a model input", hint="give outputs names no input uses")
    used = graph_names(g) | {o.name for o in g.output}
    moved = {n: _fresh(n, used) for n, cur in zip(names, outs) if n != cur and n in used}
    rename_everywhere(g, moved)
    outs = [moved.get(o, o) for o in outs]
    fixed = inputs | {i.name for i in g.initializer}
    mapping: dict[str, str] = {}
    identities = []
    for i, (want, cur) in enumerate(zip(names, outs)):
        if want == cur:
            continue
        if cur in fixed or cur in mapping or outs.index(cur) != i:
            g.node.append(helper.make_node("Identity", [cur], [want], name=f"edgepack_output_{want}"))
            g.output[i].name = want
            identities.append(want)
        else:
            mapping[cur] = want
    rename_everywhere(g, mapping)
    record: dict = {}
    if moved:
        record["renamed_inner_tensors"] = moved
    if identities:
        record["identity_outputs"] = identities
    return record

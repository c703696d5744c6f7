"""ONNX sources: checked, shape-inferred, copied. No exporter, so no source comparison."""

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

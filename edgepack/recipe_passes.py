"""Recipe surface of the optimize passes: one model per pass, discriminated by ``pass``.

A new pass is a new model here (added to ``OptimizePass``) plus a module under edgepack/optimize/ registered in
edgepack/optimize/__init__.py. Re-exported by edgepack/recipe.py.
"""

import enum
from typing import Annotated, Literal, Union

from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator

from .recipe_base import Strict


class QuantizeMode(str, enum.Enum):
    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"
    INT4 = "int4"  # weight-only 4-bit MatMul (ONNX Runtime MatMulNBits)


class AccuracyMetric(str, enum.Enum):
    TOP1 = "top1"  # top-1 against the validation labels
    COSINE = "cosine"  # mean cosine similarity to the FP32 outputs
    MAX_ABS_ERROR = "max_abs_error"  # max abs difference to the FP32 outputs
    TOP1_AGREEMENT = "top1_agreement"  # share of samples whose argmax matches FP32


class AccuracyAware(Strict):
    """Keep the most sensitive nodes in float, one at a time, until the budget is met on validation data."""

    max_drop: float = Field(ge=0, validation_alias=AliasChoices("max_drop", "max_accuracy_drop"),
                            description="Allowed drop of the metric vs FP32, in its own units (or a fraction when relative); also spelt max_accuracy_drop.")
    relative: bool = Field(False, description="max_drop is a fraction of the FP32 score.")
    metric: str = Field("top1", description="A metric name from `evaluate:`, or a builtin: top1, cosine, max_abs_error, top1_agreement.")
    max_float_nodes: int | None = Field(None, ge=1, description="Give up after keeping this many nodes in float.")


class QuantizePass(Strict):
    pass_: Literal["quantize"] = Field(alias="pass", description="quantize: ONNX Runtime quantization.")
    mode: QuantizeMode = Field(QuantizeMode.STATIC, description="static (needs data.calibration), dynamic, fp16 or int4 (weight-only MatMul).")
    per_channel: bool = Field(True, description="Per-channel weight scales.")
    format: Literal["qdq", "qoperator"] = Field("qdq", description="qdq (QuantizeLinear/DequantizeLinear pairs) or qoperator (QLinear* ops).")
    symmetric_activations: bool = Field(False, description="Symmetric activation ranges (zero point 0).")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description="How static quantization picks activation ranges.")
    op_types: list[str] | None = Field(None, description="Quantize only these ONNX op types (default: ONNX Runtime's).")
    exclude_nodes: list[str] = Field(default_factory=list, description="ONNX node names kept in float.")
    keep_io_types: bool = Field(True, description="fp16: keep float32 inputs and outputs.")
    nodes: list[str] | None = Field(None, description="Quantize only these node names (default: all of op_types).")
    symmetric_weights: bool = Field(True, description="Symmetric weight ranges.")
    block_size: int = Field(32, ge=16, description="int4: weights per quantization block (power of 2).")
    accuracy_level: int | None = Field(None, ge=0, le=4, description="int4: MatMulNBits accuracy_level.")
    algorithm: Literal["rtn", "gptq", "hqq"] = Field(
        "rtn", description="int4: rtn (round to nearest), gptq (data-aware: data.calibration, or generation.calibration for decoders) or hqq.")
    bits: Literal[4, 8] = Field(4, description="int4 mode: weight bits of MatMulNBits (8: int8 weight-only; rtn only).")
    accuracy_aware: AccuracyAware | None = Field(None, description="Keep the most sensitive nodes in float until a metric budget is met.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _aa_modes(self):
        if self.accuracy_aware is not None and self.mode not in (QuantizeMode.STATIC, QuantizeMode.DYNAMIC):
            raise ValueError("accuracy_aware works with mode 'static' or 'dynamic'")
        if self.block_size & (self.block_size - 1):
            raise ValueError("block_size must be a power of 2 (16, 32, 64, 128)")
        if (self.algorithm != "rtn" or self.bits != 4) and self.mode is not QuantizeMode.INT4:
            raise ValueError("algorithm and bits apply to mode: int4 (weight-only MatMulNBits)")
        if self.bits == 8 and self.algorithm != "rtn":
            raise ValueError("bits: 8 works with algorithm: rtn")
        return self


class Training(Strict):
    """The training loop used by fine-tuning and distillation (Adam, cross-entropy/KD loss, seeded)."""

    epochs: int = Field(10, ge=1, description="Passes over data.training at most.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate.")
    batch_size: int = Field(64, ge=1, description="Samples per step.")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    seed: int = Field(0, description="Seed of the shuffling and initialisation.")
    patience: int | None = Field(None, ge=1, description="Stop after this many epochs without a better validation score.")


class PrunePass(Strict):
    pass_: Literal["prune"] = Field(alias="pass", description="prune: zero or remove weights.")
    method: Literal["magnitude", "2:4", "channel"] = Field("magnitude", description="magnitude (unstructured), 2:4 (semi-structured) or channel (structured, PyTorch sources).")
    sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of weights (magnitude) or of channels (channel) removed.")
    scope: Literal["global", "layer"] = Field("layer", description="magnitude/channel: one threshold for all layers, or per layer.")
    op_types: list[str] = Field(default_factory=lambda: ["Conv", "Gemm", "MatMul"], description="magnitude/2:4: ONNX ops whose weights are pruned.")
    exclude: list[str] = Field(default_factory=list, description="ONNX node names (magnitude/2:4) or module names (channel) left alone.")
    finetune: Training | None = Field(None, description="channel: fine-tune on data.training after pruning.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _finetune_needs_channel(self):
        if self.finetune is not None and self.method != "channel":
            raise ValueError("finetune works with method 'channel' (magnitude and 2:4 prune the ONNX weights in place)")
        return self


class DistillPass(Strict):
    pass_: Literal["distill"] = Field(alias="pass", description="distill: train a smaller student against the FP32 teacher.")
    student: str = Field(description="module:function building the student torch.nn.Module.")
    temperature: float = Field(4.0, gt=0, description="Softmax temperature of the distillation loss.")
    kd_weight: float = Field(0.7, ge=0, description="Weight of the temperature-softened KL term (scaled by T^2).")
    ce_weight: float = Field(0.3, ge=0, description="Weight of the cross-entropy on labels (when data.training has labels).")
    training: Training = Field(Training(epochs=30, learning_rate=3e-3, patience=5), description="The student's training loop.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("student")
    @classmethod
    def _entry(cls, v):
        if ":" not in v:
            raise ValueError("student must look like 'module:function'")
        return v


OptimizePass = Annotated[Union[QuantizePass, PrunePass, DistillPass], Field(discriminator="pass_")]

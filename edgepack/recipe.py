"""Recipe: typed, frozen models loaded from YAML with line/column kept for every error.

Every user mistake becomes one line: ``recipe.yaml:12:5 targets[1].precision: ... (hint)``.
"""


import enum
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from .recipe_base import Strict as Strict
from .recipe_card import Card
from .recipe_evaluate import CosineGate, Metric, MetricGate, MinCosine
from .recipe_generation import Generation
from .recipe_hf import HfTask, Pooling, TokenizerSettings, check_hf, check_hf_recipe, hf_defaults
from .recipe_passes import AccuracyAware as AccuracyAware
from .recipe_passes import AccuracyMetric as AccuracyMetric
from .recipe_passes import DistillPass as DistillPass
from .recipe_passes import OptimizePass as OptimizePass
from .recipe_passes import PrunePass as PrunePass
from .recipe_passes import QuantizeMode as QuantizeMode
from .recipe_passes import QuantizePass as QuantizePass
from .recipe_passes import Training as Training
from .recipe_targets import OnnxRuntimeSpec, TargetSpec
from .recipe_targets import Target as Target  # re-exported: targets are built and imported from here too
from .recipe_targets import TargetBase as TargetBase
from .recipe_targets import TargetInput as TargetInput
from .recipe_targets import TargetType as TargetType

# ---------------------------------------------------------------- enums


class ModelFormat(str, enum.Enum):
    PYTORCH = "pytorch"
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported-program"
    ONNX = "onnx"
    KERAS = "keras"
    SAVED_MODEL = "saved-model"
    TFLITE = "tflite"
    HF = "hf"  # a local Hugging Face folder: config.json, safetensors weights, tokenizer files (edgepack/ingest/hf.py)


class DType(str, enum.Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    INT64 = "int64"
    INT32 = "int32"
    INT8 = "int8"
    UINT8 = "uint8"
    BOOL = "bool"




# ---------------------------------------------------------------- model


class InputSpec(Strict):
    name: str = Field(description="The model input's name.")
    shape: list[int | str] = Field(description="Dimensions; a string names a dynamic axis. [] for a scalar.")
    dtype: DType = Field(DType.FLOAT32, description="Element type fed to the model.")
    dynamic_axes: dict[int, str] = Field(default_factory=dict, description="axis index -> symbolic name")
    layout: Literal["NCHW", "NHWC"] | None = Field(None, description="NCHW or NHWC: how image-like inputs are laid out (TFLite transposes NCHW).")
    batch_axis: int | None = Field(
        0, ge=0, description="The axis where a sample's batch of 1 goes (default 0; null: the input has no batch axis). "
        "Data arrays hold the input without this axis.")
    value: float | int | bool | list | None = Field(
        None, description="A constant input: fed as given (with the input's dtype and shape) to every step; never read from data files.")

    @field_validator("shape")
    @classmethod
    def _positive(cls, v):
        for d in v:
            if isinstance(d, int) and d <= 0:
                raise ValueError(f"dimension {d} must be positive (use a string such as 'batch' for a dynamic axis)")
        return v

    @field_validator("value", mode="before")
    @classmethod
    def _value_kind(cls, v):
        if v is not None and not isinstance(v, (int, float, bool, list)):
            raise ValueError(f"value must be a number, a bool or a (nested) list of them, got {v!r}")
        return v

    @model_validator(mode="after")
    def _axis_and_value(self):
        if self.value is not None:
            if "batch_axis" in self.model_fields_set and self.batch_axis is not None:
                raise ValueError(f"input '{self.name}' is a constant (value): it has no batch_axis; remove batch_axis")
            if any(isinstance(d, str) for d in self.shape):
                raise ValueError(f"input '{self.name}' is a constant (value): its shape must be fixed sizes, got {self.shape}")
            import numpy as np

            try:
                got = list(np.asarray(self.value, dtype=self.dtype.value).shape)
            except (ValueError, TypeError, OverflowError) as e:
                raise ValueError(f"input '{self.name}': value is not an array of {self.dtype.value} ({e})") from None
            if got != list(self.shape):
                raise ValueError(f"input '{self.name}': value has shape {got}, but shape is {self.shape}")
        elif self.batch_axis is not None and self.batch_axis >= max(len(self.shape), 1):
            if not self.shape and "batch_axis" not in self.model_fields_set:
                return self  # a 0-d input without a batch axis: see feed_batch_axis
            raise ValueError(f"input '{self.name}': batch_axis {self.batch_axis} is out of range for shape {self.shape} "
                             "(use null for an input without a batch axis)")
        return self

    @property
    def feed_batch_axis(self) -> int | None:
        """Where the runners insert the batch of 1 (None: fed as the data holds it; constants and 0-d inputs)."""
        if self.value is not None or not self.shape:
            return None
        return self.batch_axis

    @property
    def sample_shape(self) -> list[int | str]:
        """The shape of one sample (one step) in the data files: the input's shape without its batch axis."""
        ax = self.feed_batch_axis
        return list(self.shape) if ax is None else [d for i, d in enumerate(self.shape) if i != ax]


class StateSpec(Strict):
    """A recurrent state: the model output fed back into the model input at the next step (stream mode)."""

    input: str = Field(description="The model input that receives the state.")
    output: str = Field(description="The model output that holds the next state.")
    init: str = Field("zeros", description="'zeros', or a .npy file (relative to the recipe) with the first step's state.")

    @field_validator("init")
    @classmethod
    def _init(cls, v):
        if v != "zeros" and not v.endswith(".npy"):
            raise ValueError(f"init must be 'zeros' or a .npy file, got '{v}'")
        return v


class ModelSection(Strict):
    format: ModelFormat = Field(description="Source format of the trained model.")
    path: str | None = Field(None, description="Model file or directory (relative to the recipe).")
    entrypoint: str | None = Field(None, description="module:function building the torch.nn.Module.")
    weights: str | None = Field(None, description="State dict loaded with torch.load(weights_only=True).")
    inputs: list[InputSpec] = Field(default_factory=list, description="The model's inputs: name, shape, dtype (edgepack init reads them from a model file). "
                                    "Required, except for format hf (default: input_ids and attention_mask).")
    outputs: list[str] | None = Field(None, description="Output names (default output_0, ...).")
    state: list[StateSpec] = Field(default_factory=list, description="States carried from an output to an input between steps (stream mode).")
    opset: int = Field(18, ge=13, le=23, description="ONNX opset to export to.")
    tolerance: float = Field(1e-3, gt=0, description="Max abs difference allowed between source and ONNX.")
    trust_code: bool = Field(False, description="Let code and file I/O inside the model file run (Keras lambdas, TF file/Python ops): docs/security.md.")
    task: HfTask | None = Field(None, description="format hf: feature-extraction, text-classification or text-generation.")
    tokenizer: TokenizerSettings | None = Field(None, description="format hf: how text data is tokenized (max_length, padding, truncation).")
    pooling: Pooling | None = Field(None, description="format hf, feature-extraction: mean (over the attention mask, the default), cls, or none (the last hidden state).")
    normalize: bool = Field(False, description="format hf, feature-extraction: L2-normalize the pooled embedding.")

    @model_validator(mode="before")
    @classmethod
    def _hf_defaults(cls, data):
        return hf_defaults(data)

    @model_validator(mode="after")
    def _hf(self):
        check_hf(self)
        return self

    @model_validator(mode="after")
    def _source(self):
        if not self.inputs and self.format is not ModelFormat.HF:
            raise ValueError("inputs: Field required: list the model's inputs (name, shape, dtype)")
        if self.format is ModelFormat.PYTORCH:
            if not self.entrypoint:
                raise ValueError("format 'pytorch' needs 'entrypoint' (module:function) and usually 'weights'")
        elif not self.path:
            raise ValueError(f"format '{self.format.value}' needs 'path'")
        if self.entrypoint and ":" not in self.entrypoint:
            raise ValueError("entrypoint must look like 'module:function'")
        return self

    @model_validator(mode="after")
    def _state(self):
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"two model inputs share a name: {names}")
        by_name = {i.name: i for i in self.inputs}
        seen: set[str] = set()
        for k, st in enumerate(self.state):
            spec = by_name.get(st.input)
            if spec is None:
                raise ValueError(f"state[{k}].input '{st.input}' is not a model input (inputs: {', '.join(names)})")
            if spec.value is not None:
                raise ValueError(f"state[{k}].input '{st.input}' is a constant input (value); a state input has no value")
            if self.outputs is not None and st.output not in self.outputs:
                raise ValueError(f"state[{k}].output '{st.output}' is not a model output (outputs: {', '.join(self.outputs)})")
            if st.input in seen:
                raise ValueError(f"state[{k}].input '{st.input}' is used by two states")
            seen.add(st.input)
            if st.init == "zeros":
                ax = spec.feed_batch_axis
                dyn = [d for i, d in enumerate(spec.shape) if isinstance(d, str) and i != ax]
                if dyn:
                    raise ValueError(f"state[{k}]: input '{st.input}' has dynamic dimension(s) {dyn} besides its batch axis; "
                                     "give fixed sizes in its shape, or init: a .npy file")
        return self

    @property
    def state_inputs(self) -> set[str]:
        return {s.input for s in self.state}

    def data_inputs(self) -> list[InputSpec]:
        """The inputs fed from data files (not constants, not states)."""
        return [i for i in self.inputs if i.value is None and i.name not in self.state_inputs]


# ---------------------------------------------------------------- data


class DataSource(Strict):
    path: str | None = Field(None, description=".npy or .npz file (relative to the recipe).")
    text: str | None = Field(None, description="format hf: a UTF-8 text file, one example per line, tokenized by the model's tokenizer (model.tokenizer).")
    loader: str | None = Field(None, description="module:function returning arrays, or (inputs, labels).")
    labels: str | dict[str, str] | None = Field(
        None, description=".npy file with one label per sample (the label set 'labels'), or {name: .npy} for several named label sets.")
    limit: int | None = Field(None, gt=0, description="Use at most this many samples (sequences in stream mode).")
    mode: Literal["batch", "stream"] = Field(
        "batch", description="batch: arrays [N, ...], one sample per inference. stream: arrays [S, T, ...], "
        "S sequences of T steps fed in order, model.state carried from step to step.")

    def files(self) -> list[str]:
        """The files this source names (data path and label files), relative to the recipe."""
        labels = list(self.labels.values()) if isinstance(self.labels, dict) else [self.labels]
        return [p for p in (self.path, self.text, *labels) if p]

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v):
        import re

        for name in v if isinstance(v, dict) else ():
            if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
                raise ValueError(f"label set name '{name}': use letters, digits, '_', '.', '-'")
        return v

    @model_validator(mode="after")
    def _one(self):
        if sum(bool(x) for x in (self.path, self.loader, self.text)) != 1:
            raise ValueError("give exactly one of 'path', 'loader' or 'text'")
        if self.text and self.mode == "stream":
            raise ValueError("mode: text data is batch data (one example per line); stream mode needs arrays")
        if self.loader and ":" not in self.loader:
            raise ValueError("loader must look like 'module:function'")
        return self


class DataSection(Strict):
    calibration: DataSource | None = Field(None, description="Samples for static quantization and self-quantizing targets.")
    validation: DataSource | None = Field(None, description="Samples (and labels) the FP32 reference and every target are validated on.")
    training: DataSource | None = Field(None, description="Samples (and labels) for fine-tuning and distillation.")


# ---------------------------------------------------------------- gates, package, publish


GATE_NAMES = ("max_accuracy_drop", "min_cosine", "max_p90_ms", "max_size_mb", "min_quantized_fraction", "max_latency_ratio_vs_fp32")


class Gates(Strict):
    max_accuracy_drop: float | None = Field(None, ge=0, description="Top-1 drop vs FP32 on the classifier output, as a fraction (0.01 = 1 point).")
    min_cosine: CosineGate | None = Field(None, description="Centred cosine to FP32 (a number: the mean over samples).")
    max_p90_ms: float | None = Field(None, gt=0, description="Largest p90 latency (ms) on each device.")
    max_size_mb: float | None = Field(None, gt=0, description="Largest artifact size (MB, 10^6 bytes).")
    min_quantized_fraction: float | None = Field(
        None, ge=0, le=1, description="Share of the weights (by parameter count) the optimize chain's quantize passes must have quantized, for targets built from it.")
    max_latency_ratio_vs_fp32: float | None = Field(None, gt=0, description="p50 latency of a non-fp32 target over its FP32 counterpart's on the same device (docs/recipe.md).")
    metrics: dict[str, MetricGate] = Field(default_factory=dict, description="Per `evaluate:` metric name: max_drop, min, max.")
    waive: list[str] = Field(default_factory=list, description=f"Gates reported but not enforced: {', '.join(GATE_NAMES)} or metrics.NAME.")

    @field_validator("min_cosine")
    @classmethod
    def _cos_range(cls, v):
        if isinstance(v, (int, float)) and not -1 <= v <= 1:
            raise ValueError("min_cosine must be between -1 and 1")
        return v

    @field_validator("waive")
    @classmethod
    def _waivable(cls, v):
        for w in v:
            if w not in GATE_NAMES and not w.startswith("metrics."):
                raise ValueError(f"cannot waive '{w}': give one of {', '.join(GATE_NAMES)} or metrics.NAME")
        return v

    @property
    def cosine(self) -> MinCosine | None:
        """min_cosine as its full form (a bare number is the mean over samples)."""
        v = self.min_cosine
        return MinCosine(min=v) if isinstance(v, (int, float)) else v


class Package(Strict):
    key: str | None = Field(None, description="EC private key (PEM). Default: $EDGEPACK_HOME/keys/signing-key.pem.")
    certificate: str | None = Field(None, description="X.509 signing certificate of the key (PEM), for company-PKI trust.")
    certificate_chain: list[str] = Field(default_factory=list, description="CA certificates (PEM) up to the root, for the certificate.")
    output: str | None = Field(None, description="Bundle directory (default dist/<name>-<version>).")

    @model_validator(mode="after")
    def _chain_needs_cert(self):
        if self.certificate_chain and not self.certificate:
            raise ValueError("certificate_chain needs 'certificate' (the signing certificate)")
        return self


class Publish(Strict):
    registry: str | None = Field(None, description="layout:PATH (default $EDGEPACK_HOME/registry/<name>).")
    enabled: bool = Field(True, description="Publish the signed bundle (--no-publish overrides).")
    allow_partial: bool = Field(False, description="Publish the version tag even when some targets failed (default: the bundle is written and signed, not published).")


class Benchmark(Strict):
    warmup_runs: int = Field(10, ge=0, description="Warm-up: at most this many untimed runs (it also stops after warmup_seconds).")
    warmup_seconds: float = Field(0.2, ge=0, description="Warm-up: at most this long (at least one run); the first bound reached ends it.")
    runs: int = Field(50, ge=1, description="Timing: at least this many runs, and ...")
    min_seconds: float = Field(0.5, ge=0, description="... at least this long (both are honoured; max_runs only caps).")
    max_runs: int = Field(100000, ge=1, description="Cap on timed runs; when it stops the timing before runs/min_seconds, timed.stopped_by says max_runs.")
    noisy_spread: float = Field(0.25, gt=0, description="Flag a run as noisy when (p90 - p50) / p50 of its timed runs is above this.")
    threads: int | None = Field(None, ge=1, description="Intra-op threads of the runtime (default: the runtime's own).")


def _default_targets() -> list[TargetSpec]:
    return [OnnxRuntimeSpec()]


class Recipe(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$", description="The model's name: lowercase letters, digits, '.', '_', '-' (the registry repository ends with it).")
    version: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$", description="The version published as the tag (immutable once published).")
    model: ModelSection = Field(description="The trained model and its inputs/outputs.")
    data: DataSection = Field(DataSection(), description="Calibration, validation and training samples.")
    optimize: list[OptimizePass] = Field(default_factory=list, description="Ordered optimization passes (quantize, prune, distill).")
    targets: list[TargetSpec] = Field(default_factory=lambda: _default_targets(), description="Compile targets, one per runtime and precision (edgepack/recipe_targets.py).")
    devices: list[str] = Field(default_factory=lambda: ["local"], description="Device profiles (names or paths).")
    evaluate: list[Metric] = Field(default_factory=list, description="Named task metrics, computed on FP32 and every target.")
    gates: Gates = Field(Gates(), description="Checks every target on every device must pass before signing and publishing.")
    benchmark: Benchmark = Field(Benchmark(), description="How latency is measured on devices.")
    package: Package = Field(Package(), description="Signing key, certificates and bundle folder.")
    publish: Publish = Field(Publish(), description="Where and whether the signed bundle is published.")
    card: Card | None = Field(None, description="Model card: intended use, limitations, training data, license (MODEL_CARD.md in the bundle).")
    generation: Generation | None = Field(None, description="text-generation models: prompts, prompt lengths and new tokens of the greedy device runs (docs/recipe.md).")

    @model_validator(mode="after")
    def _text_data(self):
        check_hf_recipe(self)
        return self

    @model_validator(mode="after")
    def _unique_targets(self):
        seen = set()
        for t in self.targets:
            if t.id in seen:
                raise ValueError(f"two targets are named '{t.id}': give each a distinct 'name'")
            seen.add(t.id)
        return self

    @model_validator(mode="after")
    def _generation(self):
        decoder = str(getattr(getattr(self.model, "task", None), "value", getattr(self.model, "task", None))) == "text-generation"
        if decoder and self.generation is None:
            raise ValueError("model.task text-generation needs a generation: section (at least generation.prompts: a text file)")
        if self.generation is not None and not decoder:
            raise ValueError("generation: applies to text-generation models (model.format: hf, model.task: text-generation)")
        for i, t in enumerate(self.targets if not decoder else ()):
            if t.type is TargetType.EXECUTORCH and t.precision == "int4":
                raise ValueError(f"targets[{i}].precision: int4 (torchao 8da4w) is for text-generation models; use fp32 or int8")
            if getattr(t.options, "weight_compression", None) is not None:
                raise ValueError(f"targets[{i}].options.weight_compression: applies to text-generation models only (model.task: text-generation); remove it")
        for i, t in enumerate(self.targets if decoder else ()):
            if t.type not in (TargetType.ONNXRUNTIME, TargetType.OPENVINO, TargetType.EXECUTORCH):
                raise ValueError(f"targets[{i}]: text-generation models build for types onnxruntime, openvino and executorch so far, not '{t.type.value}'")
        return self


# The loader (edgepack/recipe_load.py), re-exported: callers import everything recipe-related from here.
from .recipe_load import LoadedRecipe as LoadedRecipe  # noqa: E402
from .recipe_load import json_schema as json_schema  # noqa: E402
from .recipe_load import load_recipe as load_recipe  # noqa: E402
from .recipe_load import parse_recipe as parse_recipe  # noqa: E402

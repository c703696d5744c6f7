"""Recipe surface of `targets:`: one model per target type, discriminated on ``type``.

Each type has its own ``precision`` choices and its own ``options`` model (frozen, extra="forbid",
strict types), so the JSON Schema completes and checks them and a typo reads
``recipe.yaml:14:7 targets[1].options.io_type: unknown key (did you mean 'io_dtype'?)``.
A validator that checks two fields together names the field first (``"options.io_dtype: ..."``):
the loader (edgepack/recipe_load.py) moves the error position to that field.

Adding a target type (docs/design.md "Adding a target type"): a TargetType member, an options model and
a spec model below (its ``stage`` and ``extra`` class variables name the compile stage and pip extra),
and one entry in TARGET_SPECS.
"""


import enum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, TypeAdapter, model_validator


class TargetType(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TFLITE = "tflite"
    OPENVINO = "openvino"
    COREML = "coreml"
    TENSORRT = "tensorrt"
    WEB = "web"
    EXECUTORCH = "executorch"


class TargetInput(str, enum.Enum):
    OPTIMIZED = "optimized"  # the output of the recipe's optimize chain (default)
    FP32 = "fp32"  # the converted FP32 ONNX model, for targets that quantize themselves


def _option_needs_precision(target, option: str, precision: str):
    """A target's validator: ``options.OPTION`` set on a target whose precision is not ``precision`` is an error."""
    if getattr(target.options, option) is not None and target.precision != precision:
        raise ValueError(f"options.{option}: only applies to precision {precision} (this target is {target.precision or 'fp32'}); "
                         f"remove {option} or set precision: {precision}")
    return target


class _Options(BaseModel):
    """Target options: strict (a bool is true/false, not 'yes'), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


TIMEOUT = Field(None, description="Seconds the compile may take before it is stopped (default: the target's own).")


class TargetBase(BaseModel):
    """Fields every target has. Subclasses narrow ``type``, ``precision`` and ``options``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    type: TargetType = Field(description="The compile target (runtime) this entry builds for.")
    name: str | None = Field(None, description="Unique name (default: the type).")
    input: TargetInput = Field(TargetInput.OPTIMIZED, description="optimized: the optimize chain's output; fp32: the converted FP32 model (targets that quantize themselves).")
    precision: str | None = Field(None, description="Target-specific precision (fp32, fp16, int8, ...).")
    options: _Options = Field(default_factory=_Options, description="Target-specific options.")

    stage: ClassVar[str] = ""  # "module:Class" of the compile stage (edgepack/targets/)
    extra: ClassVar[str | None] = None  # the pip extra its backend comes from (None: the core install)

    @property
    def id(self) -> str:
        return self.name or self.type.value

    def options_set(self) -> dict[str, Any]:
        """The options the recipe gave (not the defaults): what the stage cache key holds."""
        return self.options.model_dump(mode="json", exclude_unset=True)


# ---------------------------------------------------------------- ONNX Runtime


class OnnxRuntimeOptions(_Options):
    ort_format: bool = Field(False, description="Also ship model.ort (ONNX Runtime's mobile/minimal-build format); devices validate that file.")
    ort_optimization: Literal["fixed", "runtime"] = Field("fixed", description="ort_format: optimization style of onnxruntime's converter.")

    @model_validator(mode="after")
    def _needs_ort_format(self):
        if "ort_optimization" in self.model_fields_set and not self.ort_format:
            raise ValueError("ort_optimization: only applies with ort_format: true")
        return self


class OnnxRuntimeSpec(TargetBase):
    """The optimized ONNX model, checked to load in an ONNX Runtime session."""

    type: Literal[TargetType.ONNXRUNTIME] = Field(TargetType.ONNXRUNTIME, description="onnxruntime")
    precision: str | None = Field(None, description="A label for the model's precision (default: read from the model, fp32 or int8).")
    options: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions, description="ONNX Runtime options.")
    stage: ClassVar[str] = "edgepack.targets.onnxruntime:OnnxRuntimeTarget"


# ---------------------------------------------------------------- TFLite


class TFLiteOptions(_Options):
    io_dtype: Literal["int8", "uint8", "float32"] | None = Field(None, description="precision int8 only: the model's input/output type (default int8).")
    quant_type: Literal["per-channel", "per-tensor"] = Field("per-channel", description="int8: weight quantization granularity.")
    keep_nchw: bool = Field(False, description="Keep NCHW inputs (default: 3-D/4-D/5-D inputs become channels-last).")
    xnnpack: bool = Field(True, description="Run with the XNNPACK delegate on devices.")
    timeout_s: PositiveFloat | None = TIMEOUT


class TFLiteSpec(TargetBase):
    """A .tflite flatbuffer converted from the ONNX model (onnx2tf + the TFLite converter)."""

    type: Literal[TargetType.TFLITE] = Field(description="tflite")
    precision: Literal["fp32", "fp16", "int8-dynamic", "int8"] | None = Field(
        None, description="fp32 (default), fp16, int8-dynamic (weights), int8 (full integer, needs data.calibration).")
    options: TFLiteOptions = Field(default_factory=TFLiteOptions, description="TFLite options.")
    stage: ClassVar[str] = "edgepack.targets.tflite:TFLiteTarget"
    extra: ClassVar[str | None] = "tflite"

    @model_validator(mode="after")
    def _io_dtype(self):
        return _option_needs_precision(self, "io_dtype", "int8")


# ---------------------------------------------------------------- OpenVINO


class WeightCompression(_Options):
    """precision int4 of a text-generation model: how NNCF chooses the int4 weights (targets/openvino_decoder.py)."""

    algorithm: Literal["rtn", "awq"] = Field("rtn", description=(
        "rtn: round to nearest, data-free (default); awq: NNCF's activation-aware weight quantization (data-aware), "
        "on generation.calibration (default: the prompts), each text a prefill from an empty cache."))
    scale_estimation: bool = Field(False, description="awq: also NNCF's scale estimation (fits each group's scale to the layer's output on the calibration text; slower).")
    samples: PositiveInt = Field(32, description="awq: at most this many calibration texts.")

    @model_validator(mode="after")
    def _awq_only(self):
        extra = sorted({"scale_estimation", "samples"} & self.model_fields_set)
        if extra and self.algorithm != "awq":
            raise ValueError(f"{extra[0]}: only applies with algorithm: awq")
        return self


class OpenVINOOptions(_Options):
    inference_precision: Literal["f32", "bf16", "f16"] = Field("f32", description="The CPU plugin's INFERENCE_PRECISION_HINT on devices.")
    device: str = Field("CPU", description="OpenVINO device the runner compiles for.")
    subset_size: PositiveInt = Field(300, description="int8: NNCF calibration samples (at most the calibration set).")
    preset: Literal["performance", "mixed"] = Field("performance", description="int8: NNCF preset (symmetric / asymmetric activations).")
    fast_bias_correction: bool = Field(True, description="int8: NNCF fast bias correction.")
    weight_compression: WeightCompression | None = Field(None, description="int4 (text-generation): NNCF's weight compression method, rtn (default) or awq.")
    timeout_s: PositiveFloat | None = TIMEOUT


class OpenVINOSpec(TargetBase):
    """OpenVINO IR (model.xml + model.bin); int8 by NNCF post-training quantization."""

    type: Literal[TargetType.OPENVINO] = Field(description="openvino")
    precision: Literal["fp32", "fp16", "int8", "int4"] | None = Field(
        None, description="fp32 (default), fp16 (compressed weights), int8 (NNCF, needs data.calibration; text-generation: weight-only), "
                          "int4 (text-generation only: NNCF weight compression).")
    options: OpenVINOOptions = Field(default_factory=OpenVINOOptions, description="OpenVINO options.")
    stage: ClassVar[str] = "edgepack.targets.openvino:OpenVINOTarget"
    extra: ClassVar[str | None] = "openvino"

    @model_validator(mode="after")
    def _weight_compression(self):
        return _option_needs_precision(self, "weight_compression", "int4")


# ---------------------------------------------------------------- Core ML


class CoreMLOptions(_Options):
    minimum_deployment_target: Literal["iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15"] = Field(
        "iOS16", description="Oldest OS the .mlpackage runs on (int8 and palettized weights need iOS16 / macOS13).")
    frontend: Literal["auto", "pytorch", "onnx"] = Field("auto", description="auto: pytorch for PyTorch sources, else onnx (through onnx2tf).")
    palette_bits: Literal[1, 2, 3, 4, 6, 8] = Field(6, description="palettized: bits per weight (k-means look-up table).")
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = Field("ALL", description="Core ML compute units on devices.")
    weight_threshold: PositiveInt = Field(2048, description="int8/palettized: weights with fewer elements stay float.")
    timeout_s: PositiveFloat | None = TIMEOUT


class CoreMLSpec(TargetBase):
    """A Core ML .mlpackage (coremltools); predicts on macOS only."""

    type: Literal[TargetType.COREML] = Field(description="coreml")
    precision: Literal["fp16", "fp32", "int8", "palettized"] | None = Field(None, description="fp16 (default), fp32, int8 (weights), palettized.")
    options: CoreMLOptions = Field(default_factory=CoreMLOptions, description="Core ML options.")
    stage: ClassVar[str] = "edgepack.targets.coreml:CoreMLTarget"
    extra: ClassVar[str | None] = "coreml"

    @model_validator(mode="after")
    def _deployment_target(self):
        dt = self.options.minimum_deployment_target
        if self.precision in ("int8", "palettized") and dt in ("iOS15", "macOS12"):
            raise ValueError(f"options.minimum_deployment_target: {self.precision} weights need iOS16 / macOS13 or newer, got {dt}; "
                             "set minimum_deployment_target: iOS16")
        return self


# ---------------------------------------------------------------- TensorRT


class TrtProfile(_Options):
    """One optimization profile input: the smallest, typical and largest shapes the engine takes."""

    min: list[PositiveInt] = Field(description="Smallest shape.")
    opt: list[PositiveInt] = Field(description="Shape the engine is tuned for.")
    max: list[PositiveInt] = Field(description="Largest shape.")

    @model_validator(mode="after")
    def _ordered(self):
        dims = [self.min, self.opt, self.max]
        if len({len(d) for d in dims}) != 1:
            raise ValueError(f"min, opt and max must have the same rank, got {dims}")
        if not all(a <= b <= c for a, b, c in zip(*dims)):
            raise ValueError(f"needs min <= opt <= max in every dimension, got {dims}")
        return self


class TensorRTOptions(_Options):
    workspace_mb: PositiveInt = Field(1024, description="Builder workspace (MiB).")
    dla_core: Annotated[int, Field(ge=0)] | None = Field(None, description="DLA core index (0, 1) on Jetson AGX/NX; fp16 or int8 only.")
    allow_gpu_fallback: bool = Field(True, description="dla_core: layers the DLA cannot run go to the GPU.")
    profile: dict[str, TrtProfile] | None = Field(None, description="Per dynamic input name: min/opt/max shapes of the optimization profile.")
    shapes: dict[str, list[PositiveInt]] | None = Field(None, description="Per input name: the fixed shape to build for (instead of a profile).")
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] | None = Field(None, description="TensorRT builder optimization level 0..5.")
    engine_cache: str | None = Field(None, description="Folder on the device where built engines are cached (default $EDGEPACK_TRT_CACHE or ~/.cache/edgepack/tensorrt).")
    timeout_s: PositiveFloat | None = TIMEOUT


class TensorRTSpec(TargetBase):
    """An ONNX model plus build spec; the engine is built on the device (GPU) at validation."""

    type: Literal[TargetType.TENSORRT] = Field(description="tensorrt")
    precision: Literal["fp32", "fp16", "int8"] | None = Field(None, description="fp32, fp16, int8 (Q/DQ); default: from the model.")
    options: TensorRTOptions = Field(default_factory=TensorRTOptions, description="TensorRT options.")
    stage: ClassVar[str] = "edgepack.targets.tensorrt:TensorRTTarget"
    extra: ClassVar[str | None] = "tensorrt"

    @model_validator(mode="after")
    def _dla(self):
        if self.options.dla_core is not None and (self.precision or "fp16") == "fp32":
            raise ValueError("options.dla_core: the DLA runs fp16 or int8 only, this target is fp32; set precision: fp16 or int8, or leave dla_core out")
        return self


# ---------------------------------------------------------------- browser (onnxruntime-web)


class WebOptions(_Options):
    ort_format: bool = Field(False, description="Ship model.ort beside model.onnx (onnxruntime's converter) and run that file in the page.")
    execution_provider: Literal["wasm", "webgpu"] = Field("wasm", description=(
        "onnxruntime-web backend the page asks for: wasm, or webgpu with wasm as the fallback where the browser has no WebGPU adapter."))


class WebSpec(TargetBase):
    """The ONNX model (optionally .ort) with a self-contained runner page (index.html + runner.js) for onnxruntime-web."""

    type: Literal[TargetType.WEB] = Field(description="web")
    precision: str | None = Field(None, description="A label for the model's precision (default: read from the model, fp32 or int8).")
    options: WebOptions = Field(default_factory=WebOptions, description="onnxruntime-web options.")
    stage: ClassVar[str] = "edgepack.targets.web:WebTarget"


# ---------------------------------------------------------------- ExecuTorch


class ExecuTorchOptions(_Options):
    partitioner: Literal["xnnpack", "none"] = Field(
        "xnnpack", description="xnnpack: delegate what XNNPACK takes (the rest runs on the portable kernels); none: portable kernels only.")
    per_channel: bool = Field(True, description="int8: per-channel weight scales (XNNPACK quantizer).")
    calibration_samples: PositiveInt = Field(200, description="int8: at most this many calibration samples (PT2E observers).")
    group_size: PositiveInt = Field(32, description="int4 (text-generation): weights quantized in groups of this many input channels.")
    timeout_s: PositiveFloat | None = TIMEOUT


class ExecuTorchSpec(TargetBase):
    """An ExecuTorch .pte program from the PyTorch source (torch.export, XNNPACK delegate), in the executorch toolchain."""

    type: Literal[TargetType.EXECUTORCH] = Field(description="executorch")
    input: Literal[TargetInput.FP32] = Field(
        TargetInput.FP32, description="always fp32: ExecuTorch lowers (and quantizes) the PyTorch source itself, not the optimize chain's ONNX model.")
    precision: Literal["fp32", "int8", "int4"] | None = Field(
        None, description="fp32 (default), int8 (PT2E static, XNNPACK quantizer, needs data.calibration; text-generation: "
                          "torchao 8da8w, int8 weights per channel), int4 (text-generation only: torchao 8da4w, int4 weights per group).")
    options: ExecuTorchOptions = Field(default_factory=ExecuTorchOptions, description="ExecuTorch options.")
    stage: ClassVar[str] = "edgepack.targets.executorch:ExecuTorchTarget"
    extra: ClassVar[str | None] = "executorch"


# ---------------------------------------------------------------- the table

TARGET_SPECS: dict[TargetType, type[TargetBase]] = {
    TargetType.ONNXRUNTIME: OnnxRuntimeSpec,
    TargetType.TFLITE: TFLiteSpec,
    TargetType.OPENVINO: OpenVINOSpec,
    TargetType.COREML: CoreMLSpec,
    TargetType.TENSORRT: TensorRTSpec,
    TargetType.WEB: WebSpec,
    TargetType.EXECUTORCH: ExecuTorchSpec,
}

if TYPE_CHECKING:  # a static checker sees the common base; pydantic the union of the table's models
    TargetSpec = TargetBase
else:
    TargetSpec = Annotated[Union[tuple(TARGET_SPECS.values())], Field(discriminator="type")]
_ADAPTER: TypeAdapter = TypeAdapter(TargetSpec)


def Target(**fields) -> TargetBase:  # noqa: N802 - reads like the model it builds
    """One target from keyword fields (``Target(type=TargetType.TFLITE, precision="int8")``): the spec
    model of its type, validated (a pydantic ValidationError on bad fields)."""
    return _ADAPTER.validate_python(fields)


def spec_for(node: Any) -> type[TargetBase] | None:
    """The spec model of one `targets:` item (YAML mapping), for 'did you mean' hints."""
    if not isinstance(node, dict):
        return None
    try:
        return TARGET_SPECS.get(TargetType(node.get("type")))
    except ValueError:
        return None

"""Recipe surface of `evaluate:` (named task metrics) and of the metric gates (`gates.metrics`, `min_cosine`).

A metric is a builtin, discriminated on ``type`` (each with its own typed parameters), or a user function
(``fn: module:function``). The numbers are computed by edgepack/validate/metrics.py.
"""


from typing import TYPE_CHECKING, Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


def _entry(v: str, field: str) -> str:
    if ":" not in v:
        raise ValueError(f"{field} must look like 'module:function'")
    return v


# ---------------------------------------------------------------- decodes (text metrics)


class CtcGreedyDecode(_Strict):
    """Argmax per step, collapse repeats, drop the blank; class indices other than the blank map to the charset in order."""

    type: Literal["ctc_greedy"] = Field(description="ctc_greedy")
    charset: str | None = Field(None, description="Text file, one token per line (relative to the recipe).")
    characters: str | None = Field(None, description="The tokens inline, one character each (instead of charset).")
    blank: int = Field(0, ge=0, description="Class index of the CTC blank.")

    @model_validator(mode="after")
    def _one(self):
        if (self.charset is None) == (self.characters is None):
            raise ValueError("give exactly one of 'charset' (a file) or 'characters' (inline)")
        return self


class FnDecode(_Strict):
    """A user decode: f(output: ndarray [N, ...]) -> list[str] (one string per sample)."""

    fn: str = Field(description="module:function(output) -> list[str], one string per sample.")

    _e = field_validator("fn")(lambda cls, v: _entry(v, "decode.fn"))


def _decode_tag(v):
    if isinstance(v, dict):
        return "FnDecode" if "fn" in v and "type" not in v else "CtcGreedyDecode"
    return type(v).__name__


Decode = Annotated[Union[Annotated[CtcGreedyDecode, Tag("CtcGreedyDecode")], Annotated[FnDecode, Tag("FnDecode")]], Discriminator(_decode_tag)]


# ---------------------------------------------------------------- metrics


class _Metric(_Strict):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="Unique name (default: the type).")
    output: str | None = Field(None, description="The model output read (may be omitted when the model has one output).")
    primary: bool = Field(False, description="Shown in the summary table (default: the first metric).")

    needs_labels: ClassVar[bool] = True
    HIGHER: ClassVar[bool] = True

    def higher(self) -> bool:
        """Whether a higher value is better."""
        return self.HIGHER

    @property
    def id(self) -> str:
        return self.name or self.type  # type: ignore[attr-defined]

    def wants_labels(self) -> bool:
        return self.needs_labels and getattr(self, "against", "labels") == "labels"


class _Labelled(_Metric):
    labels: str | None = Field(None, description="Label set name (may be omitted when the data has one label set).")


class Top1(_Labelled):
    type: Literal["top1"] = Field(description="top1")


class TopK(_Labelled):
    type: Literal["topk"] = Field(description="topk")
    k: int = Field(5, ge=1, description="A hit when the label is among the k best classes.")


class _Binary(_Labelled):
    positive: int = Field(1, ge=0, description="[N, 2] outputs: the column of the positive class (a label equal to it is positive).")
    scores: Literal["probability", "logit"] = Field("probability", description="logit: a sigmoid ([N]/[N,1]) or softmax ([N,2]) is applied first.")


class BinaryAccuracy(_Binary):
    type: Literal["binary_accuracy"] = Field(description="binary_accuracy")
    threshold: float = Field(0.5, description="Positive when the score is above this.")


class F1(_Binary):
    type: Literal["f1"] = Field(description="f1")
    threshold: float = Field(0.5, description="Positive when the score is above this.")


class RocAuc(_Binary):
    type: Literal["roc_auc"] = Field(description="roc_auc")


class TextMetric(_Labelled):
    """exact_match / cer / wer between decoded strings and label strings (exact_match without decode: argmax rows)."""

    type: Literal["exact_match", "cer", "wer"] = Field(description="exact_match, cer or wer (over decoded text).")
    decode: Decode | None = Field(None, description="How an output becomes text.")

    def higher(self) -> bool:
        return self.type == "exact_match"

    @model_validator(mode="after")
    def _decode(self):
        if self.decode is None and self.type != "exact_match":
            raise ValueError(f"'{self.type}' needs 'decode' ({{type: ctc_greedy, charset: FILE, blank: 0}} or {{fn: module:function}})")
        return self


class Mse(_Labelled):
    type: Literal["mse"] = Field(description="mse")
    against: Literal["labels", "reference"] = Field("labels", description="Compare with the label arrays, or with the FP32 outputs.")
    HIGHER: ClassVar[bool] = False


class Psnr(_Labelled):
    type: Literal["psnr"] = Field(description="psnr")
    max_value: float = Field(1.0, gt=0, description="Peak signal value (1.0 for [0,1] images, 255 for 8-bit).")
    against: Literal["labels", "reference"] = Field("labels", description="labels (targets in data) or reference (the FP32 outputs).")


class EmbeddingCosine(_Labelled):
    type: Literal["embedding_cosine"] = Field(description="embedding_cosine")
    against: Literal["reference", "labels"] = Field("reference", description="FP32 embeddings, or label embeddings [N, D].")


class RecallAtK(_Labelled):
    """Retrieval: against reference, query i must find FP32 item i in its top k; against class labels [N], a
    neighbour (other than itself) with the same label; against label embeddings [N, D], label item i."""

    type: Literal["recall_at_k"] = Field(description="recall_at_k")
    k: int = Field(1, ge=1, description="Neighbours considered.")
    against: Literal["reference", "labels"] = Field("reference", description="reference (the FP32 embeddings' neighbours) or labels.")


class FidelityMetric(_Metric):
    """Per-sample fidelity to the FP32 outputs: centred cosine, max / mean abs error, top-1 agreement."""

    type: Literal["cosine", "max_abs_error", "mean_abs_error", "top1_agreement"] = Field(description="cosine, max_abs_error, mean_abs_error or top1_agreement (vs FP32).")
    centred: bool = Field(True, description="cosine: subtract the FP32 per-output mean over samples first.")
    needs_labels: ClassVar[bool] = False

    def higher(self) -> bool:
        return self.type in ("cosine", "top1_agreement")


class TokenMetric(_Metric):
    """text-generation only (model.task: text-generation), against the FP32 PyTorch model on generation.prompts:
    token_agreement (teacher-forced greedy next tokens), greedy_match (whole greedy continuations),
    perplexity (on generation.perplexity)."""

    type: Literal["token_agreement", "greedy_match", "perplexity"] = Field(
        description="token_agreement, greedy_match or perplexity (text-generation; vs the FP32 PyTorch model).")
    needs_labels: ClassVar[bool] = False

    def higher(self) -> bool:
        return self.type != "perplexity"


class FnMetric(_Metric):
    """A user metric: f(outputs: dict[name, ndarray], labels) -> float | dict[str, float]."""

    fn: str = Field(description="module:function returning a float or a dict of floats.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", description="Unique name (default: the function name).")
    outputs: list[str] | None = Field(None, min_length=1, description="Outputs passed (default: all, or 'output').")
    labels: str | None = Field(None, description="Label set passed (default: the only one, or all as a dict).")
    higher_is_better: bool = Field(description="Whether a higher value is better (for drops and gates).")

    def higher(self) -> bool:
        return self.higher_is_better

    _e = field_validator("fn")(lambda cls, v: _entry(v, "fn"))

    @property
    def id(self) -> str:
        return self.name or self.fn.partition(":")[2]

    def wants_labels(self) -> bool:
        return False

    @model_validator(mode="after")
    def _one_output_field(self):
        if self.output and self.outputs:
            raise ValueError("give 'output' or 'outputs', not both")
        return self


BUILTINS: dict[str, type[_Metric]] = {
    "top1": Top1, "topk": TopK, "binary_accuracy": BinaryAccuracy, "f1": F1, "roc_auc": RocAuc,
    "exact_match": TextMetric, "cer": TextMetric, "wer": TextMetric, "mse": Mse, "psnr": Psnr,
    "embedding_cosine": EmbeddingCosine, "recall_at_k": RecallAtK,
    "cosine": FidelityMetric, "max_abs_error": FidelityMetric, "mean_abs_error": FidelityMetric, "top1_agreement": FidelityMetric,
    "token_agreement": TokenMetric, "greedy_match": TokenMetric, "perplexity": TokenMetric,
}
METRIC_TAGS = tuple(dict.fromkeys(c.__name__ for c in BUILTINS.values())) + ("FnMetric", "CtcGreedyDecode", "FnDecode", "MinCosine", "float")


def _metric_tag(v):
    if isinstance(v, BaseModel):
        return type(v).__name__
    if not isinstance(v, dict):
        return None
    if "fn" in v and "type" not in v:
        return "FnMetric"
    cls = BUILTINS.get(v.get("type"))
    return cls.__name__ if cls else None


if TYPE_CHECKING:  # a static checker sees the common base; pydantic the discriminated union
    Metric = _Metric
else:
    Metric = Annotated[
        Union[tuple(Annotated[c, Tag(c.__name__)] for c in dict.fromkeys(BUILTINS.values())) + (Annotated[FnMetric, Tag("FnMetric")],)],
        Discriminator(_metric_tag, custom_error_type="metric_type",
                      custom_error_message=f"'type' must be one of {', '.join(BUILTINS)} (or give 'fn: module:function')"),
    ]


def metric_model_for(node) -> type[BaseModel] | None:
    """The model of one `evaluate:` item (for 'did you mean' hints on unknown keys)."""
    tag = _metric_tag(node)
    models: list[type[BaseModel]] = [*BUILTINS.values(), FnMetric]
    return next((c for c in models if c.__name__ == tag), None)


# ---------------------------------------------------------------- gates


class MetricGate(_Strict):
    max_drop: float | None = Field(None, ge=0, description="Largest allowed drop vs FP32 (in the metric's worse direction).")
    min: float | None = Field(None, description="Smallest allowed value.")
    max: float | None = Field(None, description="Largest allowed value.")

    @model_validator(mode="after")
    def _some(self):
        if self.max_drop is None and self.min is None and self.max is None:
            raise ValueError("give at least one of 'max_drop', 'min', 'max'")
        return self


class MinCosine(_Strict):
    """Centred cosine to the FP32 outputs (see docs/design.md), aggregated over samples."""

    min: float = Field(ge=-1, le=1, description="Smallest allowed centred cosine (-1..1).")
    per_sample: str = Field("mean", pattern=r"^(mean|worst|p(100|[0-9]{1,2})(\.[0-9]+)?)$",
                            description="mean, worst (the lowest sample) or pN (the N-th percentile, e.g. p5).")
    output: str | None = Field(None, description="Only this output (default: every output, the lowest counts).")


def _cos_tag(v):
    return "float" if isinstance(v, (int, float, str)) and not isinstance(v, bool) else "MinCosine"


CosineGate = Annotated[Union[Annotated[float, Tag("float")], Annotated[MinCosine, Tag("MinCosine")]], Discriminator(_cos_tag)]

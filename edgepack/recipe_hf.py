"""Recipe surface of Hugging Face sources (``model.format: hf``): the task, the tokenizer settings and
the pooling of feature extraction. The loader is edgepack/ingest/hf.py.

A Hugging Face folder's inputs and outputs follow from its task, so ``model.inputs`` / ``outputs`` may be
left out: token ids and attention mask ``[batch, sequence]`` int64 in, ``embedding`` (pooled),
``last_hidden_state`` (pooling none) or ``logits`` (text classification) out.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import Field

from .recipe_base import Strict


class HfTask(str, enum.Enum):
    FEATURE_EXTRACTION = "feature-extraction"
    TEXT_CLASSIFICATION = "text-classification"
    TEXT_GENERATION = "text-generation"


class Pooling(str, enum.Enum):
    MEAN = "mean"  # mean of the last hidden state over the attention mask
    CLS = "cls"  # the first token's hidden state
    NONE = "none"  # the last hidden state itself, [batch, sequence, hidden]


class TokenizerSettings(Strict):
    """How text data (``data.<role>.text``) becomes the model's token ids."""

    max_length: int = Field(128, ge=2, le=65536, description="Tokens per example, special tokens included.")
    padding: Literal["max_length", "longest"] = Field(
        "max_length", description="max_length: every example padded to max_length (one fixed shape for every file and target); "
        "longest: padded to the longest example of each file.")
    truncation: bool = Field(True, description="Cut examples longer than max_length (false: such a line is an error naming it).")


HF_FIELDS = ("task", "tokenizer", "pooling", "normalize")  # ModelSection fields of hf sources only
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def default_inputs() -> list[dict]:
    """input_ids and attention_mask, [batch, sequence] int64 (one text per example: token_type_ids would be all zeros)."""
    return [{"name": n, "shape": ["batch", "sequence"], "dtype": "int64"} for n in SEQUENCE_INPUTS[:2]]


def default_outputs(task: str | None, pooling: str | None) -> list[str] | None:
    if task == HfTask.FEATURE_EXTRACTION.value:
        return ["last_hidden_state"] if pooling == Pooling.NONE.value else ["embedding"]
    if task == HfTask.TEXT_CLASSIFICATION.value:
        return ["logits"]
    return None  # text-generation: its exporter names them


def hf_defaults(data):
    """ModelSection, before validation: an hf source's default inputs, outputs and pooling."""
    if not isinstance(data, dict) or data.get("format") != "hf":
        return data
    data = dict(data)
    task = data.get("task")
    task = getattr(task, "value", task)
    if task == HfTask.FEATURE_EXTRACTION.value and data.get("pooling") is None:
        data["pooling"] = Pooling.MEAN.value
    if data.get("inputs") is None and task != HfTask.TEXT_GENERATION.value:
        data["inputs"] = default_inputs()
    if data.get("outputs") is None:
        pooling = data.get("pooling")
        outs = default_outputs(task, getattr(pooling, "value", pooling))
        if outs is not None:
            data["outputs"] = outs
    return data


def check_hf(model) -> None:
    """ModelSection, after validation: hf fields only with format hf; what an hf source needs."""
    if model.format.value != "hf":
        for name in HF_FIELDS[:3]:
            if getattr(model, name) is not None:
                raise ValueError(f"{name}: only applies to format 'hf' (Hugging Face folders)")
        if model.normalize:
            raise ValueError("normalize: only applies to format 'hf' (Hugging Face folders)")
        return
    if model.task is None:
        raise ValueError("task: format 'hf' needs a task: feature-extraction, text-classification or text-generation")
    if model.pooling is not None and model.task is not HfTask.FEATURE_EXTRACTION:
        raise ValueError(f"pooling: only applies to task feature-extraction, not {model.task.value}")
    if model.normalize and model.pooling in (None, Pooling.NONE):
        raise ValueError("normalize: L2-normalizes a pooled embedding; it needs pooling mean or cls")
    if model.entrypoint or model.weights:
        raise ValueError("format 'hf' reads config, weights and tokenizer from the folder in 'path'; remove entrypoint/weights")
    for spec in model.inputs:
        if spec.dtype.value != "int64" and spec.value is None:
            raise ValueError(f"inputs: '{spec.name}' has dtype {spec.dtype.value}; a Hugging Face model takes int64 token ids and masks (dtype: int64)")


def check_hf_recipe(recipe) -> None:
    """Recipe, after validation: text data needs an hf source; ExecuTorch's program has one fixed sequence length."""
    for role in ("calibration", "validation", "training"):
        src = getattr(recipe.data, role)
        if src is not None and src.text and recipe.model.format.value != "hf":
            raise ValueError(f"data.{role}.text: text data is tokenized by a Hugging Face tokenizer; it needs model.format hf "
                             f"(this recipe's is {recipe.model.format.value}); give .npy/.npz arrays instead")
    tok = recipe.model.tokenizer
    if tok is not None and tok.padding == "longest" and any(t.type.value == "executorch" for t in recipe.targets):
        raise ValueError("model.tokenizer.padding: 'longest' gives each text file its own length, and the ExecuTorch program "
                         "has one fixed shape; use padding: max_length with an executorch target")


def tokenizer_settings(model) -> TokenizerSettings:
    return model.tokenizer or TokenizerSettings()


__all__ = ["HfTask", "Pooling", "TokenizerSettings", "check_hf", "check_hf_recipe", "default_inputs", "hf_defaults", "tokenizer_settings"]

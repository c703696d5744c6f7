"""Recipe surface of `generation:` (text-generation models: model.format hf, model.task text-generation).

Prompts and calibration text: one example per line (an empty line is an error); the perplexity file is read
whole. All are tokenized with the model folder's
tokenizer; the device runs are greedy, so every runtime's tokens are comparable.
"""


from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Generation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: str = Field(description="Validation prompts: a text file, one prompt per line (relative to the recipe). "
                         "token_agreement and greedy_match are computed on them.")
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many prompts.")
    prompt_lengths: list[int] = Field(default_factory=lambda: [16, 128], min_length=1,
                                      description="Prompt lengths (tokens) at which TTFT and decode tokens/s are measured.")
    new_tokens: int = Field(16, ge=2, le=4096, description="Tokens generated (greedy) per prompt, for timing and greedy_match.")
    runs: int = Field(3, ge=1, description="Timed generations per prompt length (after one warm-up).")
    perplexity: str | None = Field(None, description="A text file whose perplexity is computed (the perplexity metric).")
    perplexity_window: int = Field(128, ge=8, description="Perplexity: tokens per chunk (each chunk is scored from an empty cache).")
    calibration: str | None = Field(None, description="Calibration text for data-aware weight quantization (algorithm: gptq); default: the prompts.")
    runtime: Literal["onnxruntime", "onnxruntime-genai"] = Field(
        "onnxruntime", description="Who generates on the device: onnxruntime (edgepack's greedy loop over one session) or "
                                   "onnxruntime-genai (its generator; needs the genai toolchain).")

    @field_validator("prompt_lengths")
    @classmethod
    def _lengths(cls, v):
        if any(n < 1 for n in v):
            raise ValueError("prompt lengths must be positive")
        if len(set(v)) != len(v):
            raise ValueError(f"prompt lengths repeat: {v}")
        return v

    def files(self) -> list[str]:
        return [p for p in (self.prompts, self.perplexity, self.calibration) if p]

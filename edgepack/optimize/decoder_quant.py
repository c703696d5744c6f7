"""Weight-only quantization details: the MatMulNBits algorithm configs, and the token budget of KV-cache decoders.

``algo_config``: rtn (ONNX Runtime's default block quantizer: round to nearest, 4 or 8 bits), gptq (data-aware,
ONNX Runtime's bundled Intel Neural Compressor GPTQ, on calibration feeds), hqq (half-quadratic, data-free).
GPTQ's calibration: a text-generation build's calibration tokens (generation.calibration, default the prompts),
each a prefill from an empty cache; other models: data.calibration.

``token_effect``: for decoders the pass's before/after records get the token metrics of `evaluate:`
(token_agreement and greedy_match of the quantized model against the pass's input, perplexity of both), so
``gates.metrics.token_agreement.max_drop`` is the quantization budget (optimize/effect.budget_check).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadInputError


def _feeds(src: Path, sets: list[list[int]]) -> list[dict]:
    from ..devices.genrunner import OrtDecoder

    dec = OrtDecoder(str(src))
    out = []
    for ids in sets:
        feeds = dec._feeds(np.asarray([ids], np.int64), dec.empty(), 0)
        out.append(feeds)
    return out


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds: get_next / rewind, and
    iteration (the bundled GPTQ iterates a deep copy of it)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0

    def __iter__(self):
        return iter(self.feeds)


def calibration_sets(tokens, limit: int = 32) -> list[list[int]]:
    """The first ``limit`` calibration token sequences of a text-generation build (the "tokens" artifact:
    generation.calibration tokenized, default the prompts; validate/generation.py token_sets)."""
    return json.loads(Path(tokens.path).read_text())["calibration"][:limit]


def calibration_feeds(src: Path, inputs: dict, ctx) -> list[dict]:
    if "tokens" in inputs:
        return _feeds(src, calibration_sets(inputs["tokens"]))
    if "calibration" in inputs:
        from ..data import model_samples, read_npz

        return model_samples(ctx.model, read_npz(inputs["calibration"].path)[0], ctx.recipe_dir, limit=32)
    raise BadInputError("algorithm gptq is data-aware: it needs calibration data",
                        hint="add data.calibration (or generation.calibration / generation.prompts for text-generation)", where=ctx.where)


def algo_config(c, src: Path, inputs: dict, ctx, record: dict):
    from onnxruntime.quantization import matmul_nbits_quantizer as mq

    if c.algorithm == "gptq":
        feeds = calibration_feeds(src, inputs, ctx)
        record["calibration_samples"] = len(feeds)
        return mq.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader(feeds), block_size=c.block_size, op_types_to_quantize=("MatMul",))
    if c.algorithm == "hqq":
        return mq.HQQWeightOnlyQuantConfig(block_size=c.block_size, bits=4, op_types_to_quantize=("MatMul",))
    return mq.DefaultWeightOnlyQuantConfig(block_size=c.block_size, is_symmetric=c.symmetric_weights, accuracy_level=c.accuracy_level,
                                           op_types_to_quantize=("MatMul",), bits=c.bits)


def token_effect(src: Path, out: Path, tokens: Path, specs, before: dict, after: dict) -> None:
    """Token metrics of ``out`` against ``src`` (the pass's input) into the effect records' "metrics"."""
    from ..devices.genrunner import OrtDecoder, evaluate
    from ..validate import tokens as tm

    sets = json.loads(Path(tokens).read_text())
    n = int(sets.get("new_tokens", 8))
    ref = evaluate(OrtDecoder(str(src)), sets["validation"], sets["perplexity"], n)
    mine = evaluate(OrtDecoder(str(out)), sets["validation"], sets["perplexity"], n)
    b, a = tm.score(specs, ref, ref)["metrics"], tm.score(specs, mine, ref)["metrics"]
    before.setdefault("metrics", {}).update(b)
    after.setdefault("metrics", {}).update(a)

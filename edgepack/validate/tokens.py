"""Token metrics of a text-generation target against the FP32 PyTorch model (recipe `evaluate:` builtins).

    token_agreement  share of validation positions whose greedy next token (teacher-forced: every position
                     sees the prompt's own previous tokens, so one early difference does not cascade) equals
                     the PyTorch model's
    greedy_match     share of validation prompts whose whole greedy continuation equals the PyTorch model's
    perplexity       exp(mean NLL) of the tokens of `generation.perplexity` (lower is better)

``tokens``: what a run produced (genrunner.evaluate's shape: teacher_forced, continuations, nll, nll_tokens);
``reference``: the same from PyTorch FP32.
"""

from __future__ import annotations

import math

TYPES = ("token_agreement", "greedy_match", "perplexity")


def agreement(run: list[list[int]], ref: list[list[int]]) -> tuple[float | None, list[float]]:
    """Share of equal positions over all prompts, and per prompt."""
    hits = total = 0
    per = []
    for a, b in zip(run, ref):
        n = min(len(a), len(b))
        h = sum(1 for x, y in zip(a[:n], b[:n]) if x == y)
        hits, total = hits + h, total + n
        per.append(h / n if n else 0.0)
    return (hits / total if total else None), per


def exact(run: list[list[int]], ref: list[list[int]]) -> tuple[float | None, list[float]]:
    per = [1.0 if list(a) == list(b) else 0.0 for a, b in zip(run, ref)]
    return (sum(per) / len(per) if per else None), per


def perplexity(tokens: dict) -> float | None:
    n = tokens.get("nll_tokens") or 0
    return math.exp(tokens["nll"] / n) if n else None


def values(tokens: dict, reference: dict) -> dict:
    """{metric type: (value, per_sample)} of one run against the reference."""
    return {
        "token_agreement": agreement(tokens["teacher_forced"], reference["teacher_forced"]),
        "greedy_match": exact(tokens["continuations"], reference["continuations"]),
        "perplexity": (perplexity(tokens), None),
    }


def score(specs, tokens: dict, reference: dict) -> dict:
    """The 'accuracy' record of a run: every token metric in ``specs`` with the FP32 value and the drop."""
    from .metrics import primary_name
    from .scoring import report_entry

    mine, ref = values(tokens, reference), values(reference, reference)
    out = {}
    for spec in specs:
        if getattr(spec, "type", None) not in TYPES:
            continue
        v, per = mine[spec.type]
        res = {"value": v, "higher_is_better": spec.higher(), "type": spec.type, "per_sample": per}
        out[spec.id] = report_entry(res, {"value": ref[spec.type][0]})
    return {"metrics": out, "primary": primary_name(specs)}

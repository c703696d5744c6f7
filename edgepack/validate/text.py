"""Text metrics: exact match, character and word error rate over a decode (CTC greedy or a user function)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..recipe_evaluate import CtcGreedyDecode

TYPES = ("exact_match", "cer", "wer")


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (strings or lists of words)."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def read_charset(path: Path) -> list[str]:
    """One token per line; only the line break is stripped (a line holding one space is the space token)."""
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"{path} (decode.charset): cannot read the charset ({e.__class__.__name__}: {e})") from e
    if content.endswith("\n"):
        content = content[:-1]
    return [line.rstrip("\r") for line in content.split("\n")]


def ctc_greedy(logits: np.ndarray, tokens: list[str], blank: int, where: str = "decode") -> list[str]:
    """[N, T, C] scores -> one string per sample: argmax per step, collapse repeats, drop the blank.

    Class c (c != blank) is tokens[c] below the blank and tokens[c - 1] above it."""
    a = np.asarray(logits)
    if a.ndim != 3:
        raise BadInputError(f"ctc_greedy needs [N, T, classes] scores, got shape {list(a.shape)}", where=where)
    best = a.argmax(-1)
    out = []
    for row in best:
        chars, last = [], None
        for c in row.tolist():
            if c != last and c != blank:
                idx = c if c < blank else c - 1
                if idx >= len(tokens):
                    raise BadInputError(f"class {c} has no token ({len(tokens)} tokens, blank {blank})",
                                        hint="the charset needs one line per class other than the blank", where=where)
                chars.append(tokens[idx])
            last = c
        out.append("".join(chars))
    return out


def decode(spec, o: np.ndarray, base_dir) -> list[str]:
    d = spec.decode
    where = f"evaluate '{spec.id}' decode"
    if isinstance(d, CtcGreedyDecode):
        tokens = list(d.characters) if d.characters is not None else read_charset(Path(base_dir or ".") / str(d.charset))  # one of them is set
        return ctc_greedy(o, tokens, d.blank, where)
    from ..entrypoints import resolve

    fn = resolve(d.fn, Path(base_dir or "."), f"{where} fn")
    try:
        texts = list(fn(o))
    except Exception as e:
        raise BadInputError(f"{d.fn} raised {e.__class__.__name__}: {e}", where=where) from e
    if len(texts) != len(o):
        raise BadInputError(f"{d.fn} returned {len(texts)} strings for {len(o)} samples", where=where)
    return [str(t) for t in texts]


def label_strings(y: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(y).reshape(-1).tolist()]


def text_metric(spec, o: np.ndarray, y: np.ndarray, base_dir, result) -> dict:
    if spec.decode is None:  # exact_match on argmax rows vs label rows
        pred = np.asarray(o).argmax(-1).reshape(len(o), -1)
        ys = np.asarray(y).reshape(len(y), -1)
        hit = np.array([p.shape == t.shape and bool(np.all(p == t)) for p, t in zip(pred, ys)], dtype=np.float64)
        return result(spec, hit.mean(), hit)
    pred = decode(spec, o, base_dir)
    truth = label_strings(y)
    if len(truth) != len(pred):
        raise BadInputError(f"evaluate '{spec.id}': {len(truth)} label strings for {len(pred)} samples")
    if spec.type == "exact_match":
        hit = np.array([p == t for p, t in zip(pred, truth)], dtype=np.float64)
        return result(spec, hit.mean(), hit, examples=_examples(pred, truth))
    split = (lambda s: s.split()) if spec.type == "wer" else (lambda s: s)
    edits = np.array([edit_distance(split(p), split(t)) for p, t in zip(pred, truth)], dtype=np.float64)
    lengths = np.array([len(split(t)) for t in truth], dtype=np.float64)
    per = edits / np.maximum(lengths, 1)
    return result(spec, edits.sum() / max(lengths.sum(), 1.0), per, examples=_examples(pred, truth))


def _examples(pred, truth, n: int = 3) -> list[dict]:
    """A few mismatches, for the report (what the model read vs what it should have)."""
    return [{"decoded": p, "label": t} for p, t in zip(pred, truth) if p != t][:n]

"""Text data (``data.<role>.text``): one example per line, tokenized by the recipe's Hugging Face tokenizer
into the model's int64 inputs (input_ids, attention_mask, token_type_ids: whichever model.inputs names).

``model.tokenizer`` says how: max_length, padding (max_length: one fixed length for every file; longest:
the longest example of each file) and truncation (off: a line longer than max_length is an error naming
it). Errors name the file and line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError


def read_lines(path: Path, where: str) -> list[str]:
    """The examples of a text file: one per line (a final newline ends the last one; an empty line is an error)."""
    if not path.is_file():
        raise BadInputError("text file not found", hint="check the path; it is relative to the recipe", where=where)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise BadInputError(f"{path}:{line}: not UTF-8 (byte {e.start})", hint="save the file as UTF-8", where=where) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    for k, ln in enumerate(lines, 1):
        if not ln.strip():
            raise BadInputError(f"{path}:{k}: empty line; a text file holds one example per line",
                                hint="remove empty lines (labels stay in the same order as the lines)", where=where)
    if not lines:
        raise BadInputError(f"{path}: no examples", hint="write one example per line", where=where)
    return lines


def tokenize(tokenizer, lines: list[str], names: list[str], settings, path: Path, where: str) -> dict[str, np.ndarray]:
    """The arrays by model input name, int64 [N, L]."""
    if not settings.truncation:
        lengths = [len(ids) for ids in tokenizer(lines, truncation=False)["input_ids"]]
        for k, n in enumerate(lengths, 1):
            if n > settings.max_length:
                raise BadInputError(f"{path}:{k}: {n} tokens, more than model.tokenizer.max_length ({settings.max_length})",
                                    hint="shorten the line, raise max_length, or set model.tokenizer.truncation: true", where=where)
    enc = tokenizer(lines, padding=settings.padding, truncation=True, max_length=settings.max_length, return_tensors="np")
    out = {}
    for name in names:
        if name in enc:
            out[name] = np.asarray(enc[name], dtype=np.int64)
        elif name == "token_type_ids":  # one text per example: segment 0 everywhere
            out[name] = np.zeros_like(np.asarray(enc["input_ids"]), dtype=np.int64)
        else:
            raise BadInputError(f"the tokenizer gives {sorted(enc.keys())}, not model input '{name}'",
                                hint="name the model inputs after the tokenizer's outputs", where=where)
    return out


def tokenize_file(lr, path: Path, where: str, inputs) -> dict[str, np.ndarray]:
    """data.<role>.text of a loaded recipe -> arrays by model input name."""
    from ..recipe_hf import tokenizer_settings
    from .hf import load_tokenizer

    m = lr.recipe.model
    lines = read_lines(path, where)
    tok = load_tokenizer(lr.resolve(m.path), lr.where("model", "path"))
    return tokenize(tok, lines, [i.name for i in inputs], tokenizer_settings(m), path, where)

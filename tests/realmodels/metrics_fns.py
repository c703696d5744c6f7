"""User functions named by the real-model recipes (`evaluate: - fn: metrics_fns:...`, `decode: {fn: ...}`).

Copied beside the recipe; the tests use the same functions to recompute the numbers from the artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CHARSET = Path(__file__).resolve().parent / "charset.txt"  # written beside the recipe by the OCR test


def words(logits: np.ndarray, charset: Path = CHARSET) -> list[str]:
    """PP-OCR word crops: CTC greedy decode (blank 0, then charset.txt in order), surrounding spaces dropped."""
    from edgepack.validate.text import ctc_greedy, read_charset

    return [s.strip() for s in ctc_greedy(logits, read_charset(charset), 0)]


def text_f1(outputs: dict, labels) -> float:
    """DBNet text-probability map vs the rendered words' mask: pixel F1 at rapidocr's threshold 0.3."""
    p = next(iter(outputs.values())) > 0.3
    g = np.asarray(labels if not isinstance(labels, dict) else next(iter(labels.values()))) > 0.5
    return float(2 * np.logical_and(p, g).sum() / max(1, p.sum() + g.sum()))


def exact_match(texts: list[str], truth) -> float:
    return float(np.mean([a == str(b) for a, b in zip(texts, truth)]))


def vad_accuracy(outputs: dict, labels) -> float:
    """Per-chunk speech/non-speech accuracy of a streamed VAD at silero's threshold 0.5 ([S, T, 1] vs [S, T])."""
    p = np.asarray(outputs["output"]).reshape(np.asarray(labels).shape) > 0.5
    return float(np.mean(p == (np.asarray(labels) > 0)))


def stream_vad(run_step, chunks: np.ndarray, carry: bool = True) -> np.ndarray:
    """Feed [S, T, 576] chunks in order through run_step(chunk [1, 576], state [2, 1, 128]) -> (prob, state)."""
    out = np.zeros(chunks.shape[:2], np.float32)
    for s, seq in enumerate(chunks):
        state = np.zeros((2, 1, 128), np.float32)
        for t, c in enumerate(seq):
            prob, new = run_step(c[None], state)
            out[s, t] = float(np.asarray(prob).reshape(-1)[0])
            state = new if carry else state
    return out


def recall_at_1(emb: np.ndarray) -> float:
    """Queries are the first half of the samples, their paraphrases the second half, in the same order."""
    e = np.asarray(emb, np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    n = len(e) // 2
    return float(np.mean((e[:n] @ e[n:].T).argmax(1) == np.arange(n)))


def retrieval(outputs: dict, labels) -> float:  # noqa: ARG001 - the pairing is by position
    return recall_at_1(outputs["embedding"])

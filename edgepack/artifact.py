"""Artifacts: content-addressed files or directories with tensor specs and lineage."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def iter_files(root: Path) -> list[Path]:
    """Files below ``root`` (sorted, relative), following no symlinks."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def digest_path(path: str | os.PathLike, files: list[str] | None = None) -> str:
    """sha256 of a file, or of a directory's sorted (relative path, file digest) list: of every file below it
    (symlinks skipped), or of ``files`` only (names relative to it; symlinks followed)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for rel in iter_files(path) if files is None else sorted(Path(f) for f in files):
        h.update(f"{rel.as_posix()}\0{sha256_file(path / rel)}\n".encode())
    return h.hexdigest()


def size_path(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum((path / rel).stat().st_size for rel in iter_files(path))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple  # ints, or strings for symbolic dims
    dtype: str
    layout: str | None = None  # "NCHW", "NHWC" or None when not an image tensor

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "layout": self.layout}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"], d.get("layout"))


@dataclass
class Artifact:
    """A stage output. ``path`` is absolute while in use; stored relative inside a cache entry."""

    path: Path
    format: str  # onnx, tflite, openvino-ir, mlpackage, tensorrt-onnx, npz, ...
    digest: str = ""
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.digest and self.path.exists():
            self.digest = digest_path(self.path)

    @property
    def size(self) -> int:
        return size_path(self.path)

    def to_json(self, relative_to: Path | None = None) -> dict:
        d = asdict(self)
        d["path"] = str(self.path.relative_to(relative_to)) if relative_to else str(self.path)
        d["inputs"] = [t.to_json() for t in self.inputs]
        d["outputs"] = [t.to_json() for t in self.outputs]
        return d

    @classmethod
    def from_json(cls, d: dict, base: Path | None = None) -> "Artifact":
        path = Path(d["path"])
        if base is not None:
            path = base / path
        return cls(
            path=path,
            format=d["format"],
            digest=d["digest"],
            inputs=[TensorSpec.from_json(t) for t in d.get("inputs", [])],
            outputs=[TensorSpec.from_json(t) for t in d.get("outputs", [])],
            meta=d.get("meta", {}),
        )

"""Calibration, validation and training data: loaded, checked against the model's inputs, frozen to .npz.

Convention: every array has the samples on axis 0; the model's first input dimension is its batch.
A sample ``i`` is fed to the model as ``array[i:i+1]``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .artifact import Artifact
from .entrypoints import resolve
from .errors import BadInputError
from .recipe import DataSource, InputSpec, LoadedRecipe

LABELS = "__labels__"


def _as_dict(value, inputs: list[InputSpec], where: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    labels = None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise BadInputError(f"{where}: a loader may return arrays or (inputs, labels), got a {len(value)}-tuple")
        value, labels = value
    if isinstance(value, np.lib.npyio.NpzFile):
        value = {k: value[k] for k in value.files}
    if isinstance(value, np.ndarray):
        if len(inputs) != 1:
            raise BadInputError(f"{where}: one array given but the model has {len(inputs)} inputs; return a dict by input name")
        value = {inputs[0].name: value}
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: expected an array, a dict of arrays or (inputs, labels), got {type(value).__name__}")
    if LABELS in value:
        labels = value.pop(LABELS)
    elif "labels" in value and "labels" not in {i.name for i in inputs}:
        labels = value.pop("labels")
    return {k: np.asarray(v) for k, v in value.items()}, (None if labels is None else np.asarray(labels))


def check_arrays(arrays: dict[str, np.ndarray], labels, inputs: list[InputSpec], where: str) -> dict[str, np.ndarray]:
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(f"{where}: no data for model input(s) {missing}; arrays given: {sorted(arrays)}")
    counts = set()
    out = {}
    for spec in inputs:
        a = arrays[spec.name]
        want = spec.shape[1:]
        if a.ndim != len(spec.shape) or any(isinstance(w, int) and w != g for w, g in zip(want, a.shape[1:])):
            raise BadInputError(
                f"{where}: input '{spec.name}' has shape {list(a.shape)}, expected [N, {', '.join(map(str, want))}]",
                hint="axis 0 holds the samples; the rest must match model.inputs[].shape",
            )
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise BadInputError(f"{where}: input '{spec.name}' contains {bad} NaN or infinite value(s)", hint="clean the data")
        out[spec.name] = a.astype(spec.dtype.value, copy=False)
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise BadInputError(f"{where}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise BadInputError(f"{where}: no samples")
    if labels is not None and len(labels) != n:
        raise BadInputError(f"{where}: {len(labels)} labels for {n} samples", hint="give exactly one label per sample")
    return out


def load_source(lr: LoadedRecipe, src: DataSource, field: str, inputs: list[InputSpec]) -> tuple[dict, np.ndarray | None]:
    if src.loader:
        fn = resolve(src.loader, lr.dir, f"{lr.where('data', field, 'loader')}")
        where = f"{lr.where('data', field, 'loader')} ({src.loader})"
        try:
            value = fn()
        except Exception as e:
            raise BadInputError(f"{where}: the loader raised {e.__class__.__name__}: {e}") from e
    else:
        path = lr.resolve(src.path)
        where = f"{path} (data.{field}.path)"
        if not path.is_file():
            raise BadInputError(f"{where}: data file not found", hint="check the path; it is relative to the recipe")
        try:
            value = np.load(path, allow_pickle=False)
            if isinstance(value, np.lib.npyio.NpzFile):  # members load lazily: read them here, inside the try
                with value:
                    value = {k: value[k] for k in value.files}
        except Exception as e:
            raise BadInputError(f"{where}: cannot read as .npy/.npz ({e.__class__.__name__}: {e})",
                                hint="save plain numeric arrays (no dtype=object) with np.savez") from e
    arrays, labels = _as_dict(value, inputs, where)
    if src.labels:
        lpath = lr.resolve(src.labels)
        if not lpath.is_file():
            raise BadInputError(f"{lpath} (data.{field}.labels): labels file not found")
        try:
            labels = np.load(lpath, allow_pickle=False)
        except Exception as e:
            raise BadInputError(f"{lpath} (data.{field}.labels): cannot read as .npy ({e})") from e
    arrays = check_arrays(arrays, labels, inputs, where)
    if src.limit:
        arrays = {k: v[: src.limit] for k, v in arrays.items()}
        labels = None if labels is None else labels[: src.limit]
    return arrays, labels


def freeze(arrays: dict[str, np.ndarray], labels, directory: Path, role: str) -> Artifact:
    """Write arrays (and labels) to a content-addressed .npz, atomically."""
    payload = dict(arrays)
    if labels is not None:
        payload[LABELS] = np.asarray(labels)
    h = hashlib.sha256()
    for k in sorted(payload):
        a = np.ascontiguousarray(payload[k])
        h.update(f"{k}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    digest = h.hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{digest}.npz"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
        os.replace(tmp, path)
    n = len(next(iter(arrays.values())))
    return Artifact(path, "npz", digest=digest, meta={"role": role, "samples": n, "labels": labels is not None})


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != LABELS}
        labels = z[LABELS] if LABELS in z.files else None
    return arrays, labels


def samples(arrays: dict[str, np.ndarray], limit: int | None = None):
    n = len(next(iter(arrays.values())))
    for i in range(n if limit is None else min(n, limit)):
        yield {k: v[i : i + 1] for k, v in arrays.items()}

"""Calibration, validation and training data: loaded, checked against the model's inputs, frozen to .npz.

Convention: an array holds one model input without its batch axis (model.inputs[].batch_axis,
default 0): samples on axis 0 (``data.<role>.mode: batch``, ``[N, ...]``) or sequences and steps on
axes 0 and 1 (``mode: stream``, ``[S, T, ...]``). Constant inputs (``value``) and model.state inputs
are never in the data. The runner contract (edgepack/contract.py) says how a sample is fed; for a
batch-axis-0 input, sample ``i`` is fed as ``array[i:i+1]``.
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


def _label_sets(labels) -> dict[str, np.ndarray] | None:
    """One label array is the set 'labels'; a dict gives named sets."""
    if labels is None:
        return None
    if isinstance(labels, dict):
        return {str(k): np.asarray(v) for k, v in labels.items()}
    return {"labels": np.asarray(labels)}


def _load_label_file(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise BadInputError(f"{path} ({where}): labels file not found", hint="check the path; it is relative to the recipe")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:
        raise BadInputError(f"{path} ({where}): cannot read as .npy ({e.__class__.__name__}: {e})",
                            hint="save strings as a unicode array, np.save(path, np.array(list_of_str))") from e


def load_labels(lr: LoadedRecipe, src: DataSource, field: str) -> dict[str, np.ndarray] | None:
    """data.<role>.labels: one .npy (the set 'labels') or {name: .npy}."""
    if isinstance(src.labels, str):
        return {"labels": _load_label_file(lr.resolve(src.labels), f"data.{field}.labels")}
    if isinstance(src.labels, dict):
        return {k: _load_label_file(lr.resolve(p), f"data.{field}.labels.{k}") for k, p in src.labels.items()}
    return None


def check_labels(labels: dict | None, n: int, where: str, per: str = "samples") -> None:
    for name, y in (labels or {}).items():
        if y.ndim == 0 or len(y) != n:
            got = "a scalar" if y.ndim == 0 else f"{len(y)} labels"
            raise BadInputError(f"label set '{name}' has {got} for {n} {per}",
                                hint="give exactly one label per sample (per sequence in stream mode)", where=where)
        if y.dtype == object:
            raise BadInputError(f"label set '{name}' is an object array", hint="use numbers or a unicode string array", where=where)


def _as_dict(value, inputs: list[InputSpec], where: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    labels = None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise BadInputError(f"a loader may return arrays or (inputs, labels), got a {len(value)}-tuple", where=where)
        value, labels = value
    if isinstance(value, np.lib.npyio.NpzFile):
        value = {k: value[k] for k in value.files}
    if isinstance(value, np.ndarray):
        if len(inputs) != 1:
            raise BadInputError(f"one array given but the model has {len(inputs)} inputs; return a dict by input name", where=where)
        value = {inputs[0].name: value}
    if not isinstance(value, dict):
        raise BadInputError(f"expected an array, a dict of arrays or (inputs, labels), got {type(value).__name__}", where=where)
    value = dict(value)
    if LABELS in value:
        labels = value.pop(LABELS)
    elif "labels" in value and "labels" not in {i.name for i in inputs}:
        labels = value.pop("labels")
    named = {k[len(LABELS) + 1 :]: value.pop(k) for k in sorted(value) if k.startswith(LABELS + ".")}
    sets = _label_sets(labels) or {}
    sets.update(named)
    return {k: np.asarray(v) for k, v in value.items()}, (sets or None)


def _expected(spec: InputSpec, lead: list[str]) -> str:
    return "[" + ", ".join(lead + [str(d) for d in spec.sample_shape]) + "]"


def check_arrays(arrays: dict[str, np.ndarray], labels, inputs: list[InputSpec], where: str,
                 mode: str = "batch") -> dict[str, np.ndarray]:
    """Check each data input's array against its spec: [N, *sample shape] (batch mode) or
    [S, T, *sample shape] (stream mode), where the sample shape is the input's shape without its
    batch axis (model.inputs[].batch_axis). Constant and state inputs are not given here."""
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BadInputError(f"no data for model input(s) {missing}; arrays given: {sorted(arrays)}", where=where)
    if not inputs:
        raise BadInputError("no model input is fed from data (all are constants or states)",
                            hint="a validation/calibration set needs at least one input without 'value' that is not a model.state input", where=where)
    lead = ["N"] if mode == "batch" else ["S", "T"]
    counts = set()
    out = {}
    for spec in inputs:
        a = arrays[spec.name]
        want = spec.sample_shape
        ax = spec.feed_batch_axis
        hint = (f"axis 0 holds the samples; the rest is model.inputs[].shape {spec.shape}"
                if mode == "batch" else f"stream mode: axis 0 holds the sequences, axis 1 the steps; the rest is model.inputs[].shape {spec.shape}")
        if ax is not None:
            hint += f" without its batch axis {ax}"
        if a.ndim == 0:
            raise BadInputError(f"input '{spec.name}' is a 0-d array (a single value), expected {_expected(spec, lead)}",
                                hint="for a value that is the same for every sample, declare it in the recipe: model.inputs[].value", where=where)
        if a.ndim != len(want) + len(lead) or any(isinstance(w, int) and w != g for w, g in zip(want, a.shape[len(lead):])):
            raise BadInputError(f"input '{spec.name}' has shape {list(a.shape)}, expected {_expected(spec, lead)}", hint=hint, where=where)
        if a.dtype.kind not in "fiub":
            raise BadInputError(f"input '{spec.name}' has dtype {a.dtype}, not a number (model.inputs[].dtype is {spec.dtype.value})", where=where)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a)))
            raise BadInputError(f"input '{spec.name}' contains {bad} NaN or infinite value(s)", hint="clean the data", where=where)
        if a.dtype.kind == "f" and spec.dtype.value in ("int64", "int32", "int8", "uint8", "bool") and not np.all(a == np.round(a)):
            raise BadInputError(f"input '{spec.name}' holds fractional values but model.inputs[].dtype is {spec.dtype.value}",
                                hint="save integer arrays (token ids, masks) with an integer dtype", where=where)
        out[spec.name] = a.astype(spec.dtype.value, copy=False)
        counts.add(tuple(a.shape[: len(lead)]))
    if len(counts) > 1:
        what = "sample counts" if mode == "batch" else "(sequences, steps)"
        raise BadInputError(f"inputs have different {what} {sorted(counts)}", where=where)
    count = counts.pop()
    if 0 in count:
        raise BadInputError(f"{where}: no samples" if mode == "batch" else f"{where}: no sequences or no steps (shape {list(count)})")
    check_labels(_label_sets(labels), count[0], where, "samples" if mode == "batch" else "sequences (axis 0)")
    return out


def load_source(lr: LoadedRecipe, src: DataSource, field: str, inputs: list[InputSpec]) -> tuple[dict, dict | None]:
    """The arrays by input name, and the label sets by name (None without labels)."""
    if src.loader:
        fn = resolve(src.loader, lr.dir, f"{lr.where('data', field, 'loader')}")
        where = f"{lr.where('data', field, 'loader')} ({src.loader})"
        try:
            value = fn()
        except Exception as e:
            raise BadInputError(f"the loader raised {e.__class__.__name__}: {e}", where=where) from e
    elif src.text:
        from .ingest.hf_text import tokenize_file

        path = lr.resolve(src.text)
        where = f"{path} (data.{field}.text)"
        value = tokenize_file(lr, path, where, inputs)
    else:
        assert src.path is not None  # DataSource: exactly one of path, loader and text
        path = lr.resolve(src.path)
        where = f"{path} (data.{field}.path)"
        if not path.is_file():
            raise BadInputError("data file not found", hint="check the path; it is relative to the recipe", where=where)
        try:
            value = np.load(path, allow_pickle=False)
            if isinstance(value, np.lib.npyio.NpzFile):  # members load lazily: read them here, inside the try
                with value:
                    value = {k: value[k] for k in value.files}
        except Exception as e:
            raise BadInputError(f"cannot read as .npy/.npz ({e.__class__.__name__}: {e})",
                                hint="save plain numeric arrays (no dtype=object) with np.savez", where=where) from e
    arrays, labels = _as_dict(value, inputs, where)
    if src.labels:
        labels = load_labels(lr, src, field)
    arrays = check_arrays(arrays, labels, inputs, where, src.mode)
    if src.limit:
        arrays = {k: v[: src.limit] for k, v in arrays.items()}
        labels = None if labels is None else {k: v[: src.limit] for k, v in labels.items()}
    return arrays, labels


def label_key(name: str) -> str:
    """The .npz key of a label set: '__labels__' for the set 'labels', '__labels__.NAME' for the others."""
    return LABELS if name == "labels" else f"{LABELS}.{name}"


def is_label_key(key: str) -> bool:
    return key == LABELS or key.startswith(LABELS + ".")


def freeze(arrays: dict[str, np.ndarray], labels, directory: Path, role: str, mode: str = "batch") -> Artifact:
    """Write arrays (and label sets) to a content-addressed .npz, atomically (keys sorted: deterministic)."""
    payload = dict(arrays)
    sets = _label_sets(labels) or {}
    for name in sorted(sets):
        payload[label_key(name)] = np.asarray(sets[name])
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
            np.savez(f, **{k: payload[k] for k in [*arrays, *(label_key(n) for n in sorted(sets))]})
        os.replace(tmp, path)
    n = len(next(iter(arrays.values())))
    return Artifact(path, "npz", digest=digest, meta={"role": role, "samples": n, "labels": bool(sets), "label_sets": sorted(sets), "mode": mode})


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Input arrays, and the single label array: the set 'labels', or the only set (None otherwise)."""
    arrays, sets = read_data(path)
    if not sets:
        return arrays, None
    return arrays, sets.get("labels", next(iter(sets.values())) if len(sets) == 1 else None)


def read_data(path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Input arrays and every label set by name."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not is_label_key(k)}
        sets = {("labels" if k == LABELS else k[len(LABELS) + 1 :]): z[k] for k in z.files if is_label_key(k)}
    return arrays, sets


def npz_layout(path: Path) -> dict[str, tuple[int, np.dtype, tuple]] | None:
    """Where each member array's bytes start in a frozen .npz, with its dtype and shape.

    ``freeze`` writes with ``np.savez``: members are stored uncompressed (ZIP_STORED), so each
    ``.npy`` lies in the file as is and rows can be read by offset (``np.load(mmap_mode=...)``
    cannot do that inside a zip). None when a member is compressed, Fortran-ordered or of object
    dtype (a hand-made file): read it whole with ``read_data`` then."""
    import struct
    import zipfile

    out = {}
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
                return None
            f.seek(info.header_offset)
            name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])  # local file header
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject or not shape:
                return None
            out[info.filename[: -len(".npy")]] = (f.tell(), dtype, shape)
    return out


def iter_batches(path: Path, names: list[str], batch: int = 64):
    """The arrays ``names`` of a frozen .npz, ``batch`` samples (axis 0) at a time, read by offset:
    memory stays one batch whatever the sample count (calibration of large sets)."""
    layout = npz_layout(path)
    if layout is None:  # not laid out for slicing: whole arrays, then slices
        arrays, _ = read_data(path)
        n = len(arrays[names[0]])
        for i in range(0, n, batch):
            yield {k: arrays[k][i : i + batch] for k in names}
        return
    n = layout[names[0]][2][0]
    with open(path, "rb") as f:
        for i in range(0, n, batch):
            out = {}
            for k in names:
                off, dtype, shape = layout[k]
                rows = min(batch, shape[0] - i)
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                f.seek(off + i * row_bytes)
                out[k] = np.frombuffer(f.read(rows * row_bytes), dtype=dtype).reshape(rows, *shape[1:])
            yield out


def is_stream(inputs: list[InputSpec], arrays: dict[str, np.ndarray]) -> bool:
    """Whether frozen arrays are in stream layout ([S, T, ...]): told by the first data input's rank."""
    for spec in inputs:
        if spec.name in arrays:
            return arrays[spec.name].ndim == len(spec.sample_shape) + 2
    return False


def model_samples(model, arrays: dict[str, np.ndarray], recipe_dir: Path | None = None, limit: int | None = None) -> list[dict]:
    """Complete model feeds, one per sample, fed as the device runner feeds them (batch of 1 at each
    input's batch axis, constants, states at their init). Stream data gives one feed per step of
    each sequence, each with the state at its init (not carried): for calibration and checks."""
    from .contract import for_recipe
    from .devices.runner import make_feeds, state_init

    contract = for_recipe(model, recipe_dir).to_json()
    inputs = model.data_inputs()
    if is_stream(inputs, arrays):
        a = arrays[inputs[0].name]
        index: list = [(s, t) for s in range(a.shape[0]) for t in range(a.shape[1])]  # (sequence, step)
    else:
        index = list(range(len(arrays[inputs[0].name]))) if inputs else [0]
    return [make_feeds(contract, arrays, i, state_init(contract)) for i in index[:limit]]

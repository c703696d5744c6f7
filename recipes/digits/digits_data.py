"""scikit-learn's digits (shipped inside the scikit-learn wheel: no download), split deterministically.

Images are scaled to [0, 1] and shaped [N, 1, 8, 8] (NCHW). 1797 samples: 1200 for training (the
first 128 of them also serve as calibration data), 597 for validation with labels.
"""

import functools

import numpy as np

N_TRAIN = 1200


@functools.lru_cache(maxsize=1)  # calibration and validation both read it: parse the CSV once
def _load_digits():
    """sklearn.datasets.load_digits()'s (images, target), read from the CSV the wheel ships without
    importing scikit-learn (about 1 s, most of a cached build; find_spec does not import it)."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(csv, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)
    images.flags.writeable = target.flags.writeable = False  # shared between calls
    return images, target


def _split():
    images, target = _load_digits()
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    y = target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order], y[order]


def training():
    x, y = _split()
    return {"input": x[:N_TRAIN]}, y[:N_TRAIN]


def calibration():
    x, _ = _split()
    return {"input": x[:128]}


def validation():
    x, y = _split()
    return {"input": x[N_TRAIN:]}, y[N_TRAIN:]

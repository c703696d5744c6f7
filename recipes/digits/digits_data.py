"""scikit-learn's digits (shipped inside the scikit-learn wheel: no download), split deterministically.

Images are scaled to [0, 1] and shaped [N, 1, 8, 8] (NCHW). 1797 samples: 1200 for training (the
first 128 of them also serve as calibration data), 597 for validation with labels.
"""

import numpy as np

N_TRAIN = 1200


def _split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
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

"""digits: scikit-learn's bundled 8×8 digits (1,797 images, d = 64), for fast tests.

Split 1,347 train / 450 test (sklearn's default 25% test), seeded and stratified: 1,347 ≥ 1,024, so the
paper's full_batch N fits. Pixels /16 to [0, 1], then standardised with ONE scalar mean/std over all train
pixels (as MNIST's constants are scalars); per-pixel standardisation would divide by zero on the
always-blank border pixels.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Dataset
from .split import split_dataset

N_TEST, SEED = 450, 0


def load_digits() -> Dataset:
    """Load and normalise the digits split (no files, no root needed)."""
    from sklearn.datasets import load_digits as _sk_load

    bunch = _sk_load()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)

    def fit(x_train: np.ndarray):
        # One scalar mean/std over all train pixels: the blank border pixels have zero variance per pixel.
        mean, std = x_train.mean(), x_train.std()
        return lambda a: torch.from_numpy(((a - mean) / std).astype(np.float32))

    return split_dataset("digits", x, y, N_TEST, SEED, fit)

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
from .split import stratified_split

N_TEST, SEED = 450, 0


def load_digits() -> Dataset:
    """Load and normalise the digits split (no files, no root needed)."""
    from sklearn.datasets import load_digits as _sk_load

    bunch = _sk_load()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    tr, te = stratified_split(y, N_TEST, SEED)
    mean, std = x[tr].mean(), x[tr].std()

    def norm(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32))

    return Dataset(
        name="digits",
        x_train=norm(x[tr]),
        y_train=torch.from_numpy(y[tr]),
        x_test=norm(x[te]),
        y_test=torch.from_numpy(y[te]),
        n_classes=10,
    )

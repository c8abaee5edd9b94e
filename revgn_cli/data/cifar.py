"""CIFAR-10 from the python-pickle batches in `<root>/cifar10/cifar-10-batches-py/`.

If only the archive `<root>/cifar10/cifar-10-python.tar.gz` is there, it is unpacked first. The pickles
are read with a restricted unpickler (numpy arrays and plain containers only), so a tampered file
cannot run code.
"""
from __future__ import annotations

import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from .base import DataError, Dataset, fetch_hint

MEAN = (0.4914, 0.4822, 0.4465)  # docs/configuration.md#data, per channel
STD = (0.2470, 0.2435, 0.2616)
ARCHIVE = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"

_ALLOWED = {  # the globals a numpy-array pickle needs (numpy 1.x and 2.x module names)
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # Python 3 protocol-2 pickles store array bytes via codecs.encode(str, "latin1")
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"disallowed global {module}.{name}")
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [n, 3072] in CHW order, int64 [n]); DataError naming the file if malformed."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"corrupt CIFAR-10 batch {path}: {e}") from None
    if not isinstance(d, dict):
        raise DataError(f"corrupt CIFAR-10 batch {path}: expected a dict, got {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise DataError(f"corrupt CIFAR-10 batch {path}: missing 'data' or 'labels' key")
    x = np.asarray(d["data"])
    try:
        y = np.asarray(d["labels"], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"corrupt CIFAR-10 batch {path}: labels are not integers") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"corrupt CIFAR-10 batch {path}: data {x.dtype} {x.shape}, expected uint8 n×3072")
    if y.shape != (len(x),):
        raise DataError(f"corrupt CIFAR-10 batch {path}: {len(x)} images but labels of shape {y.shape}")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"corrupt CIFAR-10 batch {path}: labels outside 0-9")
    return x, y


def write_batch(path: Path, x: np.ndarray, y) -> Path:
    """Write a batch in the real format (dict with b'data' uint8 n×3072, b'labels' list); for tests and tools."""
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"revgn", b"data": np.asarray(x, np.uint8), b"labels": [int(v) for v in y]}, f, protocol=2)
    return Path(path)


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack the CIFAR-10 archive so that `dest/cifar-10-batches-py/` exists; returns that folder.

    Extracts into a temporary sibling folder and renames, so an interrupted unpack leaves nothing
    half-written; members are filtered (tarfile's 'data' filter) against path traversal.
    """
    final = dest / BATCH_DIR
    try:
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".unpack-"))
    except OSError as e:
        raise DataError(f"cannot unpack {archive} into {dest}: {e}") from None
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")
        if not (tmp / BATCH_DIR).is_dir():
            raise DataError(f"corrupt CIFAR-10 archive {archive}: no {BATCH_DIR}/ folder inside")
        if final.exists():
            shutil.rmtree(final)
        (tmp / BATCH_DIR).rename(final)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot unpack CIFAR-10 archive {archive}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [N, 3072] (CHW) -> float32 [N, 3072]: pixel/255, then per-channel mean/std, CHW kept."""
    x = torch.from_numpy(pixels).to(torch.float32).div_(255.0).view(len(pixels), 3, 1024)
    x.sub_(torch.tensor(MEAN).view(1, 3, 1)).div_(torch.tensor(STD).view(1, 3, 1))
    return x.view(len(pixels), 3072)


def load_cifar10(root: Path) -> Dataset:
    """Load the 50,000 / 10,000 split, unpacking the archive if only it is present."""
    base = root / "cifar10"
    folder = base / BATCH_DIR
    names = (*TRAIN_BATCHES, TEST_BATCH)
    if not folder.is_dir() and (base / ARCHIVE).is_file():
        unpack(base / ARCHIVE, base)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        which = "" if len(missing) == len(names) else f" (missing {', '.join(missing)})"
        raise DataError(f"CIFAR-10 files not found under {folder}{which}: {fetch_hint('cifar10', root)}")
    train = [read_batch(folder / n) for n in TRAIN_BATCHES]
    x_te, y_te = read_batch(folder / TEST_BATCH)
    return Dataset(
        name="cifar10",
        x_train=normalise(np.concatenate([x for x, _ in train])),
        y_train=torch.from_numpy(np.concatenate([y for _, y in train])),
        x_test=normalise(x_te),
        y_test=torch.from_numpy(y_te),
        n_classes=10,
    )

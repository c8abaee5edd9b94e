"""revgn datasets: mnist5k (offline default), digits, mnist, cifar10; plus download and augmentation.

    ds = load_dataset("mnist5k")          # Dataset(x_train [4000, 784] float32, y_train [4000] int64, ...)
    fetch("mnist", root="~/data")         # download + verify into ~/data/mnist/

Every user-facing failure raises `DataError` with a one-line message.
"""
from .base import DataError, Dataset, default_root
from .download import fetch
from .registry import DATASETS, load_dataset
from .transforms import AUGMENTATIONS, make_augment

__all__ = ["AUGMENTATIONS", "DATASETS", "DataError", "Dataset", "default_root", "fetch", "load_dataset", "make_augment"]

"""Shared types of the dataset layer: the `Dataset` container, `DataError`, and the data root."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["DataError", "Dataset", "default_root", "resolve_root", "fetch_hint"]


class DataError(Exception):
    """A user-facing data problem (missing/corrupt files, bad checksum, unknown name, unwritable root).

    The message is always one line, fit to print on stderr as-is.
    """


@dataclass(repr=False)
class Dataset:
    """A normalised, flattened train/test split (CIFAR flattened in CHW order), labels as class indices."""

    name: str
    x_train: torch.Tensor  # [N, d] float32
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor  # [M, d] float32
    y_test: torch.Tensor  # [M] int64
    n_classes: int

    @property
    def d(self) -> int:
        """Feature dimension."""
        return int(self.x_train.shape[1])

    def __repr__(self) -> str:  # tensors would flood the terminal
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
            f"n_classes={self.n_classes})"
        )


def default_root() -> Path:
    """`$REVGN_DATA` if set (and non-empty), else `~/.cache/revgn`."""
    env = os.environ.get("REVGN_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "revgn"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root to use: `root` if given, else `default_root()`."""
    return Path(root).expanduser() if root not in (None, "") else default_root()


def fetch_hint(name: str, root: Path) -> str:
    """The command that would download `name` into `root` (quoted for a POSIX shell)."""
    import shlex

    return f"run `revgn data fetch {name} --root {shlex.quote(str(root))}`"

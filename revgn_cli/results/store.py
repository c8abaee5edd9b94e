"""One run's directory on disk: ``results/<experiment>/<run_id>/`` (DESIGN §7).

Files: ``config.yaml`` (resolved config), ``metrics.parquet`` (wide rows, see ``ROW_KEYS``), ``meta.json``
(status and provenance), ``checkpoints/last.pt``; ``<experiment>/.<run_id>.lock`` is held while a process trains it. Every write goes
to a temporary file in the same directory and is renamed into place, so a crash never leaves a half-written file;
no index file is shared between runs, so concurrent sweep jobs cannot clash.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pandas is imported where rows are read or written: listing runs must not pay for it
    import pandas as pd

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
# Not stored: what readers report for a run whose files cannot be read (RunDir.status, results.loader).
CORRUPT = "corrupt"
# Every metrics row has these; metric columns follow (float64, NaN where a row does not log that metric).
ROW_KEYS = ("run_id", "epoch", "step", "split")
SPLITS = ("step", "epoch")  # one row per update | one row per evaluation (epoch 0 = at init)


class StoreError(RuntimeError):
    """Unusable results directory or run files (unwritable, corrupt, locked). One-line message."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the renamed file gets the mode open() would give it, so a results dir shared by
        # a group stays readable to it (umask 022 → 0644).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(ROW_KEYS))
    metric_cols = [c for c in df.columns if c not in ROW_KEYS]
    df[metric_cols] = df[metric_cols].astype("float64")
    df["epoch"] = df["epoch"].astype("float64")
    df["step"] = df["step"].astype("int64")
    df["run_id"] = df["run_id"].astype(str)
    df["split"] = df["split"].astype(str)
    return df[list(ROW_KEYS) + sorted(metric_cols)]


@dataclass
class RunDir:
    """Paths and atomic I/O of one run directory."""

    path: Path

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def experiment(self) -> str:
        return self.path.parent.name

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.parquet")
    meta_path = property(lambda self: self.path / "meta.json")
    ckpt_dir = property(lambda self: self.path / "checkpoints")
    ckpt_path = property(lambda self: self.path / "checkpoints" / "last.pt")

    def exists(self) -> bool:
        return self.meta_path.exists()

    # --- meta -------------------------------------------------------------------------------------------------
    def read_meta(self) -> dict[str, Any]:
        try:
            return json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StoreError(f"corrupt {self.meta_path}: {e}") from e

    def write_meta(self, **updates: Any) -> dict[str, Any]:
        meta = self.read_meta() if self.meta_path.exists() else {}
        meta.update(updates)
        atomic_write_text(self.meta_path, json.dumps(meta, indent=2, sort_keys=True, default=str))
        return meta

    # --- metrics ----------------------------------------------------------------------------------------------
    def write_rows(self, rows: list[dict[str, Any]]) -> None:
        buf = io.BytesIO()
        rows_to_frame(rows).to_parquet(buf, index=False)
        atomic_write_bytes(self.metrics_path, buf.getvalue())

    def read_rows(self) -> pd.DataFrame:
        import pandas as pd

        try:
            return pd.read_parquet(self.metrics_path)
        except FileNotFoundError:
            return rows_to_frame([])
        except Exception as e:  # pyarrow raises several types for truncated/corrupt files
            raise StoreError(f"unreadable {self.metrics_path}: {str(e).splitlines()[0]}") from e

    def rows_readable(self) -> bool:
        """metrics.parquet is there, its footer reads and it holds rows (cheap: the footer only)."""
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(self.metrics_path).num_rows > 0
        except Exception:  # missing, truncated, not parquet
            return False

    def status(self) -> str | None:
        """meta.json's status (None when there is no run) — except ``corrupt`` for an unreadable meta.json, or a
        finished run whose rows cannot be read: such a run is not done, and sweeps/reproduce train it again."""
        try:
            status = self.read_meta().get("status")
        except StoreError:
            return CORRUPT
        if status in ("done", "diverged") and not self.rows_readable():
            return CORRUPT
        return status

    # --- lock ---------------------------------------------------------------------------------------------------
    def lock(self) -> "RunLock":
        # Beside the run dir, not in it: taking the lock must not create a half-made run directory.
        return RunLock(self.path.parent / f".{self.run_id}.lock")


class RunLock:
    """An exclusive, non-blocking flock on the run directory: one process trains a run at a time."""

    def __init__(self, path: Path):
        self.path, self._fh = path, None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w")
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise StoreError(f"run {self.path.name[1:-5]} is being trained by another process (lock {self.path})")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()

    def held_elsewhere(self) -> bool:
        """True when another process holds the lock (used by `revgn runs` to tell live runs from dead ones)."""
        if not self.path.exists():
            return False
        with open(self.path, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def iter_run_dirs(results_dir: str | Path) -> Iterator[RunDir]:
    """Every ``<experiment>/<run_id>/`` below ``results_dir`` that looks like a run (has meta.json or config.yaml)."""
    root = Path(results_dir)
    if not root.is_dir():
        return
    for exp in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for run in sorted(p for p in exp.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (run / "meta.json").exists() or (run / "config.yaml").exists():
                yield RunDir(run)


def check_writable(results_dir: str | Path) -> Path:
    """Create ``results_dir`` if needed and prove it is writable, with a one-line error otherwise."""
    root = Path(results_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".probe-"):
            pass
    except OSError as e:
        raise StoreError(f"results dir {root} is not writable: {e.strerror or e}") from e
    return root

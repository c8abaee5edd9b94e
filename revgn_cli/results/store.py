"""One run's directory on disk: ``results/<experiment>/<run_id>/`` (docs/results.md).

Files: ``config.yaml`` (resolved config), ``metrics.parquet`` (wide rows, see ``ROW_KEYS``), ``meta.json``
(status and provenance), ``checkpoints/last.pt``; ``<experiment>/.<run_id>.lock`` is held while a process trains it. Every write goes
to a temporary file in the same directory and is renamed into place, so a crash never leaves a half-written file;
no index file is shared between runs, so concurrent sweep jobs cannot clash.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pandas is imported where rows are read or written: listing runs must not pay for it
    import pandas as pd

STATUSES = ("running", "done", "failed", "diverged", "interrupted")
# Not stored: what readers report for a run whose files cannot be read (RunDir.status, results.loader).
CORRUPT = "corrupt"
# Not stored either: meta.json says `running` but no process holds the run's lock (killed, machine rebooted).
STALE = "stale"
# The states `run_state` reports: every stored status but `running` as stored, plus stale and corrupt.
STATES = ("done", "running", STALE, "interrupted", "diverged", "failed", CORRUPT)
RUN_ID = re.compile(r"[0-9a-f]{12}")  # config.run_id: the first 12 hex digits of a sha256
# Every name the store writes inside a run dir (the temporary files of atomic writes aside): a directory holding
# anything else is not only ours, and --clean leaves it alone.
STORE_FILES = ("config.yaml", "meta.json", "metrics.parquet", "checkpoints")
QUARANTINE = ".quarantine"  # <results>/.quarantine/<timestamp>/<experiment>/<run_id>: damaged runs, moved whole
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


def replace_csv_groups(path: Path, rows: pd.DataFrame, column: str, old: pd.DataFrame | None = None,
                       float_format: str = "%.8g") -> pd.DataFrame:
    """Rewrite the CSV at ``path`` (atomically) with ``rows`` in place of the rows whose ``column`` value is one of
    ``rows``' (the others kept); ``old`` is the file already read (default: read it if it exists). Groups keep
    their place in the file (a replaced group where its old rows stood, a new one at the end), so the tables read
    from it keep their column order as cells are redone. For the study files a person commits after each sitting
    (scaling margins, the gn_family record)."""
    import pandas as pd

    if old is None:
        old = pd.read_csv(path) if Path(path).exists() else pd.DataFrame(columns=list(rows.columns))
    new = {k: g for k, g in rows.groupby(column, sort=False)}
    parts = [new.pop(k, g) for k, g in old.groupby(column, sort=False)] if not old.empty else []
    df = pd.concat([*parts, *new.values()], ignore_index=True) if parts or new else rows.reset_index(drop=True)
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=float_format)
    atomic_write_bytes(Path(path), buf.getvalue().encode())
    return df


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
        """The run's state (``run_state``), or None when there is no run directory."""
        return run_state(self).state if self.path.is_dir() else None

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


@dataclass(frozen=True)
class RunState:
    """What a run is, for every command alike: one of ``STATES``, and why when it is ``corrupt`` or ``stale``."""

    state: str
    reason: str | None = None
    meta: dict[str, Any] | None = None  # meta.json as read (None when it could not be)
    config: dict[str, Any] | None = None  # config.yaml as read (None when it could not be)


def read_config(run: RunDir) -> dict[str, Any]:
    """config.yaml as a dict; StoreError (one line) when it is missing, not YAML or not a mapping."""
    import yaml

    try:
        # The C loader when libyaml is there: `revgn runs` parses every run's config (≈10× faster than pure Python).
        cfg = yaml.load(run.config_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError as e:
        raise StoreError(f"missing {run.config_path}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise StoreError(f"corrupt {run.config_path}: {str(e).splitlines()[0]}") from e
    if not isinstance(cfg, dict):
        raise StoreError(f"corrupt {run.config_path}: not a mapping")
    return cfg


def _rows_problem(run: RunDir, status: str, epochs: Any) -> str | None:
    """Why metrics.parquet does not hold what ``status`` promises, from its footer only (no rows are read)."""
    import pyarrow.parquet as pq

    if not run.metrics_path.exists():
        return f"status {status} but no metrics.parquet" if status in ("done", "diverged") else None
    try:
        md = pq.read_metadata(run.metrics_path)
    except Exception as e:  # truncated, not parquet
        return f"unreadable {run.metrics_path.name}: {(str(e).splitlines() or [type(e).__name__])[0]}"
    missing = [k for k in ROW_KEYS if k not in md.schema.names]
    if missing:
        return f"metrics.parquet lacks columns {missing}"
    if status in ("done", "diverged") and md.num_rows == 0:
        return f"status {status} but metrics.parquet has no rows"
    if status == "done" and isinstance(epochs, int):
        last = _max_epoch(run, md)
        if last is None or int(last) != epochs:
            return f"status done but the rows end at epoch {last if last is None else f'{last:g}'} of {epochs}"
    return None


def _max_epoch(run: RunDir, md: Any) -> float | None:
    """The largest ``epoch`` in the rows: from the row-group statistics when written, else read that column."""
    col = md.schema.names.index("epoch")
    stats = [md.row_group(i).column(col).statistics for i in range(md.num_row_groups)]
    if stats and all(s is not None and s.has_min_max for s in stats):
        return max(float(s.max) for s in stats)
    import pyarrow.parquet as pq

    vals = pq.read_table(run.metrics_path, columns=["epoch"]).column("epoch").to_pylist()
    vals = [v for v in vals if v is not None and v == v]
    return max(vals) if vals else None


def _checkpoint_truncated(path: Path) -> str | None:
    """The cheap check every listing makes: a checkpoint is a zip archive (torch.save), and a cut one has lost
    its central directory at the end. Reads the directory only; no torch."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"checkpoint {path.name} does not load (truncated or not a checkpoint: {e})"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint file does not load, or None. ``torch.load(weights_only=True)``: nothing in the file runs;
    a revgn checkpoint holds tensors, plain containers and the numpy RNG state (allowed by name)."""
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    allowed += [c for c in vars(getattr(np, "dtypes", object)).values() if isinstance(c, type)]
    try:
        with torch.serialization.safe_globals(allowed):
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, …
        return f"checkpoint {path.name} does not load: {(str(e).strip().splitlines() or [type(e).__name__])[0]}"
    return None


def run_state(run: RunDir, *, checkpoints: bool = False, own_lock: bool = False) -> RunState:
    """The one definition of a run's state, used by every command (docs/robustness.md).

    ``corrupt`` (with the reason): config.yaml or meta.json missing or unreadable, a config that does not fit the
    schema, a status not in ``STATUSES``, rows unreadable, or fewer than a finished run promises (a ``done`` run's
    rows end at ``train.epochs``), a checkpoint cut short (its zip directory, always) or, with ``checkpoints``, one
    that ``torch.load`` cannot read (``runs --check`` and ``train`` ask for that; listings stay fast without).
    ``stale``: meta.json says ``running`` but no process holds the run's lock. A run whose lock is held is
    ``running`` whatever its files say (it may be half-written) — unless ``own_lock``: the caller holds it.
    """
    def held() -> bool:
        return not own_lock and run.lock().held_elsewhere()

    try:
        meta = run.read_meta()
    except StoreError as e:
        return RunState("running") if held() else RunState(CORRUPT, str(e))
    if not run.meta_path.exists():
        return RunState("running", meta=meta) if held() else RunState(CORRUPT, "no meta.json", meta)
    try:
        cfg = read_config(run)
    except StoreError as e:
        return RunState("running", meta=meta) if held() else RunState(CORRUPT, str(e), meta)
    from revgn_cli.results.fastcheck import config_problem

    problem = config_problem(cfg)
    if problem:
        return RunState(CORRUPT, problem, meta, cfg)
    status = meta.get("status")
    if status not in STATUSES:
        return RunState(CORRUPT, f"meta.json has no valid status ({status!r})", meta, cfg)
    if status == "running":
        if held():
            return RunState("running", meta=meta, config=cfg)
        who = f"pid {meta.get('pid', '?')} on {meta.get('host', '?')}"
        gone = "is gone" if meta.get("host") in (None, platform.node()) else "no longer holds its lock"
        return RunState(STALE, f"{who} {gone} (killed?): `revgn train` with its config resumes it", meta, cfg)
    problem = _rows_problem(run, status, (cfg.get("train") or {}).get("epochs"))
    if problem:
        return RunState(CORRUPT, problem, meta, cfg)
    if run.ckpt_dir.is_dir():
        for ck in sorted(run.ckpt_dir.glob("*.pt")):
            problem = checkpoint_problem(ck) if checkpoints else _checkpoint_truncated(ck)
            if problem:
                return RunState(CORRUPT, problem, meta, cfg)
    return RunState(status, meta=meta, config=cfg)


def quarantine_root(results_dir: str | Path, stamp: str | None = None) -> Path:
    """``<results>/.quarantine/<UTC timestamp>``: hidden from every listing (dot), inside the results dir."""
    stamp = stamp or dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path(results_dir) / QUARANTINE / stamp


def quarantine(run: RunDir, reason: str, dest_root: Path | None = None) -> Path:
    """Move a damaged run dir, whole and unchanged, to ``<results>/.quarantine/<timestamp>/<experiment>/<run_id>``
    and note why in ``<timestamp>/REASONS.txt``; returns the new path. Moving it back restores it."""
    root = dest_root or quarantine_root(run.path.parent.parent)
    dest = root / run.experiment / run.run_id
    n = 1
    while dest.exists():  # the same run quarantined twice within a second
        n += 1
        dest = root / run.experiment / f"{run.run_id}.{n}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run.path, dest)  # same file system (inside the results dir): a rename, nothing copied or lost
    with open(root / "REASONS.txt", "a") as fh:
        fh.write(f"{run.experiment}/{dest.name}: {reason}\n")
    return dest


def iter_run_dirs(results_dir: str | Path) -> Iterator[RunDir]:
    """Every ``<experiment>/<run_id>/`` below ``results_dir`` that looks like a run (has meta.json or config.yaml)."""
    root = Path(results_dir)
    if not root.is_dir():
        return
    for exp in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for run in sorted(p for p in exp.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (run / "meta.json").exists() or (run / "config.yaml").exists():
                yield RunDir(run)


def probe_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write (and remove) a probe file in it; OSError when either fails."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
        pass


def check_writable(results_dir: str | Path) -> Path:
    """Create ``results_dir`` if needed and prove it is writable, with a one-line error otherwise."""
    root = Path(results_dir).expanduser()
    try:
        probe_writable(root)
    except OSError as e:
        raise StoreError(f"results dir {root} is not writable: {e.strerror or e}") from e
    return root

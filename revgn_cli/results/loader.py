"""The only reader that plots and checks use: runs on disk → one pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from revgn_cli.config import flatten
from revgn_cli.results.store import RunDir, StoreError, iter_run_dirs


def read_config(run: RunDir) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(run.config_path.read_text())
    except FileNotFoundError as e:
        raise StoreError(f"missing {run.config_path}") from e
    except yaml.YAMLError as e:
        raise StoreError(f"corrupt {run.config_path}: {str(e).splitlines()[0]}") from e
    if not isinstance(cfg, dict):
        raise StoreError(f"corrupt {run.config_path}: not a mapping")
    return cfg


def _matches(flat: dict[str, Any], filters: dict[str, Any]) -> bool:
    for key, want in filters.items():
        have = flat.get(key)
        wants = want if isinstance(want, (list, tuple, set)) else [want]
        if not any(_equal(have, w) for w in wants):
            return False
    return True


def _equal(have: Any, want: Any) -> bool:
    if have is None or want is None:
        return have is None and (want is None or str(want).lower() in ("null", "none"))
    if isinstance(have, bool):
        return str(have).lower() == str(want).lower()
    if isinstance(have, (int, float)):
        try:
            return float(have) == float(want)
        except (TypeError, ValueError):
            return False
    return str(have) == str(want)


def normalise_filters(filters: dict[str, Any] | None, kw: dict[str, Any]) -> dict[str, Any]:
    """Filter keys are override-style (``optimizer.name``); keyword arguments spell the dots as ``__``."""
    out = dict(filters or {})
    out.update({k.replace("__", "."): v for k, v in kw.items()})
    return out


def run_summaries(results_dir: str | Path, filters: dict[str, Any] | None = None,
                  include_broken: bool = False) -> list[dict[str, Any]]:
    """One dict per run: flattened config, meta (status, times, device) and its path; filtered."""
    out = []
    for run in iter_run_dirs(results_dir):
        try:
            flat = flatten(read_config(run))
            meta = run.read_meta()
        except StoreError as e:
            if include_broken:
                out.append({"run_id": run.run_id, "experiment": run.experiment, "status": "corrupt",
                            "error": str(e), "path": str(run.path)})
            continue
        flat.update({"run_id": run.run_id, "experiment": run.experiment, "path": str(run.path),
                     "status": meta.get("status", "unknown")})
        flat.update({f"meta.{k}": v for k, v in meta.items() if k != "status"})
        if _matches(flat, filters or {}):
            out.append(flat)
    return out


def load_runs(results_dir: str | Path = "results", filters: dict[str, Any] | None = None,
              *, statuses: tuple[str, ...] | None = None, **kw: Any) -> pd.DataFrame:
    """Join every matching run's metrics rows with its config columns.

    Args:
        results_dir: the results root.
        filters: override-style keys → wanted value (or list of values), e.g. ``{"optimizer.name": "gn"}``;
            keyword arguments do the same with ``__`` for dots (``optimizer__name="gn"``, ``experiment="fig1"``).
        statuses: keep only runs with these statuses (default: all; plots pass ``("done", "diverged")``…).
    Returns:
        A long table: ``run_id, epoch, step, split`` + metric columns + config columns (``optimizer.name``, …) +
        ``status`` and ``experiment``. Empty (with those key columns) when nothing matches.
    """
    flt = normalise_filters(filters, kw)
    frames = []
    for summ in run_summaries(results_dir, flt):
        if statuses is not None and summ["status"] not in statuses:
            continue
        rows = RunDir(Path(summ["path"])).read_rows()
        if rows.empty:
            continue
        cfg_cols = {k: v for k, v in summ.items() if k not in rows.columns and not k.startswith("meta.")}
        rows = rows.assign(**{k: [v] * len(rows) if isinstance(v, (list, dict)) else v for k, v in cfg_cols.items()})
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=["run_id", "epoch", "step", "split", "status", "experiment"])
    return pd.concat(frames, ignore_index=True, sort=False)

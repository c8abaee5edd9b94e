"""The only reader that plots and checks use: runs on disk → one pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from revgn_cli.config import Config, config_dict, flatten
from revgn_cli.results.store import RunDir, StoreError, iter_run_dirs

if TYPE_CHECKING:  # imported in load_runs: `revgn runs` lists runs without pandas
    import pandas as pd


def read_config(run: RunDir) -> dict[str, Any]:
    try:
        # The C loader when libyaml is there: `revgn runs` parses every run's config (≈10× faster than pure Python).
        cfg = yaml.load(run.config_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
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


def query_runs(results_dir: str | Path, filters: dict[str, Any] | None = None, *, strict: bool = True,
               include_broken: bool = False) -> list[dict[str, Any]]:
    """``run_summaries`` that refuses a query which cannot mean what it says (``strict``): a results path that is
    missing or a file, a filter key no run has (with the closest valid key), a value the key's type cannot take."""
    from revgn_cli.results.query import check_filters, check_results_dir

    if not strict:
        return run_summaries(results_dir, filters, include_broken=include_broken)
    check_results_dir(results_dir)
    every = run_summaries(results_dir, None, include_broken=include_broken)
    check_filters(every, filters or {}, flatten(config_dict(Config())))
    return [s for s in every if _matches(s, filters or {})]


def load_runs(results_dir: str | Path = "results", filters: dict[str, Any] | None = None,
              *, statuses: tuple[str, ...] | None = None, strict: bool = True, **kw: Any) -> pd.DataFrame:
    """Join every matching run's metrics rows with its config columns.

    Args:
        results_dir: the results root.
        filters: override-style keys → wanted value (or list of values), e.g. ``{"optimizer.name": "gn"}``;
            keyword arguments do the same with ``__`` for dots (``optimizer__name="gn"``, ``experiment="fig1"``).
        statuses: keep only runs with these statuses (default: all; plots pass ``("done", "diverged")``…).
        strict: raise ``QueryError`` for a missing results dir, an unknown filter key or a value of the wrong type
            (see ``query_runs``); figures pass False (they name their own run ids and report missing runs).
    Returns:
        A long table: ``run_id, epoch, step, split`` + metric columns + config columns (``optimizer.name``, …) +
        ``status`` and ``experiment``. Empty (with those key columns) when nothing matches.
    """
    import pandas as pd

    flt = normalise_filters(filters, kw)
    frames = []
    for summ in query_runs(results_dir, flt, strict=strict):
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


def last_logged(summary: dict[str, Any]) -> dict[str, Any]:
    """The last evaluation an unfinished run logged: ``{"epoch": e, metric: value, …}`` (``{}`` if none/unreadable).

    Every value is the latest non-missing one of its column among the epoch rows, so an interrupted run shows
    where it got to instead of "—".
    """
    try:
        rows = RunDir(Path(summary["path"])).read_rows()
    except StoreError:
        return {}
    ep = rows[rows["split"] == "epoch"] if "split" in rows.columns else rows.iloc[0:0]
    if ep.empty:
        return {}
    out: dict[str, Any] = {"epoch": float(ep["epoch"].max())}
    for col in ep.columns:
        if col not in ("run_id", "epoch", "step", "split"):
            vals = ep[col].dropna()
            if not vals.empty:
                out[col] = float(vals.iloc[-1])
    return out

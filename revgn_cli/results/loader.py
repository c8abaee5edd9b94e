"""The only reader that plots and checks use: runs on disk → one pandas DataFrame."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from revgn_cli.config import Config, config_dict, flatten
from revgn_cli.results.store import CORRUPT, RunDir, StoreError, iter_run_dirs, read_config, run_state


class CorruptRunError(StoreError):
    """A run a reader needs is present but unreadable; the one-line message names it and the command to inspect."""

if TYPE_CHECKING:  # imported in load_runs: `revgn runs` lists runs without pandas
    import pandas as pd


def _matches(flat: dict[str, Any], filters: dict[str, Any], *, partial: bool = False) -> bool:
    """Every filter holds; with ``partial`` (a corrupt run, whose config may be unreadable) keys it lacks pass."""
    for key, want in filters.items():
        if partial and key not in flat:
            continue
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


def _summary(run: RunDir) -> dict[str, Any]:
    """The run's flattened config + meta + state (``store.run_state``); raises StoreError saying why the run
    cannot be trusted."""
    st = run_state(run)
    if st.state == CORRUPT:
        raise StoreError(st.reason or "corrupt")
    flat = flatten(st.config if st.config is not None else read_config(run))
    meta = st.meta or {}
    flat.update({"run_id": run.run_id, "experiment": run.experiment, "path": str(run.path), "status": st.state})
    flat.update({f"meta.{k}": v for k, v in meta.items() if k != "status"})
    if st.reason:
        flat["error"] = st.reason
    return flat


def _corrupt(run: RunDir, reason: str) -> dict[str, Any]:
    """A row for a run that cannot be read: what its path tells, what of its config reads, and why."""
    try:
        flat = flatten(read_config(run))
    except StoreError:
        flat = {}
    flat.update({"run_id": run.run_id, "experiment": run.experiment, "path": str(run.path), "status": CORRUPT,
                 "error": reason})
    return flat


def run_summaries(results_dir: str | Path, filters: dict[str, Any] | None = None,
                  include_broken: bool = False) -> list[dict[str, Any]]:
    """One dict per run: flattened config, meta (status, times, device) and its path; filtered.

    A run that cannot be read or trusted (corrupt YAML, a config that does not fit the schema, an unreadable
    meta.json, a finished run without readable rows) is a row with status ``corrupt`` and its ``error`` when
    ``include_broken`` — matched on the filter keys it has — and left out otherwise.
    """
    out = []
    for run in iter_run_dirs(results_dir):
        try:
            flat = _summary(run)
        except StoreError as e:
            row = _corrupt(run, str(e))
            if include_broken and _matches(row, filters or {}, partial=True):
                out.append(row)
            continue
        if _matches(flat, filters or {}):
            out.append(flat)
    return out


def query_runs(results_dir: str | Path, filters: dict[str, Any] | None = None, *, strict: bool = True,
               include_broken: bool = False, require_match: bool = False) -> list[dict[str, Any]]:
    """``run_summaries`` that refuses a query which cannot mean what it says (``strict``): a results path that is
    missing or a file, a filter key no run has (with the closest valid key), a value the key's type cannot take;
    with ``require_match``, filters that select no run (naming the values that exist)."""
    from revgn_cli.results.query import check_filters, check_results_dir, no_match_error

    if not strict:
        return run_summaries(results_dir, filters, include_broken=include_broken)
    check_results_dir(results_dir)
    every = run_summaries(results_dir, None, include_broken=include_broken)
    check_filters(every, filters or {}, flatten(config_dict(Config())))

    def matches(s: dict[str, Any], flt: dict[str, Any]) -> bool:  # a corrupt run: matched on the keys it has
        return _matches(s, flt, partial=s["status"] == CORRUPT)

    hits = [s for s in every if matches(s, filters or {})]
    if require_match and filters and every and not hits:
        raise no_match_error(every, filters, matches)
    return hits


def corrupt_error(summ: dict[str, Any], results_dir: str | Path) -> CorruptRunError:
    return CorruptRunError(f"run {summ['experiment']}/{summ['run_id']} cannot be read ({summ['error']}): "
                           f"`revgn runs --check --results {results_dir}` says more; --allow-partial goes on "
                           "without it")


def _rows_disagree(summ: dict[str, Any], rows: pd.DataFrame) -> str | None:
    """Why the rows do not match what meta.json says (a finished run must have its evaluation rows)."""
    if summ["status"] in ("done", "diverged") and rows.empty:
        return f"status {summ['status']} but metrics.parquet has no rows"
    if summ["status"] == "done" and "train.epochs" in summ:
        last = rows.loc[rows["split"] == "epoch", "epoch"].max() if "split" in rows else None
        if last is None or last != last or int(last) != int(summ["train.epochs"]):
            return f"status done but the rows end at epoch {last} of {summ['train.epochs']}"
    return None


def load_runs(results_dir: str | Path = "results", filters: dict[str, Any] | None = None,
              *, statuses: tuple[str, ...] | None = None, allow_partial: bool = False, strict: bool = True,
              **kw: Any) -> pd.DataFrame:
    """Join every matching run's metrics rows with its config columns.

    Args:
        results_dir: the results root.
        filters: override-style keys → wanted value (or list of values), e.g. ``{"optimizer.name": "gn"}``;
            keyword arguments do the same with ``__`` for dots (``optimizer__name="gn"``, ``experiment="fig1"``).
        statuses: keep only runs with these statuses (default: all; plots pass ``("done", "diverged")``…).
        allow_partial: a matching run that cannot be read is skipped and named in ``df.attrs["partial"]``
            (``experiment/run_id: reason``) instead of raising ``CorruptRunError``.
        strict: raise ``QueryError`` for a missing results dir, an unknown filter key or a value of the wrong type
            (see ``query_runs``); figures pass False (they name their own run ids and report missing runs).
    Returns:
        A long table: ``run_id, epoch, step, split`` + metric columns + config columns (``optimizer.name``, …) +
        ``status`` and ``experiment``. Empty (with those key columns) when nothing matches.
    """
    import pandas as pd

    flt = normalise_filters(filters, kw)
    frames = []
    partial: list[str] = []

    def unreadable(summ: dict[str, Any]) -> None:
        if not allow_partial:
            raise corrupt_error(summ, results_dir)
        partial.append(f"{summ['experiment']}/{summ['run_id']}: {summ['error']}")

    for summ in query_runs(results_dir, flt, strict=strict, include_broken=True):
        if summ["status"] == CORRUPT:
            unreadable(summ)
            continue
        if statuses is not None and summ["status"] not in statuses:
            continue
        try:
            rows = RunDir(Path(summ["path"])).read_rows()
        except StoreError as e:
            unreadable({**summ, "error": str(e)})
            continue
        problem = _rows_disagree(summ, rows)
        if problem:
            unreadable({**summ, "error": problem})
            continue
        if rows.empty:
            continue
        cfg_cols = {k: v for k, v in summ.items() if k not in rows.columns and not k.startswith("meta.")}
        rows = rows.assign(**{k: [v] * len(rows) if isinstance(v, (list, dict)) else v for k, v in cfg_cols.items()})
        frames.append(rows)
    if not frames:
        df = pd.DataFrame(columns=["run_id", "epoch", "step", "split", "status", "experiment"])
    else:
        df = pd.concat(frames, ignore_index=True, sort=False)
    df.attrs["partial"] = partial
    return df


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

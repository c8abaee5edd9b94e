"""A run archive: finished runs' small files kept in a folder that can be committed, so that a study longer than one
sitting on one machine goes on elsewhere without training its finished runs again.

A run dir is ``<results>/<experiment>/<run_id>/`` with config.yaml, meta.json, metrics.parquet and checkpoints/. A
*finished* run (status ``done`` or ``diverged``, passing ``run_state``) needs no checkpoint to be skipped or read,
so the archive keeps the other three files (tens to hundreds of kB a run, against ~13 MB of checkpoint for the
quick model) under ``<archive>/<experiment>/<run_id>/``. ``restore`` copies archived runs the results dir lacks
back into it; the sweep then skips them as finished (``revgn_cli.train.runner.execute``) and every reader (tuner,
study tables, ``revgn runs``) sees them as if trained there. Unfinished, damaged or running runs are never archived,
and a run dir already in the results dir is never overwritten (it is what that machine trained).

A study's ``keeper`` also carries the rate tuner's record of the study's preset (``<archive>/tune/<preset>.json``,
laid out as in a results dir): restored entries are the ones the results dir lacks, archived ones replace what
differs (``revgn_cli.tune.copy_records``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Collection, Sequence

from revgn_cli.results.store import RunDir, iter_run_dirs, run_state

ARCHIVE_FILES = ("config.yaml", "meta.json", "metrics.parquet")
FINISHED = ("done", "diverged")


def _copy_run(src: Path, dest: Path) -> None:
    """Copy a run's ``ARCHIVE_FILES`` to ``dest`` whole or not at all (a temp dir beside it, then a rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        for f in ARCHIVE_FILES:
            shutil.copy2(src / f, tmp / f)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finished(run: RunDir) -> bool:
    return run_state(run).state in FINISHED


def _copy_finished(src_root: str | Path, dst_root: str | Path, experiments: Collection[str] | None) -> list[RunDir]:
    """Copy every finished run below ``src_root`` (of ``experiments``, or all) that ``dst_root`` lacks into it."""
    out = []
    for run in iter_run_dirs(src_root):
        if experiments is not None and run.experiment not in experiments:
            continue
        dest = Path(dst_root) / run.experiment / run.run_id
        if dest.exists() or not _finished(run):
            continue
        _copy_run(run.path, dest)
        out.append(RunDir(dest))
    return out


def archive_runs(results_dir: str | Path, archive: str | Path,
                 experiments: Collection[str] | None = None) -> list[RunDir]:
    """Copy every finished run of ``results_dir`` (of ``experiments``, or all) that ``archive`` lacks into it.
    Returns the runs archived now."""
    return _copy_finished(results_dir, archive, experiments)


def restore_runs(archive: str | Path, results_dir: str | Path,
                 experiments: Collection[str] | None = None) -> list[RunDir]:
    """Copy every finished archived run (of ``experiments``, or all) that ``results_dir`` lacks into it. Returns the
    runs restored now; an archived run that does not read as finished is left where it is."""
    return _copy_finished(archive, results_dir, experiments)


def keeper(archive: str | Path | None, results_dir: str | Path, base: Sequence[str],
           log: Callable[[str], None] = lambda s: None, *, restore: bool = True) -> Callable[[], None]:
    """What a long study whose runs compose from ``base`` does with an archive: restore its finished runs
    (``study_experiments``) into ``results_dir`` now (unless ``restore`` is False: a forced rerun retrains), and
    return the function that archives the ones finished since (to call after each launch, interrupted or not).
    No archive: nothing, and a no-op."""
    if archive is None:
        return lambda: None
    from revgn_cli.overrides import preset_of
    from revgn_cli.tune import copy_records

    experiments, preset = study_experiments(base), preset_of(base)
    if restore:
        n = len(restore_runs(archive, results_dir, experiments))
        r = copy_records(archive, results_dir, preset, replace=False) if preset else 0
        if n or r:
            log(f"restored {n} finished run(s)" + (f" and {_entries(r)}" if r else "") + f" from {archive}")

    def keep() -> None:
        n = len(archive_runs(results_dir, archive, experiments))
        r = copy_records(results_dir, archive, preset, replace=True) if preset else 0
        if n or r:
            log(f"  {n} finished run(s)" + (f", {_entries(r)}" if r else "") + f" → {archive}")
    return keep


def _entries(r: int) -> str:
    return f"{r} tune record entr{'y' if r == 1 else 'ies'}"


def study_experiments(base: Sequence[str]) -> set[str]:
    """The experiments (results sub-folders) of a study whose runs compose from ``base``: the preset's exp_name and
    the rate tuner's ``<exp_name>_tune``."""
    from revgn_cli.config import compose_config

    name = compose_config(list(base)).exp_name
    return {name, f"{name}_tune"}

"""``revgn runs --check`` / ``--clean``: find run directories that cannot be trusted, and only those."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from revgn_cli.results.loader import config_problem, read_config
from revgn_cli.results.store import ROW_KEYS, STATUSES, RunDir, StoreError


@dataclass
class Problem:
    path: Path
    reason: str
    keep: bool = False  # reported only: --clean never deletes it (it may hold a run's data)


def _readable_meta(d: Path) -> bool:
    try:
        RunDir(d).read_meta()
    except StoreError:
        return False
    return (d / "meta.json").is_file()


def _holds_checkpoint(d: Path) -> bool:
    return any(p.is_file() for p in d.rglob("*.pt"))


def _check_run(run: RunDir) -> str | None:
    """Why this run dir is corrupt, or None when config, meta, rows and status agree."""
    try:
        cfg = read_config(run)
    except StoreError as e:
        return str(e)
    problem = config_problem(cfg)
    if problem:
        return problem
    try:
        meta = run.read_meta()
    except StoreError as e:
        return str(e)
    status = meta.get("status")
    if status not in STATUSES:
        return f"meta.json has no valid status ({status!r})"
    if not run.metrics_path.exists():
        return None if status in ("running", "failed", "interrupted") else f"status {status} but no metrics.parquet"
    try:
        rows = run.read_rows()
    except StoreError as e:
        return str(e)
    missing = [k for k in ROW_KEYS if k not in rows.columns]
    if missing:
        return f"metrics.parquet lacks columns {missing}"
    if status == "done":
        epochs = cfg.get("train", {}).get("epochs")
        last = rows.loc[rows["split"] == "epoch", "epoch"].max() if len(rows) else None
        if epochs is not None and (last is None or int(last) != int(epochs)):
            return f"status done but the rows end at epoch {last} of {epochs}"
    if status == "running" and not run.lock().held_elsewhere():
        return "status running but no process holds it (killed?): `revgn train` with its config resumes it"
    return None


def check_runs(results_dir: str | Path) -> list[Problem]:
    """Every corrupt run dir, orphaned directory and stale temporary file under ``results_dir``."""
    root = Path(results_dir)
    problems: list[Problem] = []
    if not root.is_dir():
        return problems
    for exp in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _readable_meta(exp):  # a run one level too high (an old exp_name=.): its files are nobody's orphans
            problems.append(Problem(exp, "a run stored outside <experiment>/<run_id>/; kept — move it into an "
                                         "experiment directory to use it", keep=True))
            continue
        for d in sorted(p for p in exp.iterdir() if p.is_dir() and not p.name.startswith(".")):
            run = RunDir(d)
            if not run.meta_path.exists() and not run.config_path.exists():
                if _holds_checkpoint(d):
                    problems.append(Problem(d, "no config.yaml or meta.json but holds a checkpoint no run claims; "
                                               "kept — inspect and delete by hand", keep=True))
                else:
                    problems.append(Problem(d, "orphaned directory (no config.yaml, no meta.json)"))
                continue
            reason = _check_run(run)
            if reason:
                problems.append(Problem(d, reason))
            for tmp in d.rglob(".*.tmp"):
                problems.append(Problem(tmp, "leftover temporary file of an interrupted write"))
    return problems


def clean_runs(problems: list[Problem]) -> int:
    """Delete exactly the flagged paths (a stale `running` run is resumable, so it is kept, and so is whatever
    ``check_runs`` marked ``keep``); return how many."""
    removed = 0
    for p in problems:
        if p.keep or p.reason.startswith("status running but no process"):
            continue
        if p.path.is_dir():
            shutil.rmtree(p.path)
        else:
            p.path.unlink(missing_ok=True)
        removed += 1
    return removed

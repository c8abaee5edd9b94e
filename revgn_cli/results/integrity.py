"""``revgn runs --check`` / ``--clean``: find the run directories that cannot be trusted — and never destroy data.

``--clean`` deletes only provable garbage: the temporary files of interrupted atomic writes and empty run
directories (``<experiment>/<12 hex digits>/`` with nothing in them). A damaged run (``store.run_state`` says
``corrupt``) moves whole, unchanged, into ``<results>/.quarantine/<timestamp>/<experiment>/<run_id>``; moving it
back restores it. Anything the store did not make (a folder of the user's, a file it never writes) is left alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from revgn_cli.results.store import (
    CORRUPT, RUN_ID, STALE, STORE_FILES, RunDir, quarantine, quarantine_root, run_state,
)

DELETE, QUARANTINE, KEEP = "delete", "quarantine", "keep"  # what --clean does with a flagged path


@dataclass
class Problem:
    path: Path
    reason: str
    action: str = KEEP  # DELETE (garbage), QUARANTINE (a damaged run, moved whole) or KEEP (reported only)

    @property
    def keep(self) -> bool:
        return self.action == KEEP


def _only_store_files(d: Path) -> bool:
    """Everything in ``d`` has a name the store writes (a run dir that holds files of the user's is theirs)."""
    for p in d.iterdir():
        if p.name in STORE_FILES or (p.name.startswith(".") and p.name.endswith(".tmp")):
            continue
        return False
    ck = d / "checkpoints"
    return not ck.exists() or (ck.is_dir() and all(p.suffix in (".pt", ".tmp") for p in ck.iterdir()))


def _tmp_files(d: Path) -> list[Path]:
    return sorted(p for p in [*d.glob(".*.tmp"), *d.glob("checkpoints/.*.tmp")] if p.is_file())


def _check_dir(d: Path) -> list[Problem]:
    run = RunDir(d)
    if not run.meta_path.exists() and not run.config_path.exists():
        if not RUN_ID.fullmatch(d.name) or not _only_store_files(d):
            return [Problem(d, "not a run (no config.yaml, no meta.json; not made by revgn): left alone")]
        if not any(d.iterdir()):
            return [Problem(d, "empty run directory (nothing was written)", DELETE)]
        if run.lock().held_elsewhere():
            return []  # being created right now
        return [Problem(d, "damaged run: no config.yaml and no meta.json", QUARANTINE)]
    st = run_state(run, checkpoints=True)
    if st.state == "running":
        return []  # a live process owns it, temporary files included
    if st.state == CORRUPT:  # its temporary files move with it
        return [Problem(d, st.reason or "corrupt", QUARANTINE)]
    out = [Problem(d, f"stale: {st.reason}")] if st.state == STALE else []
    return out + [Problem(t, "leftover temporary file of an interrupted write", DELETE) for t in _tmp_files(d)]


def check_runs(results_dir: str | Path) -> list[Problem]:
    """Every corrupt or stale run, and the garbage --clean may delete, under ``results_dir``.

    Only experiment directories that hold at least one run are looked into; the others (``plots/``, a folder of
    the user's) are not revgn's and are not reported.
    """
    root = Path(results_dir)
    problems: list[Problem] = []
    if not root.is_dir():
        return problems
    for exp in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (exp / "meta.json").is_file():  # a run one level too high (an old exp_name=.)
            problems.append(Problem(exp, "a run stored outside <experiment>/<run_id>/; kept — move it into an "
                                         "experiment directory to use it"))
            continue
        subdirs = sorted(p for p in exp.iterdir() if p.is_dir() and not p.name.startswith("."))
        ours = [d for d in subdirs if RUN_ID.fullmatch(d.name) or (d / "meta.json").exists()
                or (d / "config.yaml").exists()]
        if not ours:
            continue
        for d in subdirs:
            problems += _check_dir(d)
    return problems


def clean_runs(problems: list[Problem], results_dir: str | Path) -> tuple[int, list[Path]]:
    """Delete the garbage, quarantine the damaged runs, leave the rest; return (deleted, quarantined paths)."""
    deleted, moved = 0, []
    dest = quarantine_root(results_dir)
    for p in problems:
        if p.action == DELETE:
            if p.path.is_dir():
                p.path.rmdir()  # empty by construction: rmdir refuses anything else
            else:
                p.path.unlink(missing_ok=True)
            deleted += 1
        elif p.action == QUARANTINE and p.path.is_dir():
            moved.append(quarantine(RunDir(p.path), p.reason, dest))
    return deleted, moved

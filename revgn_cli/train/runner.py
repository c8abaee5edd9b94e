"""One job, end to end: config → run dir (lock, meta, config.yaml) → training loop → status.

Used by ``revgn train`` (compose API) and by every sweep job (``revgn_cli.sweep_app``), so both skip finished
runs, resume interrupted ones and record the same provenance.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from revgn_cli.config import Config, config_dict, run_id
from revgn_cli.results.store import CORRUPT, RunDir, check_writable, quarantine, run_state
from revgn_cli.train.loop import Interrupted, Reporter, load_checkpoint_file, prepare_data, train_run
from revgn_cli.train.runtime import resolve_device

FINISHED = ("done", "diverged")


@dataclass
class RunOutcome:
    run_id: str
    path: Path
    status: str  # done | diverged | skipped | interrupted | failed
    resumed: bool = False
    final: dict[str, Any] | None = None
    prior: str | None = None  # when skipped: the status it had finished with (done | diverged)
    error: str | None = None  # meta.json's reason (a diverged run's)
    quarantined: Path | None = None  # where the earlier files went (corrupt, or replaced by --force) before it trained
    why: str | None = None  # why they moved: "corrupt" | "forced"

    def moved_note(self) -> str | None:
        """One line for the user when the earlier files moved: where to, and how to get them back."""
        if self.quarantined is None:
            return None
        what = "was corrupt" if self.why == "corrupt" else "earlier run replaced (--force)"
        return f"{what}: its files moved to {self.quarantined} (move them back to restore); trained again"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_dir_for(cfg: Config) -> RunDir:
    return RunDir(Path(cfg.results_dir).expanduser() / cfg.exp_name / run_id(cfg))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def execute(cfg: Config, *, force: bool = False, reporter: Reporter | None = None) -> RunOutcome:
    """Run one configured job. Finished runs are skipped unless ``force``; unfinished ones resume."""
    check_writable(cfg.results_dir)
    device = resolve_device(cfg.device)  # fail fast, before touching the run dir
    run = run_dir_for(cfg)
    st = run_state(run, checkpoints=True) if run.path.is_dir() else None
    if st and st.state in FINISHED and not force:  # finished is final: no lock or data needed to skip
        return _skipped(run, st.meta or {})
    td = prepare_data(cfg, device)  # bad data or sizes fail here, before anything is written
    if cfg.train.init_from and not run.ckpt_path.exists():
        load_checkpoint_file(cfg.train.init_from)  # not a checkpoint: one line, before anything is written
    with run.lock():
        # Again, under the lock: another job may have finished it meanwhile.
        st = run_state(run, checkpoints=True, own_lock=True) if run.path.is_dir() else None
        if st and st.state in FINISHED and not force:
            return _skipped(run, st.meta or {})
        moved, why = None, None
        if st and st.state == CORRUPT and any(run.path.iterdir()):
            # Damaged files (unreadable config/meta/rows, rows cut short, a checkpoint that does not load) are
            # never resumed from nor deleted: they move whole to <results>/.quarantine/ and the run trains anew.
            moved, why = quarantine(run, st.reason or CORRUPT), "corrupt"
        elif force and run.path.is_dir() and any(run.path.iterdir()):
            # --force retrains from scratch, but the earlier run (finished or not) is data someone may want back:
            # it moves whole to the quarantine too, never deleted. The lock lies beside the run dir, so it stays held.
            moved, why = quarantine(run, f"replaced by --force (was {st.state if st else 'unknown'})"), "forced"
        meta = run.read_meta()
        resumed = run.ckpt_path.exists()
        run.path.mkdir(parents=True, exist_ok=True)
        from revgn_cli.results.store import atomic_write_text

        atomic_write_text(run.config_path, yaml.safe_dump(config_dict(cfg), sort_keys=False))
        run.write_meta(status="running", run_id=run.run_id, experiment=cfg.exp_name, seed=cfg.seed,
                       device=str(device), torch=torch.__version__, python=platform.python_version(),
                       host=platform.node(), pid=os.getpid(), git_commit=git_commit(),
                       started=meta.get("started", _now()), resumed=resumed or meta.get("resumed", False),
                       error=None, **_slurm_meta(meta))
        t0 = time.time()
        prior_wall = float(meta.get("wall_s", 0.0) or 0.0)

        def wall() -> float:  # training seconds, earlier sittings included
            return prior_wall + time.time() - t0

        try:
            final_status, st = train_run(cfg, run, device, td, reporter, wall=wall)
        except Interrupted as e:
            run.write_meta(status="interrupted", error=str(e), wall_s=wall())
            raise
        except BaseException as e:
            run.write_meta(status="failed", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                           traceback=traceback.format_exc(limit=8), wall_s=wall())
            raise
        final = summarise(st.rows)
        run.write_meta(status=final_status, finished=_now(), wall_s=wall(),
                       epochs_done=st.epoch, steps_done=st.step, final=final, error=st.diverged)
        return RunOutcome(run.run_id, run.path, final_status, resumed=resumed, final=final, error=st.diverged,
                          quarantined=moved, why=why)


def _slurm_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The SLURM job training the run and how often SLURM requeued it (``revgn runs show``); a run resumed
    outside SLURM drops the stale id."""
    from revgn_cli.cluster.job import slurm_job_id, slurm_restarts

    job = slurm_job_id()
    if job is None:
        return {"slurm_job": None, "slurm_restarts": None} if meta.get("slurm_job") else {}
    return {"slurm_job": job, "slurm_restarts": slurm_restarts()}


def _skipped(run: RunDir, meta: dict[str, Any]) -> RunOutcome:
    return RunOutcome(run.run_id, run.path, "skipped", final=meta.get("final"), prior=meta.get("status"),
                      error=meta.get("error"))


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Last logged value of the headline metrics, and of val_loss/val_acc where logged (for `revgn runs`)."""
    from revgn_cli.results.table import METRICS, VAL_METRICS

    out: dict[str, float] = {}
    for key in (*METRICS, *VAL_METRICS):
        for row in reversed(rows):
            if row.get("split") == "epoch" and key in row:
                out[key] = float(row[key])
                break
    return out

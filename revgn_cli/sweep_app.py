"""The ``@hydra.main`` application behind ``revgn sweep`` (docs/design.md: multirun and launchers need it).

Run as ``python -m revgn_cli.sweep_app --multirun OVERRIDES...``. Each job composes its config, runs it through
``execute`` (so finished runs are skipped and unfinished ones resume), and never raises: a failure is recorded in
the run's meta.json and in the sweep report, and the sweep goes on with the next job.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import hydra
from omegaconf import DictConfig

from revgn_cli.config import VERSION_BASE, conf_dir


def report_job(record: dict) -> None:
    """Append one job's outcome to the sweep report (``REVGN_SWEEP_REPORT``) and print its human line."""
    path = os.environ.get("REVGN_SWEEP_REPORT")
    line = json.dumps(record, default=str)
    if path:
        # One short O_APPEND write per job: safe with parallel joblib workers on a local filesystem.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    # One human line per finished job; the parent counts these for its progress bar.
    print(job_line(record), flush=True)


def job_line(record: dict) -> str:
    """A report record as the sweep's one human line for that job."""
    final = " ".join(f"{k}={v:.4g}" for k, v in (record.get("final") or {}).items())
    what = record.get("error") or final
    where = f" (SLURM job {record['slurm_job']})" if record.get("slurm_job") else ""
    return (f"[revgn sweep] {record['status']} {record.get('run_id', '-')}{where} "
            f"{' '.join(record.get('overrides', []))}{' — ' + what if what else ''}")


def _share_cores() -> None:
    """Parallel jobs (joblib launcher) each get cores / n_jobs torch threads: oversubscribed threads slow
    LAPACK's eigh — the heart of the GN step — 5-20× (measured, docs/gn.md). A SLURM job gets the CPUs it asked
    for (``cpus_per_task``), not every core of the node it shares. ``REVGN_THREADS`` overrides."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    if os.environ.get("REVGN_THREADS"):
        torch.set_num_threads(int(os.environ["REVGN_THREADS"]))
        return
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        torch.set_num_threads(max(1, int(os.environ["SLURM_CPUS_PER_TASK"])))
        return
    launcher = HydraConfig.get().launcher
    if "joblib" in str(launcher.get("_target_", "")):
        n_jobs = int(launcher.get("n_jobs", -1) or -1)
        cores = os.cpu_count() or 1
        n_jobs = cores if n_jobs < 1 else n_jobs
        torch.set_num_threads(max(1, cores // n_jobs))


def _job_reporter(rid: str):
    """Under `revgn sweep` (which sets the report env var), print progress lines for the parent's per-job line."""
    if not os.environ.get("REVGN_SWEEP_REPORT"):
        return None
    from revgn_cli.progress import LineReporter

    return LineReporter(rid)


def _stop_on_signals() -> None:
    """SIGINT/SIGTERM/SIGUSR2 (the front end forwards the first two to this process group) stop the sweep: the
    running job checkpoints at its next update boundary (the training loop's own handler), and jobs not yet started
    return without training. In a joblib launcher's parent this keeps it alive to wait for its workers."""
    from revgn_cli.train.loop import PENDING_SIGNALS, STOP_SIGNALS

    def handler(signum: int, frame: object) -> None:
        PENDING_SIGNALS.append(signum)

    for s in STOP_SIGNALS:
        try:
            signal.signal(s, handler)
        except ValueError:  # not the main thread: the loop's own handler is not installed there either
            pass


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base=VERSION_BASE)
def app(node: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    from revgn_cli.cluster import job as cluster

    requeue = cluster.submitit_requeue_handler()  # submitit's, on SLURM: called once the run has checkpointed
    _stop_on_signals()
    _share_cores()

    from revgn_cli.config import run_id, to_config
    from revgn_cli.train.loop import PENDING_SIGNALS, Interrupted
    from revgn_cli.train.runner import execute

    overrides = list(HydraConfig.get().overrides.task)
    on_slurm = cluster.on_slurm()
    where = {"slurm_job": cluster.slurm_job_id(), "slurm_restarts": cluster.slurm_restarts()} if on_slurm else {}
    if PENDING_SIGNALS:  # the sweep was stopped before this job started: leave it for the rerun
        if on_slurm:
            return _hand_back(PENDING_SIGNALS[0], requeue, overrides, where)
        return "not started"
    try:
        cfg = to_config(node)
    except Exception as e:  # a bad combination: report it, keep sweeping
        report_job({"status": "invalid", "overrides": overrides, "error": str(e).splitlines()[0], **where})
        return "invalid"
    rid = run_id(cfg)
    try:
        out = execute(cfg, force=os.environ.get("REVGN_FORCE") == "1", reporter=_job_reporter(rid))
        if out.quarantined:
            print(f"[revgn sweep] {rid} {out.moved_note()}", file=sys.stderr, flush=True)
        report_job({"status": out.status, "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                    "final": out.final, **where})
        return out.status
    except Interrupted as e:  # checkpointed at its last update, meta says `interrupted` (execute)
        if on_slurm:  # the cluster stopped it: SLURM runs it again and that run reports
            return _hand_back(e.signum, requeue, overrides, {"run_id": rid, "experiment": cfg.exp_name, **where})
        PENDING_SIGNALS.append(signal.SIGINT)  # the jobs after it do not start
        report_job({"status": "interrupted", "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                 "error": str(e)})
        return "interrupted"
    except Exception as e:  # recorded as `failed` in meta.json by execute
        report_job({"status": "failed", "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                 "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", **where})
        return "failed"


def _hand_back(signum: int | None, requeue, overrides: list[str], record: dict) -> str:
    """A SLURM job stopped by the cluster leaves without a result (revgn_cli.cluster.job.hand_back); only when
    submitit will not requeue it (timed out more than ``max_num_timeout`` times) does it return, reported failed."""
    from submitit.core.utils import UncompletedJobError

    from revgn_cli.cluster import job as cluster

    print(f"revgn: checkpointed after signal {signum}, handing the job back to SLURM: {' '.join(overrides)}",
          flush=True)
    try:
        cluster.hand_back(signum, requeue)
    except UncompletedJobError as e:
        report_job({"status": "failed", "overrides": overrides, "error": str(e), **record})
    return "failed"


if __name__ == "__main__":
    _stop_on_signals()  # in this process before any job: the basic launcher runs jobs here, joblib waits here
    sys.exit(app())

"""Inside a sweep job that hydra-submitit-launcher runs on SLURM: who we are, and what to do after a stop signal.

submitit runs each job as ``python -m submitit.core._submit FOLDER``, which writes a result file when the job's
function returns; the launcher on the submitting node waits for that file. A run stopped by the cluster
(``scontrol requeue``, preemption, the time limit's SIGUSR2) checkpoints at its next update boundary (train.loop)
and must then leave *without* a result: SLURM runs the job again, it resumes from the checkpoint, and only its
final outcome reaches the launcher. Returning "interrupted" instead would end the sweep's wait with a wrong answer.
"""
from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, NoReturn


def on_slurm() -> bool:
    """True inside a job submitit started on SLURM (its sbatch script exports SUBMITIT_EXECUTOR=slurm)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def slurm_job_id() -> str | None:
    """This job's id as ``squeue``/``scontrol`` show it: ``ARRAYID_TASK`` for a task of a job array (a sweep's
    jobs), else SLURM_JOB_ID; None outside SLURM."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def slurm_restarts() -> int:
    """How many times SLURM has requeued this job (0 on its first run)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
    except ValueError:
        return 0


def submitit_requeue_handler() -> Callable[[int, Any], None] | None:
    """submitit's own SIGUSR2 handler in this process (``SignalHandler.checkpoint_and_try_requeue``), read before
    revgn installs its handler so it can be called once the run has checkpointed."""
    handler = signal.getsignal(signal.SIGUSR2)
    return handler if callable(handler) and hasattr(handler, "__self__") else None


def hand_back(signum: int | None, requeue: Callable[[int, Any], None] | None) -> NoReturn:
    """The run checkpointed after ``signum``: end this job without a result, so SLURM's rerun reports instead.

    SIGUSR2 (the time limit is near, or a cluster that signals before preempting): submitit's handler decides
    whether the time limit is the reason (that counts against ``max_num_timeout``), requeues the job with
    ``scontrol requeue`` and exits; past ``max_num_timeout`` it raises ``UncompletedJobError`` instead, which
    the caller reports as failed. SIGTERM (``scontrol requeue``, preemption, ``scancel``): SLURM is ending the job
    already and requeues it when that is what was asked; a cancelled job ends without a result and the launcher
    reports it failed, its checkpoint kept for a rerun of the sweep.
    """
    if signum == signal.SIGUSR2 and requeue is not None:
        requeue(signum, None)  # exits (SystemExit) after `scontrol requeue`, or raises UncompletedJobError
    sys.stdout.flush()
    sys.exit(-1)  # SystemExit passes Hydra's and submitit's `except Exception`: no result file is written

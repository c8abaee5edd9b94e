"""The submitting side of a sweep on SLURM: hydra-submitit-launcher's SlurmLauncher, waiting for final states.

The plugin's ``launch`` submits a job array and then blocks on ``job.results()`` job by job; a job that ends
without a result (killed, cancelled, out of memory) either raises there — ending the whole multirun and the wait
for every other job — or, on a cluster without accounting (no ``sacct``), leaves it waiting forever. This
launcher submits the same way and then watches every job until it reaches a final state:

* a result file appeared → the job's own outcome (done, diverged, failed, …; the job wrote its report record);
* SLURM says the job ended, or forgot it, on two answers ``poll_s`` apart, and no result appeared → failed
  (recorded here, as the job could not), or interrupted when this sweep cancelled it after a Ctrl-C;
* anything else (pending, running, requeued after preemption or a time-limit signal) → keep waiting.

``revgn sweep`` runs every ``submitit_slurm`` launcher through this class (``hydra.launcher._target_``), and the
presets in conf/hydra/launcher/ name it too.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

TARGET = "hydra_plugins.revgn_launcher.SlurmLauncher"
PLUGIN_TARGET = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"

# States in which a job may still produce its result (sacct/squeue spelling). PREEMPTED is not here: a requeued
# job shows REQUEUED/PENDING, a job preempted for good (PreemptMode=CANCEL) stays PREEMPTED.
ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "POWER_UP_NODE"})


def poll_seconds() -> float:
    """How often the scheduler is asked (``REVGN_SLURM_POLL_S``, default 10 s); result files are checked every
    second. A job with no result is final after two answers this far apart (a shared filesystem's lag)."""
    return float(os.environ.get("REVGN_SLURM_POLL_S", "10"))


def _parse(lines: str) -> dict[str, str]:
    """``JOBID|STATE`` lines → {job id: first word of the state}; array ranges (``12_[3-5]``) expanded."""
    from submitit.slurm.slurm import read_job_id

    out: dict[str, str] = {}
    for line in lines.splitlines():
        jid, _, state = line.strip().partition("|")
        if not jid or "." in jid or not state:
            continue
        state = state.split()[0].rstrip("+").upper()  # "CANCELLED by 0" → CANCELLED
        for parts in read_job_id(jid):
            if len(parts) == 3:
                for k in range(int(parts[1]), int(parts[2]) + 1):
                    out[f"{parts[0]}_{k}"] = state
            else:
                out["_".join(parts[:2])] = state
    return out


_SACCT_WORKS: bool | None = None


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """The SLURM state of each job (``ARRAY_TASK`` or plain id) the cluster still knows: from ``sacct`` where
    accounting is on (it remembers finished jobs), else ``squeue`` (finished jobs stay ``MinJobAge``, 300 s by
    default). An id missing from the answer is unknown to the cluster."""
    global _SACCT_WORKS
    mains = sorted({j.split("_")[0] for j in job_ids})
    if not mains:
        return {}
    if _SACCT_WORKS is not False:
        got = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(mains)],
                             capture_output=True, text=True)
        _SACCT_WORKS = got.returncode == 0
        if _SACCT_WORKS:
            return _parse(got.stdout)
    got = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(mains)],
                         capture_output=True, text=True)
    return _parse(got.stdout) if got.returncode == 0 else {}  # rc 1: every id unknown ("Invalid job id")


def _report_records() -> list[dict[str, Any]]:
    """The sweep report's records so far (``REVGN_SWEEP_REPORT``, which the jobs append to)."""
    import json

    path = os.environ.get("REVGN_SWEEP_REPORT")
    try:
        lines = Path(path).read_text().splitlines() if path else []
    except OSError:
        return []
    return [json.loads(ln) for ln in lines if ln.strip()]


class WaitingSlurmLauncher(submitit_launcher.SlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher, waiting for each job's final state (module docstring)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None and len(job_overrides) > 0
        # Submission exactly as the plugin's `launch` (hydra-submitit-launcher 1.2): executor, parameters, array.
        executor = submitit.AutoExecutor(cluster="slurm", folder=self.params["submitit_folder"],
                                         slurm_max_num_timeout=self.params["max_num_timeout"])
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{x if x in baseparams else f"slurm_{x}": y for x, y in self.params.items()
                                      if x not in ("submitit_folder", "max_num_timeout")})
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        jobs = executor.map_array(self, *zip(*job_params))
        ids = jobs[0].job_id if len(jobs) == 1 else f"{jobs[0].job_id.split('_')[0]}_[0-{len(jobs) - 1}]"
        print(f"[revgn slurm] submitted {len(jobs)} job(s): {ids}; logs in "
              f"{Path(str(self.params['submitit_folder']).replace('%j', '')).resolve()}", flush=True)
        return self._wait(jobs, [list(o) for o in job_overrides])

    def _wait(self, jobs: list, overrides: list[list[str]]) -> list[JobReturn]:
        from revgn_cli.train.loop import PENDING_SIGNALS

        returns: list[JobReturn | None] = [None] * len(jobs)
        gone: dict[int, str] = {}  # job index → the ended state SLURM gave on the previous answer
        cancelled, poll_s, asked = False, poll_seconds(), float("-inf")
        while True:
            for i, job in enumerate(jobs):
                if returns[i] is None and job.paths.result_pickle.exists():
                    returns[i] = self._collect(job, overrides[i])
            left = [i for i, r in enumerate(returns) if r is None]
            if not left:
                return returns  # type: ignore[return-value]
            if PENDING_SIGNALS and not cancelled:  # Ctrl-C / SIGTERM to `revgn sweep`: stop the jobs, as locally
                cancelled = True
                subprocess.run(["scancel", *(jobs[i].job_id for i in left)], capture_output=True)
                print(f"[revgn slurm] signal {PENDING_SIGNALS[0]}: cancelled {len(left)} job(s); each checkpoints "
                      "at its next update", flush=True)
            if time.monotonic() - asked >= poll_s:
                asked = time.monotonic()
                states = job_states([jobs[i].job_id for i in left])
                for i in left:
                    state = states.get(jobs[i].job_id, "UNKNOWN")
                    if state in ACTIVE:
                        gone.pop(i, None)
                    elif i in gone:  # ended on two answers in a row and still no result: final
                        returns[i] = self._no_result(jobs[i], overrides[i], state, cancelled)
                    else:
                        gone[i] = state
            time.sleep(1.0)

    def _collect(self, job: Any, overrides: list[str]) -> JobReturn:
        """The job's JobReturn (its report record is written); an exception outside revgn's job is a failure."""
        try:
            ret = job.results()[0]
        except Exception as e:
            trace = [ln for ln in str(e).splitlines() if ln.strip() and not ln.startswith("---")]
            return self._failed(job, overrides, f"the job raised: {trace[-1] if trace else type(e).__name__} "
                                               f"(log: {job.paths.stderr})")
        from revgn_cli.sweep_app import job_line

        status = ret.return_value if ret.status == JobStatus.COMPLETED else "failed"
        mine = [r for r in _report_records() if r.get("slurm_job") == job.job_id]
        # The job printed its line into its log on the compute node; repeat it here, where the user watches.
        print(job_line(mine[-1]) if mine else f"[revgn sweep] {status} - (SLURM job {job.job_id}) "
              f"{' '.join(overrides)}", flush=True)
        return ret

    def _no_result(self, job: Any, overrides: list[str], state: str, cancelled: bool) -> JobReturn:
        if cancelled:
            return self._failed(job, overrides, f"cancelled by this sweep (SLURM {state}); its checkpoint stays: "
                                                "rerun the sweep to resume", status="interrupted")
        return self._failed(job, overrides, f"SLURM job {job.job_id} ended {state} without a result "
                                            f"(log: {job.paths.stderr}); a checkpoint, if any, resumes on a rerun")

    def _failed(self, job: Any, overrides: list[str], why: str, status: str = "failed") -> JobReturn:
        """Record a job that could not report itself, as the job would have (sweep report + one line)."""
        from revgn_cli.sweep_app import report_job

        record: dict[str, Any] = {"status": status, "overrides": overrides, "error": why, "slurm_job": job.job_id}
        record.update(self._run_of(overrides))
        report_job(record)
        ret = JobReturn(overrides=overrides, status=JobStatus.COMPLETED)
        ret.return_value = status
        return ret

    def _run_of(self, overrides: list[str]) -> dict[str, str]:
        """Run id and experiment of a job's overrides (composed as the job would), for its report record."""
        try:
            from revgn_cli.config import run_id, to_config

            assert self.hydra_context is not None and self.config is not None
            cfg = to_config(self.hydra_context.config_loader.load_sweep_config(self.config, overrides))
            return {"run_id": run_id(cfg), "experiment": cfg.exp_name}
        except Exception:  # an invalid combination has no run: the record says what failed without one
            return {}

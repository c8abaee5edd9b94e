"""The ``@hydra.main`` application behind ``revgn sweep`` (DESIGN §8: multirun and launchers need it).

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


def _report(record: dict) -> None:
    path = os.environ.get("REVGN_SWEEP_REPORT")
    line = json.dumps(record, default=str)
    if path:
        # One short O_APPEND write per job: safe with parallel joblib workers on a local filesystem.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    final = " ".join(f"{k}={v:.4g}" for k, v in (record.get("final") or {}).items())
    what = record.get("error") or final
    # One human line per finished job; the parent counts these for its progress bar.
    print(f"[revgn sweep] {record['status']} {record.get('run_id', '-')} {' '.join(record.get('overrides', []))}"
          f"{' — ' + what if what else ''}", flush=True)


def _share_cores() -> None:
    """Parallel jobs (joblib launcher) each get cores / n_jobs torch threads: oversubscribed threads slow
    LAPACK's eigh — the heart of the GN step — 5-20× (measured, docs/gn.md). ``REVGN_THREADS`` overrides."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    if os.environ.get("REVGN_THREADS"):
        torch.set_num_threads(int(os.environ["REVGN_THREADS"]))
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
    """SIGINT/SIGTERM (the front end forwards them to this process group) stop the sweep: the running job
    checkpoints at its next update boundary (the training loop's own handler), and jobs not yet started return
    without training. In a joblib launcher's parent this keeps it alive to wait for its workers."""
    from revgn_cli.train.loop import PENDING_SIGNALS

    def handler(signum: int, frame: object) -> None:
        PENDING_SIGNALS.append(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(s, handler)
        except ValueError:  # not the main thread: the loop's own handler is not installed there either
            pass


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base=VERSION_BASE)
def app(node: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    _stop_on_signals()
    _share_cores()

    from revgn_cli.config import run_id, to_config
    from revgn_cli.train.loop import PENDING_SIGNALS, Interrupted
    from revgn_cli.train.runner import execute

    overrides = list(HydraConfig.get().overrides.task)
    if PENDING_SIGNALS:  # the sweep was stopped before this job started: leave it for the rerun
        return "not started"
    try:
        cfg = to_config(node)
    except Exception as e:  # a bad combination: report it, keep sweeping
        _report({"status": "invalid", "overrides": overrides, "error": str(e).splitlines()[0]})
        return "invalid"
    rid = run_id(cfg)
    try:
        out = execute(cfg, force=os.environ.get("REVGN_FORCE") == "1", reporter=_job_reporter(rid))
        if out.quarantined:
            print(f"[revgn sweep] {rid} was corrupt: its files moved to {out.quarantined}; trained again",
                  file=sys.stderr, flush=True)
        _report({"status": out.status, "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                 "final": out.final})
        return out.status
    except Interrupted as e:  # checkpointed at its last update, meta says `interrupted` (execute)
        PENDING_SIGNALS.append(signal.SIGINT)  # the jobs after it do not start
        _report({"status": "interrupted", "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                 "error": str(e)})
        return "interrupted"
    except Exception as e:  # recorded as `failed` in meta.json by execute
        _report({"status": "failed", "run_id": rid, "experiment": cfg.exp_name, "overrides": overrides,
                 "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
        return "failed"


if __name__ == "__main__":
    _stop_on_signals()  # in this process before any job: the basic launcher runs jobs here, joblib waits here
    sys.exit(app())

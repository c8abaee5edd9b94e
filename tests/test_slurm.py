"""Sweeps on a real SLURM cluster (`make slurm-up` starts a one-node one; CI does): a sweep lands, a job requeued
mid-run resumes from its checkpoint and the sweep waits for it and reports it done, with the rows of an
uninterrupted local run; a job cancelled for good is reported failed. The cluster tests skip when no cluster
with a `debug` partition answers `sinfo`; the pieces that need no cluster run everywhere."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from revgn_cli.cluster import job as cluster_job
from revgn_cli.cluster import launcher as cluster_launcher


def _cluster_reason() -> str | None:
    if shutil.which("sinfo") is None:
        return "no SLURM client here (`make slurm-up` installs and starts a one-node cluster)"
    try:
        got = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%a"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:  # a configured controller that does not answer
        return "sinfo got no answer from a SLURM controller in 20 s (`make slurm-up` starts a one-node cluster)"
    if got.returncode != 0 or "up" not in got.stdout:
        return "no SLURM cluster with an `up` partition `debug` answers sinfo (`make slurm-up` starts one)"
    return None


_REASON = _cluster_reason() if sys.platform == "linux" else "SLURM tests run on Linux"
on_cluster = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")

# Tiny GN runs; one thread everywhere, so a SLURM job and a local run compute the same bits.
RUN = ["dataset=digits", "model=tiny", "regime.n_samples=256", "metrics.every=0", "device=cpu"]
LAUNCHER = ["hydra/launcher=slurm_onenode"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "REVGN_THREADS": "1", "REVGN_SLURM_POLL_S": "1", "COLUMNS": "200"}


def _revgn(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "revgn_cli.cli", "--quiet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=_env(), **kw)


def _finish(proc: subprocess.Popen, timeout: float = 150) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # the front end cancels its jobs
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"still running after {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err


def _cancel_leftovers(results: Path) -> None:
    """A test that failed part-way leaves no job of its sweep on the cluster (the job folders are named by id)."""
    ids = {p.name.split("_")[0] for p in results.glob(".hydra/multirun/*/.submitit/*") if p.name[:1].isdigit()}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


def _metas(results: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("default/*/meta.json")}


def _wait_for(what: str, cond, proc: subprocess.Popen, timeout: float = 90.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} after {timeout} s")


@pytest.mark.slurm
@on_cluster
def test_two_job_sweep_lands_and_runs_show_the_slurm_job(tmp_path):
    results = tmp_path / "results"
    try:
        code, out, err = _finish(_revgn("sweep", *RUN, "train.epochs=2", "optimizer.lr=0.1,0.2", *LAUNCHER,
                                        f"results_dir={results}"))
    finally:
        _cancel_leftovers(results)
    assert code == 0, (out, err)
    assert "sweep: 2 done (of 2 jobs)" in out
    metas = _metas(results)
    assert len(metas) == 2 and {m["status"] for m in metas.values()} == {"done"}
    array = {m["slurm_job"].split("_")[0] for m in metas.values()}
    assert len(array) == 1 and sorted(m["slurm_job"].split("_")[1] for m in metas.values()) == ["0", "1"]
    for rid, meta in metas.items():
        shown = subprocess.run([sys.executable, "-m", "revgn_cli.cli", "runs", "show", rid, "--results", str(results)],
                               capture_output=True, text=True, env=_env())
        assert shown.returncode == 0, shown.stderr
        line = next(ln for ln in shown.stdout.splitlines() if ln.strip().startswith("slurm job"))
        assert line.split()[-1] == meta["slurm_job"]


@pytest.mark.slurm
@on_cluster
def test_requeued_jobs_resume_and_the_sweep_waits_and_reports_them_done(tmp_path):
    """Both ways the cluster stops a job: `scontrol requeue` (SIGTERM, as preemption) on one, the time-limit signal
    (SIGUSR2, submitit requeues) on the other; both resume and end bit-identical to uninterrupted local runs."""
    run = [*RUN, "train.epochs=80", "train.checkpoint_every=1000", "optimizer.lr=0.1,0.2"]
    # The reference: the same runs, uninterrupted, on this machine without SLURM (in parallel with the sweep).
    local = _revgn("sweep", *run, f"results_dir={tmp_path / 'local'}")
    results = tmp_path / "results"
    sweep = _revgn("sweep", *run, *LAUNCHER, f"results_dir={results}")
    try:
        def started() -> list[dict] | None:  # both running on SLURM, past a few updates, far from their end
            metas = _metas(results)
            if len(metas) < 2 or any(m.get("status") != "running" or "slurm_job" not in m for m in metas.values()):
                return None
            try:
                epochs = [pd.read_parquet(results / "default" / rid / "metrics.parquet")["epoch"].max()
                          for rid in metas]
            except Exception:  # not written yet, or caught mid-rename
                return None
            return sorted(metas.values(), key=lambda m: m["slurm_job"]) if min(epochs) >= 2 else None

        first, second = _wait_for("two running jobs", started, sweep)
        subprocess.run(["scontrol", "requeue", first["slurm_job"]], check=True, capture_output=True, timeout=30)
        subprocess.run(["scancel", "--signal=USR2", second["slurm_job"]], check=True, capture_output=True,
                       timeout=30)
        code, out, err = _finish(sweep)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        _cancel_leftovers(results)
        lcode, lout, lerr = _finish(local)
    assert lcode == 0, (lout, lerr)
    assert code == 0, (out, err)
    assert "sweep: 2 done (of 2 jobs; 2 resumed after SLURM requeued them)" in out
    metas = _metas(results)
    assert len(metas) == 2
    for rid, meta in metas.items():
        assert meta["status"] == "done" and meta["resumed"] is True and meta["slurm_restarts"] == 1
        assert meta["epochs_done"] == 80
        got = pd.read_parquet(results / "default" / rid / "metrics.parquet")
        want = pd.read_parquet(tmp_path / "local" / "default" / rid / "metrics.parquet")
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    # and each first run really was stopped part-way, by its signal, and handed back to SLURM
    log = {p.parent.name: p.read_text() for p in results.glob(".hydra/multirun/*/.submitit/*/*_log.out")}
    assert "DUE TO JOB REQUEUE" in log[first["slurm_job"]]
    assert "checkpointed after signal 15" in log[first["slurm_job"]]
    assert "checkpointed after signal 12" in log[second["slurm_job"]]
    assert f"Requeued job {second['slurm_job']}" in log[second["slurm_job"]]  # by submitit, as at a time limit


@pytest.mark.slurm
@on_cluster
def test_cancelled_job_is_reported_failed(tmp_path):
    results = tmp_path / "results"
    sweep = _revgn("sweep", *RUN, "train.epochs=100000", *LAUNCHER, f"results_dir={results}")
    try:
        meta = _wait_for("running job", lambda: next((m for m in _metas(results).values()
                                                      if m.get("status") == "running"), None), sweep)
        subprocess.run(["scancel", meta["slurm_job"]], check=True, capture_output=True, timeout=30)
        code, out, err = _finish(sweep)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        _cancel_leftovers(results)
    assert code == 1, (out, err)
    assert "sweep: 1 failed (of 1 jobs)" in out
    assert f"SLURM job {meta['slurm_job']} ended CANCELLED without a result" in err
    (meta,) = _metas(results).values()
    assert meta["status"] == "interrupted"  # it checkpointed on the SIGTERM: a rerun resumes it


# --- without a cluster ------------------------------------------------------------------------------------------


def test_job_states_parse_sacct_and_squeue_lines():
    lines = "12_0|COMPLETED\n12_[2-4]|PENDING\n13|CANCELLED by 0\n12_1|RUNNING\n12_0.batch|COMPLETED\n"
    assert cluster_launcher._parse(lines) == {"12_0": "COMPLETED", "12_2": "PENDING", "12_3": "PENDING",
                                              "12_4": "PENDING", "13": "CANCELLED", "12_1": "RUNNING"}
    assert "REQUEUED" in cluster_launcher.ACTIVE and "CANCELLED" not in cluster_launcher.ACTIVE


def test_slurm_job_id_from_the_environment(monkeypatch):
    for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(k, raising=False)
    assert cluster_job.slurm_job_id() is None and cluster_job.slurm_restarts() == 0
    monkeypatch.setenv("SLURM_JOB_ID", "57")
    assert cluster_job.slurm_job_id() == "57"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "55")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert cluster_job.slurm_job_id() == "55_2" and cluster_job.slurm_restarts() == 3


def test_sweep_runs_submitit_slurm_through_the_waiting_launcher():
    from revgn_cli.sweep import _waiting_slurm

    assert _waiting_slurm(["hydra/launcher=submitit_slurm", "optimizer.lr=0.1,0.2"]) == \
        [f"hydra.launcher._target_={cluster_launcher.TARGET}"]
    assert _waiting_slurm(["hydra/launcher=slurm"]) == []  # the preset names it itself
    assert _waiting_slurm(["optimizer.lr=0.1,0.2"]) == []


@pytest.mark.parametrize("preset", ["slurm", "slurm_gpu", "slurm_onenode"])
def test_launcher_presets_compose_to_the_waiting_launcher(preset):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from revgn_cli.config import VERSION_BASE, conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=VERSION_BASE):
        node = compose("config", overrides=[f"hydra/launcher={preset}"], return_hydra_config=True).hydra.launcher
    assert node._target_ == cluster_launcher.TARGET
    assert 0 < node.signal_delay_s < node.timeout_min * 60 and node.max_num_timeout > 0


def test_signal_delay_beyond_the_time_limit_is_one_line(tmp_path):
    got = subprocess.run([sys.executable, "-m", "revgn_cli.cli", "sweep", "--dry-run", *RUN, *LAUNCHER,
                          "hydra.launcher.timeout_min=1", f"results_dir={tmp_path}"], capture_output=True, text=True)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines() == ["error: hydra.launcher.signal_delay_s=60 must be below the time limit "
                                               "hydra.launcher.timeout_min=1 (= 60 s)"]

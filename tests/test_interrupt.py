"""A signal to `revgn sweep` stops the whole sweep: it reaches every job (the multirun runs in its own process
group, the front end forwards SIGINT/SIGTERM to it), the running job checkpoints at its next update boundary and
is marked `interrupted`, jobs not yet started never start, the front end exits 130 and no process outlives it.
Both ways a user sends it: a signal to the process (no terminal), and Ctrl-C typed into a terminal (a pty)."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="process groups and /proc")

# Three jobs far too long to finish in the test: only the first can start before the signal.
SWEEP = ["sweep", "optimizer=sgd", "optimizer.lr=0.01,0.02,0.03", "dataset=digits", "model=tiny",
         "regime=mini_batch", "regime.batch_size=32", "train.epochs=500", "metrics.every=0", "device=cpu"]


def _cmd(results: Path) -> list[str]:
    return [sys.executable, "-m", "revgn_cli.cli", "--quiet", *SWEEP, f"results_dir={results}"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "REVGN_THREADS": "1", "COLUMNS": "200"}


def _wait_first_checkpoint(results: Path, alive, timeout: float = 300) -> None:
    """Until the first job has trained past its epoch-0 checkpoint (its meta says running)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert alive(), "the sweep ended before it was interrupted"
        if any((p / "checkpoints" / "last.pt").exists() for p in results.glob("default/*")):
            time.sleep(1.0)  # into the updates, past the epoch-0 save
            return
        time.sleep(0.2)
    raise AssertionError("no job started")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _check_stopped(results: Path) -> None:
    import json

    runs = [p for p in results.glob("default/*") if p.is_dir()]
    assert len(runs) == 1, runs  # the two later jobs never started
    meta = json.loads((runs[0] / "meta.json").read_text())
    assert meta["status"] == "interrupted", meta
    assert not _alive(meta["pid"]), "the job's process outlived the front end"
    ck = torch.load(runs[0] / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    rows = pd.read_parquet(runs[0] / "metrics.parquet")
    assert ck["state"]["step"] == rows["step"].max() > 0  # checkpoint at the last update, not a periodic one
    assert ck["state"]["epoch"] < 500


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_without_terminal_stops_every_job(tmp_path, signum):
    results = tmp_path / "results"
    proc = subprocess.Popen(_cmd(results), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=_env())
    try:
        _wait_first_checkpoint(results, lambda: proc.poll() is None)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    _check_stopped(results)


def test_ctrl_c_in_a_terminal_stops_every_job(tmp_path):
    results = tmp_path / "results"
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal; Ctrl-C there signals its foreground group
        os.execve(sys.executable, _cmd(results), _env())
    output = bytearray()

    def drain(timeout: float) -> None:
        r, _, _ = select.select([fd], [], [], timeout)
        if r:
            try:
                output.extend(os.read(fd, 65536))
            except OSError:  # EIO: the terminal's other end closed
                pass

    exit_status: list[int] = []

    def alive() -> bool:
        drain(0)
        if not exit_status:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                exit_status.append(os.waitstatus_to_exitcode(status))
        return not exit_status

    try:
        _wait_first_checkpoint(results, alive)
        os.write(fd, b"\x03")  # Ctrl-C, through the terminal's line discipline
        t0 = time.monotonic()
        while alive() and time.monotonic() - t0 < 300:
            drain(0.2)
    finally:
        if not exit_status:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert exit_status == [130], bytes(output).decode(errors="replace")
    assert b"interrupted" in output
    _check_stopped(results)

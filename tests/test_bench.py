"""The benches cannot rot: each one's --smoke mode (tiny sizes, seconds) runs in a subprocess, as a user runs it,
and must exit 0 having printed its last section — a bench that crashes (e.g. on a removed internal) fails."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("argv", "expect"), [
    (["gn_step.py", "--smoke", "--threads", "1"], "parts of every exact GN step there"),  # the path that crashed
    (["metrics_overhead.py", "--smoke"], "# parts, timed alone"),
    (["gn_truncation.py", "--smoke", "--threads", "1"], "damping: cholesky"),  # every method on real-image Grams
    (["startup.py", "--smoke"], "runs (5 runs)"),
    (["ggn_matvec.py", "--smoke"], "exact "),  # both products agree, else it exits 1
    (["ggn_solve.py", "--smoke"], "exact "),  # the kernel solve matches its float64 reference, else it exits 1
    (["scaling_cost.py", "--smoke"], "refit (conf/study/scaling.yaml"),  # the cost model priced on archived runs
])
def test_bench_smoke_runs(argv, expect, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / argv[0]), *argv[1:]], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert expect in proc.stdout, proc.stdout

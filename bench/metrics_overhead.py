"""Overhead of the training-dynamics diagnostics: wall time with metrics at the default frequency / without.

Runs the same config (the mnist5k demo setting by default) twice per optimiser, side by side in one process, into
throw-away results dirs, alternating the order over repeats; prints the ratio (target ≤ 1.2).

    python bench/metrics_overhead.py [--epochs E] [--repeats 2] [--optimizers gn,adam] [OVERRIDES...]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from revgn_cli.config import compose_config
from revgn_cli.train.runner import execute

# The demo's mini-batch preset (mnist5k, h=1024, batch 256, every diagnostic every epoch — the default frequency).
BASE = ["experiment=minibatch_quick", "device=auto"]


def timed(overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides + [f"results_dir={tmp}"])
        t0 = time.perf_counter()
        execute(cfg)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--optimizers", default="gn,adam")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    print(f"{'optimizer':<10} {'with metrics s':>15} {'without s':>10} {'ratio':>7}")
    for opt in a.optimizers.split(","):
        common = BASE + [f"optimizer={opt}", *([f"train.epochs={a.epochs}"] if a.epochs else []), *a.overrides]
        timed(common + ["metrics.every=0", "train.epochs=1"])  # warm-up (data cache, allocator, torch.func)
        on, off = [], []
        for r in range(a.repeats):
            pair = [("on", common), ("off", common + ["metrics.every=0", "metrics.loss_change=false"])]
            for label, ov in (pair if r % 2 == 0 else pair[::-1]):
                (on if label == "on" else off).append(timed(ov))
        m_on, m_off = statistics.median(on), statistics.median(off)
        print(f"{opt:<10} {m_on:>15.2f} {m_off:>10.2f} {m_on / m_off:>7.3f}")


if __name__ == "__main__":
    main()

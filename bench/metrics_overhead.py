"""Overhead of the training-dynamics diagnostics: wall time with metrics at the default frequency / without.

Runs the same config (the mnist5k demo setting by default) twice per optimiser, side by side in one process, into
throw-away results dirs, alternating the order over repeats; prints the ratio (target ≤ 1.2).

One-time costs of a process are paid in a warm-up with metrics on and printed apart, not put in the ratio: the
first torch.func.jacrev of a process (the NTK's) imports torch._dynamo, about 1 s however long the run is.
Columns: "loss_change only" is the run with the per-step loss change but no epoch diagnostics, i.e. the part of
the overhead that is one extra forward pass per update.

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
    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401  (what the first jacrev of a process would import)

    print(f"# one-time per process, not in the ratios: import torch._dynamo {time.perf_counter() - t0:.2f} s")
    print(f"{'optimizer':<10} {'with metrics s':>15} {'without s':>10} {'ratio':>7} {'loss_change only':>17}")
    for opt in a.optimizers.split(","):
        common = BASE + [f"optimizer={opt}", *([f"train.epochs={a.epochs}"] if a.epochs else []), *a.overrides]
        timed(common + ["train.epochs=1"])  # warm-up (data cache, allocator, torch.func) with every metric on
        configs = {
            "on": common,
            "off": common + ["metrics.every=0", "metrics.loss_change=false"],
            "lc": common + ["metrics.every=0"],
        }
        times: dict[str, list[float]] = {k: [] for k in configs}
        for r in range(a.repeats):
            order = list(configs) if r % 2 == 0 else list(configs)[::-1]
            for label in order:
                times[label].append(timed(configs[label]))
        m = {k: statistics.median(v) for k, v in times.items()}
        print(f"{opt:<10} {m['on']:>15.2f} {m['off']:>10.2f} {m['on'] / m['off']:>7.3f} {m['lc'] / m['off']:>17.3f}")


if __name__ == "__main__":
    main()

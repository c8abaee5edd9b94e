"""Overhead of the training-dynamics diagnostics: wall time with metrics at the default frequency / without.

Runs the same config (the mnist5k demo setting by default) twice per optimiser, side by side in one process, into
throw-away results dirs, alternating the order over repeats; prints the ratio (target ≤ 1.2).

One-time costs of a process are paid in a warm-up with metrics on and printed apart, not put in the ratio: the
first torch.func.jacrev of a process (the NTK's) imports torch._dynamo, about 1 s however long the run is.
Columns: "loss_change only" is the run with the per-step loss change but no epoch diagnostics, i.e. the part of
the overhead that is one extra forward pass per update; "epoch diagnostics only" the run with NTK/CKA/weights every
epoch but no loss change. Last, the parts timed alone on the preset's model: one
optimiser step, the no-grad forward of its batch right after it (the loss change's cost per update: step + forward,
minus step), and one diagnostics row.

    python bench/metrics_overhead.py [--epochs E] [--repeats 2] [--optimizers gn,adam] [OVERRIDES...]
    python bench/metrics_overhead.py --smoke   # digits + tiny model, 1 epoch, 1 round: every path runs in seconds
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from revgn_cli.config import compose_config
from revgn_cli.train.runner import execute

# The demo's mini-batch preset (mnist5k, h=1024, batch 256, every diagnostic every epoch — the default frequency).
BASE = ["experiment=minibatch_quick", "device=auto"]
# --smoke (make test runs it): the same preset shrunk to seconds, so a bench that no longer runs fails the tests.
SMOKE = ["dataset=digits", "model=tiny", "regime.batch_size=512", "metrics.probe_size=8", "metrics.cka_probe_size=64",
         "device=cpu", "train.epochs=1"]


def timed(overrides: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(overrides + [f"results_dir={tmp}"])
        t0 = time.perf_counter()
        execute(cfg)
        return time.perf_counter() - t0


def median_seconds(fn, repeats: int = 7) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def parts(overrides: list[str]) -> str:
    """One line: a step, a no-grad forward of one batch, and a diagnostics row, timed alone on the preset's model."""
    from dataclasses import asdict

    from revgn_cli.optim import batch_loss, make_optimizer
    from revgn_cli.train.loop import build_model, build_tracker, prepare_data
    from revgn_cli.train.runtime import resolve_device, resolve_dtype

    cfg = compose_config(overrides)
    device = resolve_device(cfg.device)
    td = prepare_data(cfg, device)
    dtype = resolve_dtype(cfg.precision)
    model = build_model(cfg, td.data, device, dtype)
    tracker = build_tracker(cfg, model, td.x_tr)
    opt = make_optimizer(model, asdict(cfg.optimizer), asdict(cfg.regularizer), loss=cfg.train.loss)
    b = cfg.regime.batch_size
    xb = td.x_tr[:b]
    tb = torch.nn.functional.one_hot(td.y_tr[:b], td.data.n_classes).to(dtype)
    def step_and_after() -> None:
        opt.step(xb, tb)
        with torch.no_grad():
            float(batch_loss(model(xb), tb, cfg.train.loss))

    # The after-update forward timed as training runs it, right after a step (new weights, nothing memoised for
    # them yet except what a no-grad step leaves), not as a repeated forward at fixed weights.
    step = median_seconds(lambda: opt.step(xb, tb))
    fwd = median_seconds(step_and_after) - step
    row = median_seconds(lambda: tracker.compute(model, 1.0), repeats=3)
    return (f"step {1e3 * step:.1f} ms; the loss change's no-grad forward of the batch after it {1e3 * fwd:.1f} ms = "
            f"{100 * fwd / step:.0f}% of a step; one diagnostics row {1e3 * row:.0f} ms (with its own CKA forward, "
            f"which training shares with the evaluation)\n" + new_metrics(tracker, model, step, td.x_tr.shape[0] / b))


def new_metrics(tracker, model, step: float, steps_per_epoch: float) -> str:
    """Issue 12's metrics inside that row, per epoch (one row per epoch at metrics.every=1): the paper's
    feature-space NTK sketch (one VJP + one JVP on its probe set) and the F half-couplings' CKA (the G ones are the
    per-block values, computed anyway)."""
    from revgn_cli.metrics.cka import cka_prepared, prepare_cka
    from revgn_cli.metrics.ntk_feature import feature_ntk_apply

    epoch = step * steps_per_epoch
    out = []
    if tracker.feat_x is not None:
        n_probes = tracker.feat_u.shape[0]  # one VJP + one JVP per probe: time one, count P
        t = n_probes * median_seconds(lambda: feature_ntk_apply(model, tracker.feat_x, tracker.feat_u[0]), repeats=3)
        out.append(f"feature-space NTK sketch (probe {tracker.feat_x.shape[0]}, {n_probes} probes) "
                   f"{1e3 * t:.0f} ms/epoch = "
                   f"{100 * t / epoch:.0f}% of an epoch's steps")
    if tracker.cka_x is not None:
        reps = tracker.cka_outputs(model)
        refs = tracker._cka_ref

        def f_cka() -> None:
            for i in range(0, len(reps), 2):  # the F states only
                cka_prepared(refs[i], prepare_cka(reps[i]))

        t = median_seconds(f_cka, repeats=3)
        out.append(f"per-half-coupling CKA, the {len(reps) // 2} F states {1e3 * t:.0f} ms/epoch = "
                   f"{100 * t / epoch:.0f}% of an epoch's steps")
    return "#     new metrics (issue 12): " + "; ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--optimizers", default="gn,adam")
    ap.add_argument("--verbose", action="store_true", help="print every run's time, not just the medians")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round: checks that every path runs")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    if a.smoke:
        a.repeats, a.overrides = 1, SMOKE + a.overrides
    t0 = time.perf_counter()
    import torch._dynamo  # noqa: F401  (what the first jacrev of a process would import)

    print(f"# one-time per process, not in the ratios: import torch._dynamo {time.perf_counter() - t0:.2f} s")
    lines: list[str] = []
    print(f"{'optimizer':<10} {'with metrics s':>15} {'without s':>10} {'ratio':>7} {'loss_change only':>17} "
          f"{'epoch diagnostics only':>23}")
    for opt in a.optimizers.split(","):
        common = BASE + [f"optimizer={opt}", *([f"train.epochs={a.epochs}"] if a.epochs else []), *a.overrides]
        timed(common + ["train.epochs=1"])  # warm-up (data cache, allocator, torch.func) with every metric on
        configs = {
            "on": common,
            "off": common + ["metrics.every=0", "metrics.loss_change=false"],
            "lc": common + ["metrics.every=0"],
            "ep": common + ["metrics.loss_change=false"],
        }
        times: dict[str, list[float]] = {k: [] for k in configs}
        for r in range(a.repeats):
            order = list(configs) if r % 2 == 0 else list(configs)[::-1]
            for label in order:
                times[label].append(timed(configs[label]))
        m = {k: statistics.median(v) for k, v in times.items()}
        if a.verbose:
            print(f"#   {opt} runs (s): " + "; ".join(f"{k} {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()))
        print(f"{opt:<10} {m['on']:>15.2f} {m['off']:>10.2f} {m['on'] / m['off']:>7.3f} {m['lc'] / m['off']:>17.3f} "
              f"{m['ep'] / m['off']:>23.3f}")
        lines.append(f"#   {opt}: {parts(common)}")
    print("# parts, timed alone (median):")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Wall time of one GGN mat-vec, as GGN-CG's conjugate gradient takes it: curvlinops' GGNLinearOperator vs
revgn's torch.func product with the batch's forward and VJP graph cached (revgn_cli/optim/curvature.py,
``ggn_batch_matvec``), with a plain JVP per product ("cached") and with the JVP linearised ("linearised",
``torch.func.linearize``; GGN-CG's product switches to it after ``LINEARIZE_AFTER`` products on a batch).

Side by side in one process, same model, batch and vectors; the rounds interleave the three (curvlinops, cached,
linearised, curvlinops, …) so a load spike hits all alike, and the table reports the median per product and the
ratios. The set-ups (one forward and its VJP graph per batch, paid once per CG solve; the linearised JVP's trace on
top) are timed apart. Before timing, the products are checked to agree (relative differences printed).

    python bench/ggn_matvec.py            # the quick model (d 784, h 1024, 2 blocks), batch 256, both loss Hessians
    python bench/ggn_matvec.py --smoke    # tiny sizes, seconds (make test runs it)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revgn_cli.models import RevMLP  # noqa: E402
from revgn_cli.optim.curvature import ggn_batch_matvec, ggn_matvec, ggn_operator  # noqa: E402

QUICK = (256, 784, 1024, 2)  # (n, d, h, L): minibatch_quick's batch and model
SMOKE = (16, 16, 32, 2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 rounds")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7; smoke 2)")
    ap.add_argument("--products", type=int, default=5, help="mat-vecs per round and method")
    args = ap.parse_args(argv)
    n, d, h, n_blocks = SMOKE if args.smoke else QUICK
    rounds = args.rounds or (2 if args.smoke else 7)
    gen = torch.Generator().manual_seed(0)
    model = RevMLP(d, n_blocks, h, n_classes=10, init_std=1e-3, seed=0)
    x = torch.randn(n, d, generator=gen)
    t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=gen), 10).float()
    params = model.trainable()
    p = sum(q.numel() for q in params)
    vecs = [torch.randn(p, generator=gen) for _ in range(args.products)]
    print(f"GGN mat-vec, n {n}, d {d}, h {h}, {n_blocks} blocks, |θ| {p:,}, float32, {torch.get_num_threads()} "
          f"threads; median of {rounds} rounds × {args.products} products")
    print(f"{'loss Hessian':<13} {'curvlinops ms':>14} {'cached ms':>10} {'linearised ms':>14} {'cl/lin':>7} "
          f"{'cached/lin':>10} {'set-up ms':>10} {'trace ms':>9} {'rel diff':>9}")
    for hess in ("identity", "exact"):
        ref = ggn_matvec(ggn_operator(model, x, t, loss_hessian=hess), params)
        t0 = time.perf_counter()
        cached = ggn_batch_matvec(model, x, t, loss_hessian=hess, linearize_after=-1)
        setup = time.perf_counter() - t0
        lin = ggn_batch_matvec(model, x, t, loss_hessian=hess, linearize_after=0)
        want = ref(vecs[0])
        t0 = time.perf_counter()
        got_lin = lin(vecs[0])  # traces the linearised JVP, then one product
        trace = time.perf_counter() - t0
        diff = max(float((mv - want).norm() / want.norm()) for mv in (cached(vecs[0]), got_lin))
        times: dict[str, list[float]] = {"curvlinops": [], "cached": [], "linearised": []}
        for _ in range(rounds):
            for name, mv in (("curvlinops", ref), ("cached", cached), ("linearised", lin)):
                t0 = time.perf_counter()
                for v in vecs:
                    mv(v)
                times[name].append((time.perf_counter() - t0) / len(vecs))
        a, b, c = (statistics.median(times[k]) for k in ("curvlinops", "cached", "linearised"))
        print(f"{hess:<13} {a * 1e3:>14.1f} {b * 1e3:>10.1f} {c * 1e3:>14.1f} {a / c:>7.2f} {b / c:>10.2f} "
              f"{setup * 1e3:>10.1f} {(trace - c) * 1e3:>9.1f} {diff:>9.1e}")
        if not diff < 1e-4:
            print(f"the products disagree ({diff:.1e})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time and accuracy of one damped GGN solve Δ = (G + λI)⁻¹g, as a GGN-CG step takes it: conjugate gradient on
GGN mat-vecs to ‖r‖ ≤ tol·‖g‖ (``optimizer.ggn_solve=cg``, the gn_family study's tolerance 1e-3 by default) vs the
exact function-space solve through the batch's logit NTK (``ggn_solve=kernel``, revgn_cli/optim/kernel_solve.py).

Side by side in one process, same model, batch and λ; the rounds interleave the two, the table reports the median
per solve (each the whole direction a step computes: loss, gradient and solve; the kernel solve's residual check,
one GGN product, included as the step logs it), CG's iterations, the ratio, and each solve's distance from a float64
reference (the kernel solve on a float64 copy of the model). The model takes 20 Adam steps on the batch first: at init CG converges in a few tens
of iterations, mid-training it takes 100–200 (the gn_family study's GGN-CG runs averaged 176).

    python bench/ggn_solve.py            # the quick model (d 784, h 1024, 2 blocks), batch 256, both loss Hessians
    python bench/ggn_solve.py --smoke    # tiny sizes, seconds (make test runs it)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revgn_cli.models import RevMLP  # noqa: E402
from revgn_cli.optim.cg import conjugate_gradient  # noqa: E402
from revgn_cli.optim.curvature import flat, ggn_batch_matvec  # noqa: E402
from revgn_cli.optim.damped import loss_and_grad  # noqa: E402
from revgn_cli.optim.kernel_solve import ggn_kernel_solve  # noqa: E402
from revgn_cli.optim.losses import batch_loss  # noqa: E402

QUICK = (256, 784, 1024, 2)  # (n, d, h, L): minibatch_quick's batch and model
SMOKE = (16, 16, 32, 2)


def _trained(model: RevMLP, x: torch.Tensor, t: torch.Tensor, steps: int) -> RevMLP:
    """``steps`` Adam steps (lr 1e-3) on the batch: a model away from init, as mid-training solves see it."""
    opt = torch.optim.Adam(model.trainable(), lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        batch_loss(model(x), t).backward()
        opt.step()
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; smoke 1)")
    ap.add_argument("--damping", type=float, default=1e-3, help="λ (default 1e-3)")
    ap.add_argument("--tol", type=float, default=1e-3, help="CG's relative residual tolerance (default 1e-3)")
    ap.add_argument("--max-iters", type=int, default=None, help="CG's iteration cap (default 500, the study's; smoke 30)")
    args = ap.parse_args(argv)
    n, d, h, n_blocks = SMOKE if args.smoke else QUICK
    rounds = args.rounds or (1 if args.smoke else 3)
    args.max_iters = args.max_iters or (30 if args.smoke else 500)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, d, generator=gen)
    t = torch.nn.functional.one_hot(torch.randint(0, 10, (n,), generator=gen), 10).float()
    model = _trained(RevMLP(d, n_blocks, h, n_classes=10, init_std=1e-3, seed=0), x, t, 20)
    m64 = copy.deepcopy(model).double()
    lam = args.damping
    print(f"damped GGN solve, n {n}, d {d}, h {h}, {n_blocks} blocks, λ {lam:g}, CG to {args.tol:g} (≤ "
          f"{args.max_iters} it.), float32, {torch.get_num_threads()} threads; median of {rounds} rounds")
    print(f"{'loss Hessian':<13} {'CG s':>7} {'CG it.':>7} {'kernel s':>9} {'CG/kernel':>10} "
          f"{'CG err':>8} {'kernel err':>11} {'kernel resid':>13}")
    for hess in ("identity", "exact"):
        ref = ggn_kernel_solve(m64, x.double(), t.double(), lam, loss_hessian=hess).delta

        def cg_only() -> tuple[torch.Tensor, int]:
            """What a ggn_solve=cg step computes: loss and gradient, the mat-vec's set-up, CG."""
            _, grads = loss_and_grad(model, x, t, "ce")
            res = conjugate_gradient(ggn_batch_matvec(model, x, t, loss_hessian=hess), flat(grads), damping=lam,
                                     max_iters=args.max_iters, rtol=args.tol)
            return res.x, res.iters

        times: dict[str, list[float]] = {"cg": [], "kernel": []}
        for _ in range(rounds):
            t0 = time.perf_counter()
            x_cg, iters = cg_only()
            times["cg"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ks = ggn_kernel_solve(model, x, t, lam, loss_hessian=hess, residual=True)  # as a step logs it
            times["kernel"].append(time.perf_counter() - t0)
        resid = ks.rel_residual
        a, b = statistics.median(times["cg"]), statistics.median(times["kernel"])
        err_cg = float((x_cg.double() - ref).norm() / ref.norm())
        err_k = float((ks.delta.double() - ref).norm() / ref.norm())
        print(f"{hess:<13} {a:>7.2f} {iters:>7d} {b:>9.2f} {a / b:>10.1f} {err_cg:>8.1e} {err_k:>11.1e} {resid:>13.1e}")
        if not err_k < 1e-3:
            print(f"the kernel solve is off the float64 reference ({err_k:.1e})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Truncation solve methods on real-image Grams: time and step error against the float64 eigh step (issue 16).

`truncation` keeps the Gram eigenvalues λ ≥ rtol²·λ_max (paper: rtol = 1e-2, so λ ≥ 1e-4·λ_max) and weights them
by 1/λ, so its step is dominated by the eigenvectors just above the cut — where a float32 factorisation, whose
eigenvalues are only resolved to ~1e-7·λ_max, mixes them with those just below. For each Gram the bench times the
factorisation of each method (median of interleaved rounds, same Gram) and prints its step's relative difference
‖ΔW̃ − ΔW̃_eigh64‖/‖ΔW̃_eigh64‖ to the float64 eigh step (the engine's reference path):

    eigh64         torch.linalg.eigh in float64 (the reference; what `truncation` uses)
    eigh32         torch.linalg.eigh in float32 (cheap, inaccurate at the cut: not used)
    eigh32+RR      float32 eigh → the subspace of every eigenvalue ≥ band·cut (a margin band below the cut) →
                   float64 Rayleigh–Ritz on it (project, eigh of the small matrix, cut there)
    eigh32+it+RR   the same with one float64 subspace-iteration step (S ← G S) before the Rayleigh–Ritz
    evr64-subset   LAPACK dsyevr (scipy) in float64 for the eigenpairs above 0.99·cut only (λ_max from
                   pinv._lambda_max): the same tridiagonal reduction, fewer eigenvectors back-transformed

Grams: the first n mnist5k training images through a RevMLP at init (float32, as GaussNewton forms them), the
ReLU block's F half-layer (n×n Gram of σ(zC)) and the linear first block's F half-layer ((d/2+1)-sided Gram of
[zRᵀ, 1], see gn._factor_linear), at h = 1024, 2048, 4096; targets are that block's own GN targets. Also `none`
and `damping` (1e-3) through pinv_solve with solver=auto (their Cholesky paths) and solver=eigh, each against
its definition on the float64 SVD of Σ: on these rank-deficient Grams the eigh path's machine floor (meant for
numerically-zero eigenvalues) also drops real directions that damping weights, the Cholesky of G + δI does not.

    python bench/gn_truncation.py               # n = 1024, h ∈ {1024, 2048, 4096}; ~2 min idle on 2 cores
    python bench/gn_truncation.py --smoke       # n = 128, seconds: every method runs (make test runs it)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from revgn_cli.models import RevMLP  # noqa: E402
from revgn_cli.optim import gn as gn_mod  # noqa: E402
from revgn_cli.optim.losses import output_residual  # noqa: E402
from revgn_cli.optim.pinv import (  # noqa: E402
    Regularizer, _gram, _lambda_max, pinv_solve, solver_path,
)

F64 = torch.float64
RTOL = 1e-2  # the paper's truncation
BAND = 1e-2  # eigh32+RR keeps every float32 eigenvalue ≥ BAND·cut (the margin band below the cut)

Eig = tuple[torch.Tensor, torch.Tensor]  # (λ, V) float64, at least every eigenpair above the cut


def _rayleigh_ritz(g: torch.Tensor, s: torch.Tensor) -> Eig:
    """Float64 Rayleigh–Ritz of g on span(s): (θ, orth(s)·Y) from the eigh of the projected matrix."""
    q = torch.linalg.qr(s)[0]
    theta, y = torch.linalg.eigh(q.T @ (g @ q))
    return theta, q @ y


def _band(g32: torch.Tensor, cut_rel: float) -> torch.Tensor:
    lam, vec = torch.linalg.eigh(g32)
    return vec[:, lam >= BAND * cut_rel * lam[-1]].to(F64)


def _evr_subset(g: torch.Tensor, cut_rel: float) -> Eig:
    import numpy as np
    import scipy.linalg as sl

    lo = 0.99 * cut_rel * float(_lambda_max(g))
    w, v = sl.eigh(g.numpy(), driver="evr", subset_by_value=(lo, np.inf), check_finite=False)
    return torch.from_numpy(w), torch.from_numpy(v)


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], Eig]] = {
    "eigh64": lambda g, g32, c: torch.linalg.eigh(g),
    "eigh32": lambda g, g32, c: tuple(a.to(F64) for a in torch.linalg.eigh(g32)),
    "eigh32+RR": lambda g, g32, c: _rayleigh_ritz(g, _band(g32, c)),
    "eigh32+it+RR": lambda g, g32, c: _rayleigh_ritz(g, g @ _band(g32, c)),
    "evr64-subset": lambda g, g32, c: _evr_subset(g, c),
}


def truncated_step(eig: Eig, phi: torch.Tensor, t: torch.Tensor, row_side: bool, cut_rel: float) -> tuple:
    """(ΔW̃ of the truncation filter from eigenpairs (λ, V), number kept); λ_max = the largest λ returned."""
    lam, vec = eig
    keep = lam >= cut_rel * lam.max()
    lam, vec = lam[keep], vec[:, keep]
    phi64, t64 = phi.to(F64), t.to(F64)
    if row_side:
        coef = vec @ ((1 / lam)[:, None] * (vec.T @ t64))
        return torch.cat([phi64.T @ coef, coef.sum(0, keepdim=True)]), int(keep.sum())
    st = torch.cat([phi64.T @ t64, t64.sum(0, keepdim=True)])
    return vec @ ((1 / lam)[:, None] * (vec.T @ st)), int(keep.sum())


def grams(n: int, h: int, seed: int = 0) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """[(block, φ, t)]: the F half-layer features and targets of the linear first block and of the ReLU block."""
    from revgn_cli.data import load_dataset

    ds = load_dataset("mnist5k")
    x = ds.x_train[:n].float()
    onehot = torch.nn.functional.one_hot(ds.y_train[:n], 10).float()
    model = RevMLP(x.shape[1], 2, h, seed=seed)
    with torch.no_grad():
        xl = gn_mod._features(model, x)
        eps = output_residual(model.logits(xl), onehot) @ model.readout.T
        (t1, a1), (t2, a2) = gn_mod._targets_and_activations(model, xl, eps)
    w = model.blocks[0].half
    rt, _ = gn_mod._factor_linear(model.blocks[0].F)
    return [("linear", a1[0] @ rt, t1[:, :w]), ("relu", a2[1], t2[:, :w])]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bench_gram(block: str, phi: torch.Tensor, t: torch.Tensor, repeats: int) -> list[dict]:
    n, r = phi.shape
    row_side = n <= r + 1
    g32 = _gram(phi, row_side)  # float32-formed, as GaussNewton's fast_gram does for truncation
    g = g32.to(F64)
    cut = RTOL**2
    times: dict[str, list[float]] = {k: [] for k in METHODS}
    results: dict[str, Eig] = {}
    for k, fn in METHODS.items():  # warm-up; keep the result for the error
        results[k] = fn(g, g32, cut)
    for _ in range(repeats):  # interleaved rounds: a load spike hits every method alike
        for k, fn in METHODS.items():
            t0 = time.perf_counter()
            fn(g, g32, cut)
            times[k].append(time.perf_counter() - t0)
    ref, kept_ref = truncated_step(results["eigh64"], phi, t, row_side, cut)
    rows = []
    for k in METHODS:
        step, kept = truncated_step(results[k], phi, t, row_side, cut)
        rows.append({"block": block, "gram": g.shape[0], "method": k, "ms": 1e3 * statistics.median(times[k]),
                     "rel": rel(step, ref), "kept": kept, "kept_ref": kept_ref})
    # The other filters' paths (pinv_solve as GaussNewton calls it: fast_gram on) against their definition on the
    # float64 SVD of Σ = [φ, 1] (s_max² = λ_max): damping f = s/(s² + δ), none f = 1/s above numpy's pinv cut-off.
    u, sv, vh = torch.linalg.svd(torch.cat([phi, torch.ones(n, 1)], 1).to(F64), full_matrices=False)
    proj = u.T @ t.to(F64)
    for reg in (Regularizer("none"), Regularizer("damping", damping=1e-3)):
        if reg.name == "none":
            f = torch.where(sv > max(n, r + 1) * torch.finfo(phi.dtype).eps * sv[0], 1 / sv, torch.zeros_like(sv))
        else:
            f = sv / (sv**2 + reg.damping * sv[0] ** 2)
        ref = vh.T @ (f[:, None] * proj)
        for solver in ("auto", "eigh"):
            t0 = time.perf_counter()
            dw, _ = pinv_solve(phi, t, reg, fast_gram=True, solver=solver)
            ms = 1e3 * (time.perf_counter() - t0)
            path = "eigh" if solver == "eigh" or solver_path(reg) is None else "cholesky"
            rows.append({"block": block, "gram": g.shape[0], "method": f"{reg.name}: {path}", "ms": ms,
                         "rel": rel(dw.to(F64), ref), "kept": -1, "kept_ref": -1,
                         "note": "rel to the SVD definition; 1 round" + ("" if solver == "eigh" else
                                                                         "; falls back to eigh if not certified")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="n = 128, h ∈ {128, 256}, 1 round: every method runs")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--hidden", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.hidden, args.repeats = 128, [128, 256], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(torch.get_num_threads())  # scipy's LAPACK (evr64-subset) on as many threads as torch
    except ImportError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# CPU, {torch.get_num_threads()} threads; torch {torch.__version__}; n = {args.n}; median of "
          f"{args.repeats} interleaved rounds; load avg at start {load:.2f}")
    print(f"# truncation rtol {RTOL} (keep λ ≥ {RTOL**2:g}·λ_max); rel = ‖ΔW̃ − ΔW̃_eigh64‖/‖ΔW̃_eigh64‖"
          " (target ≤ 1e-6)")
    head = f"{'h':>5} {'block':>6} {'Gram':>5} {'method':>18} {'ms':>8} {'rel':>9} {'kept':>9}  note"
    print(head)
    print("─" * len(head))
    t0 = time.perf_counter()
    for h in args.hidden:
        for block, phi, t in grams(args.n, h):
            for r in bench_gram(block, phi, t, args.repeats):
                kept = "" if r["kept"] < 0 else f"{r['kept']}/{r['kept_ref']}"
                print(f"{h:5d} {r['block']:>6} {r['gram']:5d} {r['method']:>18} {r['ms']:8.1f} {r['rel']:9.1e}"
                      f" {kept:>9}  {r.get('note', '')}", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# total {time.perf_counter() - t0:.0f}s; load avg at end {load:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

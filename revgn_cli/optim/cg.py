"""Conjugate gradient for the damped Gauss-Newton system (G + λI) x = b (Martens 2010, "Hessian-free").

Shapes: b, x ∈ ℝ^p (flat), ``matvec(v) = G v`` for a symmetric positive semi-definite G ∈ ℝ^{p×p}.

Written out (15 lines) rather than taken from curvlinops' ``CGInverseLinearOperator``: that wraps GPyTorch's
``linear_cg``, which tests its tolerance only from iteration min(10, max_iter − 1) on (so not the "at most
``cg_iters`` iterations or ‖r‖ ≤ cg_tol·‖b‖" contract of the ``optimizer.cg_iters`` / ``optimizer.cg_tol`` keys),
warns on every unconverged (i.e. every truncated) solve, and does not return the iteration count and residual the
metrics rows log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["conjugate_gradient", "CGResult"]


@dataclass
class CGResult:
    x: Tensor  # the solution estimate ∈ ℝ^p
    iters: int  # mat-vecs with G taken
    rel_residual: float  # ‖b − (G + λI)x‖ / ‖b‖ (the recursively updated residual)


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, *, damping: float = 0.0, max_iters: int = 100, rtol: float = 1e-6
) -> CGResult:
    """x ≈ (G + λI)⁻¹ b by CG started from x₀ = 0.

    Stops after ``max_iters`` iterations or once ‖r‖ ≤ rtol·‖b‖. Started from zero, every iterate lies in the Krylov
    space span{b, Gb, G²b, …} ⊆ range(G) + span(b); for b = Jᵀε that is the row space of J, so with λ = 0 CG
    converges to the minimum-norm solution G⁺b. A direction of non-positive curvature (possible only through
    round-off when λ = 0) ends the iteration with the current iterate.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = torch.dot(r, r)
    b_norm = float(rr.sqrt())
    if b_norm == 0.0:
        return CGResult(x, 0, 0.0)
    it = 0
    while it < max_iters and float(rr.sqrt()) > rtol * b_norm:
        ap = matvec(p)
        if damping:
            ap = ap + damping * p
        pap = torch.dot(p, ap)
        it += 1
        if not float(pap) > 0.0:
            break
        alpha = rr / pap
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        rr_new = torch.dot(r, r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return CGResult(x, it, float(rr.sqrt()) / b_norm)
